//! The Gaussian diffusion process over one schedule: forward noising, parameterizations and
//! their conversions, and the reverse-step mean/variance p(x_{t−1} | x_t).
//!
//! Every method takes schedule *positions* `idx` (one per sample). On the full training schedule
//! a position is the timestep; on a respaced one `schedule().timesteps()[i]` is the timestep the
//! network sees.

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::clip::ClipX0;
use crate::error::DiffusionError;
use crate::schedule::Schedule;
use crate::tensor::{coefficient, split_channels};

/// What the network predicts (`diffusion.parameterization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Parameterization {
    /// The noise ε (diffusers `epsilon`).
    #[default]
    Eps,
    /// The clean sample x0 (diffusers `sample`; the unCLIP prior).
    X0,
    /// v = √ᾱ ε − √(1−ᾱ) x0 (Salimans & Ho; diffusers `v_prediction`).
    V,
}

/// The reverse-process variance (`diffusion.variance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// σ² = β̃_t, the posterior variance (log clipped at t = 0).
    #[default]
    FixedSmall,
    /// σ² = β_t, with β̃_1 in place of β_0 (ADM).
    FixedLarge,
    /// The network outputs v ∈ [−1, 1] in extra channels; log σ² = f·log β_t + (1−f)·log β̃_t,
    /// f = (v+1)/2 (improved DDPM). The output has twice the channels of x on dim 1.
    LearnedRange,
}

/// The reverse step's Gaussian and the x0 it was built from.
#[derive(Debug, Clone)]
pub struct MeanVariance<B: Backend, const D: usize> {
    pub mean: Tensor<B, D>,
    /// Log variance, broadcastable to `mean` (`[B, 1, …]` for fixed variances).
    pub log_variance: Tensor<B, D>,
    /// The predicted x0 after clipping.
    pub pred_x0: Tensor<B, D>,
}

/// A diffusion process: a schedule plus what the network predicts and how variance is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianDiffusion {
    schedule: Schedule,
    parameterization: Parameterization,
    variance: VarianceType,
    /// log of [β̃_1, β_1, β_2, …] (ADM's fixed_large).
    fixed_large_log_variance: Vec<f64>,
    /// log β (learned_range's upper bound).
    log_betas: Vec<f64>,
}

impl GaussianDiffusion {
    pub fn new(
        schedule: Schedule,
        parameterization: Parameterization,
        variance: VarianceType,
    ) -> Self {
        let b = schedule.buffers();
        let fixed_large_log_variance = std::iter::once(b.posterior_variance[1])
            .chain(b.betas[1..].iter().copied())
            .map(f64::ln)
            .collect();
        let log_betas = b.betas.iter().map(|x| x.ln()).collect();
        GaussianDiffusion {
            schedule,
            parameterization,
            variance,
            fixed_large_log_variance,
            log_betas,
        }
    }

