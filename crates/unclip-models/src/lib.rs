//! The networks of unCLIP and the layers they share.
//!
//! Job: layers used by more than one model — today the keyed dropout (whose masks come from
//! `unclip-rng`, so a run resumes exactly), the sinusoidal timestep embedding, and weight init
//! from the keyed RNG. Boundaries:
//! burn tensors in and out, generic over the backend; no files, configs, samplers or training
//! code. Every random number a layer needs comes from a [`NoiseKey`] the caller passes in.

mod dropout;
mod init;
mod timestep;

pub use dropout::{KeyedDropout, NoiseKey};
pub use init::keyed_init;
pub use timestep::{timestep_embedding, TimestepMlp, TimestepMlpConfig};
