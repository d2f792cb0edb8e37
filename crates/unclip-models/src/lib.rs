//! The networks of unCLIP and the layers they share.
//!
//! Job: the diffusion prior ([`PriorTransformer`], diffusers' `PriorTransformer`), the ADM
//! [`UNet`] that configures as the decoder (with [`ClipConditioning`], diffusers'
//! `UnCLIPTextProjModel`) and as the super-resolution upsamplers, their conversions to and
//! from diffusers' weight layouts (name → tensor maps and `config.json` values, no files),
//! and the layers they share: keyed dropout (masks from `unclip-rng`, so a run resumes
//! exactly), the sinusoidal timestep embedding, weight init from the keyed RNG.
//! Boundaries: burn tensors in and out, generic over the backend; no files, run configs,
//! samplers or training code. Every random number a layer needs comes from a [`NoiseKey`] the
//! caller passes in.

mod dropout;
mod init;
mod prior;
mod timestep;
mod unet;

pub use dropout::{KeyedDropout, NoiseKey};
pub use init::keyed_init;
pub use prior::{
    config_from_diffusers, prior_from_diffusers, prior_to_diffusers, PriorAttention, PriorBlock,
    PriorConfig, PriorFeedForward, PriorTimeEmbedding, PriorTransformer,
};
pub use timestep::{timestep_embedding, TimestepMlp, TimestepMlpConfig};
pub use unet::{
    text_proj_from_diffusers, text_proj_to_diffusers, unet_from_diffusers, unet_to_diffusers,
    AttentionBlock, ClipCondConfig, ClipConditioning, Level, Mid, ResBlock, Resample, UNet,
    UNetConfig, ZeroConv2d, ZeroLinear,
};