    /// The same process over a subset of its timesteps (see [`Schedule::respace`]).
    pub fn respaced(&self, use_timesteps: &[usize]) -> Result<Self, DiffusionError> {
        Ok(Self::new(
            self.schedule.respace(use_timesteps)?,
            self.parameterization,
            self.variance,
        ))
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    pub fn parameterization(&self) -> Parameterization {
        self.parameterization
    }
    pub fn variance(&self) -> VarianceType {
        self.variance
    }

    /// Channels (dim 1) of the network output for a sample with `channels` channels.
    pub fn output_channels(&self, channels: usize) -> usize {
        if self.variance == VarianceType::LearnedRange {
            2 * channels
        } else {
            channels
        }
    }

    /// x_t = √ᾱ x0 + √(1−ᾱ) ε.
    pub fn q_sample<B: Backend, const D: usize>(
        &self,
        x0: Tensor<B, D>,
        idx: &[usize],
        noise: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let b = self.schedule.buffers();
        coefficient(&b.sqrt_alphas_cumprod, idx, &x0) * x0.clone()
            + coefficient(&b.sqrt_one_minus_alphas_cumprod, idx, &x0) * noise
    }

    /// Mean and clipped log variance of q(x_{t−1} | x_t, x0).
    pub fn q_posterior<B: Backend, const D: usize>(
        &self,
        x0: Tensor<B, D>,
        x_t: Tensor<B, D>,
        idx: &[usize],
    ) -> (Tensor<B, D>, Tensor<B, D>) {
        let b = self.schedule.buffers();
        let mean = coefficient(&b.posterior_mean_coef1, idx, &x_t) * x0
            + coefficient(&b.posterior_mean_coef2, idx, &x_t) * x_t.clone();
        (
            mean,
            coefficient(&b.posterior_log_variance_clipped, idx, &x_t),
        )
    }

    /// What the network is trained to output (the mean channels) for this parameterization.
    pub fn target<B: Backend, const D: usize>(
        &self,
        x0: Tensor<B, D>,
        noise: Tensor<B, D>,
        idx: &[usize],
    ) -> Tensor<B, D> {
        match self.parameterization {
            Parameterization::Eps => noise,
            Parameterization::X0 => x0,
            Parameterization::V => self.v_from_x0_eps(x0, noise, idx),
        }
    }

    /// v = √ᾱ ε − √(1−ᾱ) x0.
    pub fn v_from_x0_eps<B: Backend, const D: usize>(
        &self,
        x0: Tensor<B, D>,
        eps: Tensor<B, D>,
        idx: &[usize],
    ) -> Tensor<B, D> {
        let b = self.schedule.buffers();
        coefficient(&b.sqrt_alphas_cumprod, idx, &x0) * eps
            - coefficient(&b.sqrt_one_minus_alphas_cumprod, idx, &x0) * x0
    }

    /// x0 = x_t/√ᾱ − √(1/ᾱ − 1) ε.
    pub fn x0_from_eps<B: Backend, const D: usize>(
        &self,
        x_t: Tensor<B, D>,
        eps: Tensor<B, D>,
        idx: &[usize],
    ) -> Tensor<B, D> {
        let b = self.schedule.buffers();
        coefficient(&b.sqrt_recip_alphas_cumprod, idx, &x_t) * x_t.clone()
            - coefficient(&b.sqrt_recipm1_alphas_cumprod, idx, &x_t) * eps
    }

    /// ε = (x_t/√ᾱ − x0) / √(1/ᾱ − 1).
    pub fn eps_from_x0<B: Backend, const D: usize>(
        &self,
        x_t: Tensor<B, D>,
        x0: Tensor<B, D>,
        idx: &[usize],
    ) -> Tensor<B, D> {
        let b = self.schedule.buffers();
        (coefficient(&b.sqrt_recip_alphas_cumprod, idx, &x_t) * x_t.clone() - x0)
            / coefficient(&b.sqrt_recipm1_alphas_cumprod, idx, &x_t)
    }

    /// x0 = √ᾱ x_t − √(1−ᾱ) v.
    pub fn x0_from_v<B: Backend, const D: usize>(
        &self,
        x_t: Tensor<B, D>,
        v: Tensor<B, D>,
        idx: &[usize],
    ) -> Tensor<B, D> {
        let b = self.schedule.buffers();
        coefficient(&b.sqrt_alphas_cumprod, idx, &x_t) * x_t.clone()
            - coefficient(&b.sqrt_one_minus_alphas_cumprod, idx, &x_t) * v
    }

    /// ε = √(1−ᾱ) x_t + √ᾱ v.
    pub fn eps_from_v<B: Backend, const D: usize>(
        &self,
        x_t: Tensor<B, D>,
        v: Tensor<B, D>,
        idx: &[usize],
    ) -> Tensor<B, D> {
        let b = self.schedule.buffers();
        coefficient(&b.sqrt_one_minus_alphas_cumprod, idx, &x_t) * x_t.clone()
            + coefficient(&b.sqrt_alphas_cumprod, idx, &x_t) * v
    }

    /// x0 implied by the mean channels of a network output (unclipped).
    pub fn pred_x0<B: Backend, const D: usize>(
        &self,
        mean_output: Tensor<B, D>,
        x_t: Tensor<B, D>,
        idx: &[usize],
    ) -> Tensor<B, D> {
        match self.parameterization {
            Parameterization::Eps => self.x0_from_eps(x_t, mean_output, idx),
            Parameterization::X0 => mean_output,
            Parameterization::V => self.x0_from_v(x_t, mean_output, idx),
        }
    }

    /// Split a network output into its mean channels and (for learned_range) variance channels.
    pub fn split_output<B: Backend, const D: usize>(
        &self,
        output: Tensor<B, D>,
        channels: usize,
    ) -> (Tensor<B, D>, Option<Tensor<B, D>>) {
        if self.variance == VarianceType::LearnedRange {
            let (mean, var) = split_channels(output, channels);
            (mean, Some(var))
        } else {
            (output, None)
        }
    }

    /// log σ² of the reverse step. `var_values` are the learned_range channels (ignored otherwise).
    pub fn model_log_variance<B: Backend, const D: usize>(
        &self,
        var_values: Option<Tensor<B, D>>,
        x_t: &Tensor<B, D>,
        idx: &[usize],
    ) -> Tensor<B, D> {
        let b = self.schedule.buffers();
        match (self.variance, var_values) {
            (VarianceType::FixedSmall, _) => {
                coefficient(&b.posterior_log_variance_clipped, idx, x_t)
            }
            (VarianceType::FixedLarge, _) => coefficient(&self.fixed_large_log_variance, idx, x_t),
            (VarianceType::LearnedRange, Some(v)) => {
                let min_log = coefficient(&b.posterior_log_variance_clipped, idx, x_t);
                let max_log = coefficient(&self.log_betas, idx, x_t);
                let frac = (v + 1.0) / 2.0;
                frac.clone() * max_log + (frac.neg() + 1.0) * min_log
            }
            (VarianceType::LearnedRange, None) => {
                panic!("learned_range needs the variance channels of the output")
            }
        }
    }

    /// Mean, log variance and (clipped) x0 of p(x_{t−1} | x_t) from a raw network output.
    pub fn p_mean_variance<B: Backend, const D: usize>(
        &self,
        output: Tensor<B, D>,
        x_t: Tensor<B, D>,
        idx: &[usize],
        clip: ClipX0,
    ) -> MeanVariance<B, D> {
        let (mean_out, var_values) = self.split_output(output, x_t.dims()[1]);
        let log_variance = self.model_log_variance(var_values, &x_t, idx);
        let pred_x0 = clip.apply(self.pred_x0(mean_out, x_t.clone(), idx));
        let (mean, _) = self.q_posterior(pred_x0.clone(), x_t, idx);
        MeanVariance {
            mean,
            log_variance,
            pred_x0,
        }
    }
}
