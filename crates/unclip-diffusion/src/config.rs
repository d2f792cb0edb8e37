//! The `diffusion:` section of a run config. Every field is documented under this name in
//! docs/diffusion.md; defaults follow ADM/diffusers for a 1000-step cosine ε-model.

use serde::{Deserialize, Serialize};

use crate::clip::ClipX0;
use crate::error::DiffusionError;
use crate::gaussian::{GaussianDiffusion, Parameterization, VarianceType};
use crate::losses::{LossOptions, LossType};
use crate::respace::space_timesteps;
use crate::sampler::{Sampler, SamplerKind};
use crate::schedule::{BetaSchedule, Schedule};

/// Training-time process and loss, plus the sampling defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionConfig {
    /// Beta schedule. Default `cosine`.
    pub schedule: BetaSchedule,
    /// T, the number of training timesteps. Default 1000; at most [`MAX_TIMESTEPS`], checked
    /// as the value is read so that a config error names its line.
    #[serde(deserialize_with = "bounded_timesteps")]
    pub timesteps: usize,
    /// What the network predicts. Default `eps`.
    pub parameterization: Parameterization,
    /// Reverse-process variance. Default `fixed_small`.
    pub variance: VarianceType,
    /// `mse` or `hybrid` (needs `learned_range`). Default `mse`.
    pub loss: LossType,
    /// λ of the hybrid loss. Default 0.001.
    pub vlb_weight: f64,
    /// γ of min-SNR-γ weighting; absent = unweighted. Default none.
    pub min_snr_gamma: Option<f64>,
    /// Sampling defaults.
    pub sampling: SamplingConfig,
}

/// How to sample (`diffusion.sampling`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// `ddpm` or `ddim`. Default `ddpm`.
    pub sampler: SamplerKind,
    /// Respacing section string (`""` = all T steps, `"N"`, `"a,b,c"`, `"ddimN"`, `"fast27"`). Default `""`.
    pub respacing: String,
    /// DDIM η (only with `ddim`). Default 0.
    pub eta: f64,
    /// Classifier-free guidance scale s (1 = no guidance). Default 1.
    pub guidance_scale: f64,
    /// x0 clipping. Default `{static: 1.0}`.
    pub clip_x0: ClipX0,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig {
            schedule: BetaSchedule::Cosine,
            timesteps: 1000,
            parameterization: Parameterization::Eps,
            variance: VarianceType::FixedSmall,
            loss: LossType::Mse,
            vlb_weight: 0.001,
            min_snr_gamma: None,
            sampling: SamplingConfig::default(),
        }
    }
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            sampler: SamplerKind::Ddpm,
            respacing: String::new(),
            eta: 0.0,
            guidance_scale: 1.0,
            clip_x0: ClipX0::default(),
        }
    }
}

fn invalid(key: &'static str, why: impl Into<String>) -> DiffusionError {
    DiffusionError::Config {
        key,
        why: why.into(),
    }
}

/// The most timesteps a schedule may have.
pub const MAX_TIMESTEPS: usize = 100_000;

fn bounded_timesteps<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let t = u64::deserialize(d)?;
    if (2..=MAX_TIMESTEPS as u64).contains(&t) {
        Ok(t as usize)
    } else {
        Err(serde::de::Error::custom(format!(
            "`timesteps` must be in [2, {MAX_TIMESTEPS}], got {t} (the schedule's tables hold \
             one entry per timestep; papers use 1000 to 4000)"
        )))
    }
}

impl DiffusionConfig {
    /// Check the combination of options; every error names the offending key.
    pub fn validate(&self) -> Result<(), DiffusionError> {
        if !(2..=MAX_TIMESTEPS).contains(&self.timesteps) {
            return Err(invalid(
                "timesteps",
                format!(
                    "must be in [2, {MAX_TIMESTEPS}], got {} (the schedule's tables hold one \
                     entry per timestep; papers use 1000 to 4000)",
                    self.timesteps
                ),
            ));
        }
        match (self.loss, self.variance) {
            (LossType::Hybrid, VarianceType::FixedSmall | VarianceType::FixedLarge) => {
                return Err(invalid(
                    "loss",
                    "`hybrid` trains a learned variance: set `variance: learned_range`",
                ));
            }
            (LossType::Mse, VarianceType::LearnedRange) => {
                return Err(invalid(
                    "variance",
                    "`learned_range` is only trained by `loss: hybrid`",
                ));
            }
            _ => {}
        }
        if !(self.vlb_weight.is_finite() && self.vlb_weight >= 0.0) {
            return Err(invalid(
                "vlb_weight",
                format!("must be a finite number ≥ 0, got {}", self.vlb_weight),
            ));
        }
        if let Some(g) = self.min_snr_gamma {
            if !(g.is_finite() && g > 0.0) {
                return Err(invalid("min_snr_gamma", format!("must be > 0, got {g}")));
            }
        }
        self.sampling.validate(self.timesteps)
    }

    /// The full training process.
    pub fn diffusion(&self) -> Result<GaussianDiffusion, DiffusionError> {
        self.validate()?;
        Ok(GaussianDiffusion::new(
            Schedule::new(self.schedule, self.timesteps)?,
            self.parameterization,
            self.variance,
        ))
    }

    pub fn loss_options(&self) -> LossOptions {
        LossOptions {
            loss: self.loss,
            vlb_weight: self.vlb_weight,
            min_snr_gamma: self.min_snr_gamma,
        }
    }

    /// The sampler of `sampling`, on the respaced process.
    pub fn sampler(&self) -> Result<Sampler, DiffusionError> {
        let full = self.diffusion()?;
        let s = &self.sampling;
        let spaced = full.respaced(&space_timesteps(self.timesteps, &s.respacing)?)?;
        Ok(Sampler::new(spaced, s.sampler, s.eta, s.clip_x0))
    }
}

impl SamplingConfig {
    fn validate(&self, timesteps: usize) -> Result<(), DiffusionError> {
        let steps = space_timesteps(timesteps, &self.respacing)?;
        if steps.len() < 2 {
            return Err(invalid(
                "sampling.respacing",
                "must keep at least 2 timesteps",
            ));
        }
        if !(self.eta.is_finite() && self.eta >= 0.0) {
            return Err(invalid(
                "sampling.eta",
                format!("must be ≥ 0, got {}", self.eta),
            ));
        }
        if self.sampler == SamplerKind::Ddpm && self.eta != 0.0 {
            return Err(invalid("sampling.eta", "only applies to `sampler: ddim`"));
        }
        if !(self.guidance_scale.is_finite() && self.guidance_scale >= 0.0) {
            return Err(invalid(
                "sampling.guidance_scale",
                format!("must be ≥ 0, got {}", self.guidance_scale),
            ));
        }
        match self.clip_x0 {
            ClipX0::None => Ok(()),
            ClipX0::Static(r) if r.is_finite() && r > 0.0 => Ok(()),
            ClipX0::Static(r) => Err(invalid(
                "sampling.clip_x0",
                format!("static range must be > 0, got {r}"),
            )),
            ClipX0::Dynamic {
                percentile,
                max_value,
            } => {
                if !(percentile > 0.0 && percentile <= 1.0) {
                    Err(invalid(
                        "sampling.clip_x0",
                        format!("dynamic percentile must be in (0, 1], got {percentile}"),
                    ))
                } else if !(max_value.is_finite() && max_value >= 1.0) {
                    Err(invalid(
                        "sampling.clip_x0",
                        format!("dynamic max_value must be ≥ 1, got {max_value}"),
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}
