//! Diffusion mathematics shared by the prior, the decoder and the upsamplers of unCLIP.
//!
//! Job: beta schedules (f64 buffers), GLIDE/ADM respacing, the ε/x0/v parameterizations, the
//! fixed and learned variances, the mse/hybrid/min-SNR losses, DDPM and DDIM samplers, x0
//! clipping and classifier-free guidance — matched to diffusers and guided-diffusion by the
//! fixtures under `tests/reference/fixtures/diffusion/`.
//!
//! Boundaries: burn tensors in, burn tensors out, generic over the backend. The crate never
//! imports a model (the network is a closure `model(x_t, t)`), never does I/O and has no
//! randomness of its own: timesteps and noise come from the caller's seeded RNG.
//! Options are documented under their config names in docs/diffusion.md.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): beside
//! **models**: the math their stages sample and train with.

mod clip;
mod config;
mod error;
mod gaussian;
mod guidance;
mod losses;
mod respace;
mod sampler;
mod schedule;
pub mod tensor;

pub use clip::ClipX0;
pub use config::{DiffusionConfig, SamplingConfig};
pub use error::DiffusionError;
pub use gaussian::{GaussianDiffusion, MeanVariance, Parameterization, VarianceType};
pub use guidance::{classifier_free_guidance, guided_model};
pub use losses::{
    approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl, LossOptions,
    LossType, Losses,
};
pub use respace::space_timesteps;
pub use sampler::{sample_timesteps, Progress, Sampler, SamplerKind, StepOutput};
pub use schedule::{beta_schedule, BetaSchedule, Buffers, Schedule};
