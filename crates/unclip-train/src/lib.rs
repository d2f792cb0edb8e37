//! The training engine of unclip: one loop for every stage.
//!
//! Job: launch a run from a strict YAML config, train a [`TrainTask`] with AdamW (PyTorch's
//! defaults), warm-up + cosine/constant LR, global-norm clipping, averaged gradient
//! accumulation, an EMA and a non-finite guard; save atomic checkpoints that resume bit for
//! bit; log metrics, validation losses, loss curves and previews; export through each stage's
//! own export; train on several devices data-parallel.
//! Boundaries: the loop never knows which model it trains (the task does: `tasks/` wires each
//! stage to its data, loss and previews — no network is defined here); each stage's config,
//! network and sampling live in the stage layer `unclip-stages` over `unclip-models`, diffusion
//! math in `unclip-diffusion`, data in `unclip-data`.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): **train**.

pub mod checkpoint;
mod compat;
pub mod config;
pub mod device;
pub mod ema;
mod error;
pub mod export;
pub mod launch;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod progress;
mod run_dir;
mod task;
pub mod tasks;
mod trainer;

pub use compat::incompatible_changes;
pub use config::{RunConfig, Stage};
pub use error::TrainError;
pub use run_dir::Resume;
pub use task::{Split, TaskFactory, TrainTask, ValidationSums};
pub use trainer::{RunSummary, StepReport, Trainer, Validation, HANG_ENV};
