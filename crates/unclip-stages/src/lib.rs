//! The stage layer: what training and inference both need to know about each learned stage of
//! unCLIP, and nothing about data streams, optimizers or pipelines.
//!
//! Per stage, one file read top to bottom: [`prior`], [`decoder`], [`upsampler`] — the
//! stage's `model:` section (strict serde, checked ranges), its validation into the network's
//! shape (the networks themselves are `unclip-models`'), the inputs it takes, its sampling loop
//! over `unclip-diffusion`, and its export layouts. [`text`] holds the caption side the
//! CLIP-conditioned stages share (CLIP sizes, the empty caption, guidance drops); [`export`]
//! the native and diffusers file formats; [`reload`] rebuilds a stage and its weights from a
//! native export on any backend — no autodiff, no run config, no data. Every random number
//! comes from a [`NoiseKey`](unclip_models::NoiseKey) or the keyed RNG, so sampling the same
//! key twice gives the same result.
//!
//! Dependencies point down only: config (checked numbers), data (the upsampler's corruption
//! and pixel layouts), diffusion, models, rng, fs. `unclip-train` wires these stages to data
//! and losses; `unclip-infer` to a pipeline folder.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): the top of
//! **models**, the one stage layer below train / infer.

pub mod decoder;
mod error;
pub mod export;
pub mod prior;
pub mod reload;
pub mod text;
pub mod upsampler;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use unclip_rng::KeyedRng;

pub use error::StageError;

/// GroupNorm groups of the UNets (ADM's 32; every level's channels must be a multiple).
pub const GROUPS: usize = 32;

/// Which model a run trains (`stage:` of a run config, `stage` of an export).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// A tiny convolutional denoiser on small images: the training engine's own test task.
    Denoise,
    /// Contrastive training of a CLIP (both towers) from scratch.
    Clip,
    /// The diffusion prior: CLIP text embedding → CLIP image embedding.
    Prior,
    /// The decoder: CLIP image embedding + caption → 64 px image (ADM UNet).
    Decoder,
    /// A super-resolution upsampler (64→256, 256→1024): low-res image → high-res image.
    Upsampler,
}

impl Stage {
    /// The stage's name as configs write it (`prior`, `decoder`, …).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Denoise => "denoise",
            Stage::Clip => "clip",
            Stage::Prior => "prior",
            Stage::Decoder => "decoder",
            Stage::Upsampler => "upsampler",
        }
    }
}

/// Standard normal numbers of `shape` from `KeyedRng(seed, purpose, step, 0)`: the start and
/// step noise of the image samplers.
pub fn keyed_normal<B: Backend, const D: usize>(
    seed: u64,
    purpose: &str,
    step: u64,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let mut v = vec![0f32; shape.iter().product()];
    KeyedRng::new(seed, purpose, step, 0).fill_normal_f32(&mut v);
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// A tensor's values as f32.
pub fn tensor_values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, StageError> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| StageError::Input(format!("reading a tensor: {e:?}")))
}
