//! The [`TrainTask`](crate::TrainTask) implementations that live in the engine itself.

pub mod clip;
pub mod denoise;
