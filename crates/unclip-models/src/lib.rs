//! The networks of unCLIP, one file (or folder) per model, and the layers they share.
//!
//! Job: the diffusion prior ([`PriorTransformer`], `prior/`), the decoder ([`Decoder`]: the
//! ADM [`UNet`] with [`ClipConditioning`], `decoder.rs`), the super-resolution upsamplers
//! ([`Upsampler`]: the UNet with a noise-level MLP, `upsampler.rs`); their diffusers weight
//! layouts (`PriorTransformer`, `UNet2DConditionModel` + `UnCLIPTextProjModel`, `UNet2DModel`:
//! name → tensor maps and `config.json` values, no files) through the shared PyTorch layout
//! module `unclip-layout`; and the layers they share: keyed dropout (masks from `unclip-rng`,
//! so a run resumes exactly), the sinusoidal timestep embedding, weight init from the keyed RNG.
//! Boundaries: burn tensors in and out, generic over the backend; no files, run configs,
//! samplers, data or training code (the stage layer, `unclip-stages`, wires these networks to
//! their configs and sampling loops). Every random number a layer needs comes from a
//! [`NoiseKey`] the caller passes in.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): **models**, the
//! networks.

mod decoder;
mod dropout;
mod init;
mod prior;
mod timestep;
mod unet;
mod upsampler;

/// The diffusers release whose layouts and config fields the diffusers adapters reproduce.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

pub use decoder::{CaptionInputs, Decoder, DecoderConfig, DecoderInputs};
pub use dropout::{KeyedDropout, NoiseKey};
pub use init::keyed_init;
pub use prior::{
    config_from_diffusers, prior_from_diffusers, prior_to_diffusers, PriorAttention, PriorBlock,
    PriorConfig, PriorFeedForward, PriorTimeEmbedding, PriorTransformer,
};
pub use timestep::{timestep_embedding, TimestepMlp, TimestepMlpConfig};
pub use unclip_layout::Tensors;
pub use unet::{
    text_proj_from_diffusers, text_proj_to_diffusers, unet_from_diffusers, unet_to_diffusers,
    AttentionBlock, ClipCondConfig, ClipConditioning, Level, Mid, ResBlock, Resample, UNet,
    UNetConfig, ZeroConv2d, ZeroLinear,
};
pub use upsampler::{upsampler_from_diffusers, upsampler_to_diffusers, Upsampler, UpsamplerConfig};
