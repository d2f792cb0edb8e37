//! Training losses, per sample (`[B]`) so callers can weight or mask them before reducing.
//!
//! * `mse`: mean over all non-batch dimensions of (target − mean channels)².
//! * `hybrid` (improved DDPM): `mse + vlb_weight · T · vb`, where `vb` is the variational bound
//!   term of the sampled t in bits, computed with the mean channels detached so it only trains
//!   the variance. With `vlb_weight = 0.001` this is ADM's `RESCALED_MSE` (`vb *= T / 1000`).
//! * optional min-SNR-γ (Hang et al. 2023) weighting of the mse term.

use burn::tensor::{backend::Backend, Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::gaussian::{GaussianDiffusion, Parameterization};
use crate::tensor::{coefficient, mean_per_sample};

/// Which loss (`diffusion.loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    #[default]
    Mse,
    Hybrid,
}

/// Loss settings (the loss fields of `DiffusionConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossOptions {
    pub loss: LossType,
    /// λ of L_simple + λ·L_vlb.
    pub vlb_weight: f64,
    pub min_snr_gamma: Option<f64>,
}

impl Default for LossOptions {
    fn default() -> Self {
        LossOptions {
            loss: LossType::Mse,
            vlb_weight: 0.001,
            min_snr_gamma: None,
        }
    }
}

/// Per-sample loss terms, each `[B]`.
#[derive(Debug, Clone)]
pub struct Losses<B: Backend> {
    /// What to minimise (after the caller's reduction, usually a mean).
    pub loss: Tensor<B, 1>,
    /// Unweighted mse on the target.
    pub mse: Tensor<B, 1>,
    /// The vb term in bits (hybrid loss only), before the λ·T factor.
    pub vb: Option<Tensor<B, 1>>,
}

/// KL(N(μ1, e^{lv1}) ‖ N(μ2, e^{lv2})) elementwise, in nats.
pub fn normal_kl<B: Backend, const D: usize>(
    mean1: Tensor<B, D>,
    logvar1: Tensor<B, D>,
    mean2: Tensor<B, D>,
    logvar2: Tensor<B, D>,
) -> Tensor<B, D> {
    let diff = mean1 - mean2;
    ((logvar2.clone() - logvar1.clone())
        + (logvar1 - logvar2.clone()).exp()
        + diff.clone() * diff * logvar2.neg().exp()
        - 1.0)
        * 0.5
}

/// Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715x³))), the approximation ADM uses.
pub fn approx_standard_normal_cdf<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    ((x.clone() + x.powi_scalar(3) * 0.044715) * k)
        .tanh()
        .add_scalar(1.0)
        * 0.5
}

/// log-likelihood (nats, elementwise) of data `x` in [−1, 1] discretised to 256 bins under
/// N(means, e^{2·log_scales}); the edge bins extend to ±∞.
pub fn discretized_gaussian_log_likelihood<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    means: Tensor<B, D>,
    log_scales: Tensor<B, D>,
) -> Tensor<B, D> {
    let centered = x.clone() - means;
    let inv_stdv = log_scales.neg().exp();
    let cdf_plus = approx_standard_normal_cdf((centered.clone() + 1.0 / 255.0) * inv_stdv.clone());
    let cdf_min = approx_standard_normal_cdf((centered - 1.0 / 255.0) * inv_stdv);
    let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
    let log_one_minus_cdf_min = (cdf_min.clone().neg() + 1.0).clamp_min(1e-12).log();
    let log_cdf_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    log_cdf_delta
        .mask_where(x.clone().greater_elem(0.999), log_one_minus_cdf_min)
        .mask_where(x.lower_elem(-0.999), log_cdf_plus)
}

impl GaussianDiffusion {
    /// The vb term of each sample in bits: KL(q(x_{t−1}|x_t,x0) ‖ p(x_{t−1}|x_t)) for t > 0 and
    /// the discretised decoder NLL for t = 0, with the mean channels of `output` detached.
    /// `idx` are positions of this (training) schedule.
    pub fn vb_terms<B: Backend, const D: usize>(
        &self,
        output: Tensor<B, D>,
        x0: Tensor<B, D>,
        x_t: Tensor<B, D>,
        idx: &[usize],
    ) -> Tensor<B, 1> {
        let (mean_out, var_values) = self.split_output(output, x_t.dims()[1]);
        let log_variance = self.model_log_variance(var_values, &x_t, idx);
        let pred_x0 = self.pred_x0(mean_out.detach(), x_t.clone(), idx);
        let (model_mean, _) = self.q_posterior(pred_x0, x_t.clone(), idx);
        let (true_mean, true_log_variance) = self.q_posterior(x0.clone(), x_t.clone(), idx);
        let log_variance = log_variance.expand(x_t.dims());
        let ln2 = std::f64::consts::LN_2;
        let kl = mean_per_sample(normal_kl(
            true_mean,
            true_log_variance.expand(x_t.dims()),
            model_mean.clone(),
            log_variance.clone(),
        )) / ln2;
        let nll = mean_per_sample(discretized_gaussian_log_likelihood(
            x0,
            model_mean,
            log_variance * 0.5,
        ))
        .neg()
            / ln2;
        let is_first: Vec<bool> = idx.iter().map(|&i| i == 0).collect();
        let mask =
            Tensor::<B, 1, Bool>::from_data(TensorData::new(is_first, [idx.len()]), &x_t.device());
        kl.mask_where(mask, nll)
    }

    /// min-SNR-γ weight of the mse term per sample: min(snr, γ)/snr for eps, min(snr, γ) for x0,
    /// min(snr, γ)/(snr + 1) for v (each makes the weight on the x0 error min(snr, γ)).
    pub fn min_snr_weights(&self, gamma: f64, idx: &[usize]) -> Vec<f64> {
        let snr = self.schedule().snr();
        idx.iter()
            .map(|&i| {
                let s = snr[i];
                let clipped = s.min(gamma);
                match self.parameterization() {
                    Parameterization::Eps => clipped / s,
                    Parameterization::X0 => clipped,
                    Parameterization::V => clipped / (s + 1.0),
                }
            })
            .collect()
    }

    /// Per-sample training losses for a network `output` on `x_t = q_sample(x0, idx, noise)`.
    pub fn training_losses<B: Backend, const D: usize>(
        &self,
        options: &LossOptions,
        output: Tensor<B, D>,
        x0: Tensor<B, D>,
        x_t: Tensor<B, D>,
        noise: Tensor<B, D>,
        idx: &[usize],
    ) -> Losses<B> {
        let (mean_out, _) = self.split_output(output.clone(), x_t.dims()[1]);
        let target = self.target(x0.clone(), noise, idx);
        let err = mean_out - target;
        let mse = mean_per_sample(err.clone() * err);
        let mut loss = match options.min_snr_gamma {
            Some(gamma) => {
                let w = self.min_snr_weights(gamma, idx);
                let w = coefficient(&w, &(0..idx.len()).collect::<Vec<_>>(), &mse);
                mse.clone() * w
            }
            None => mse.clone(),
        };
        let vb = match options.loss {
            LossType::Mse => None,
            LossType::Hybrid => {
                let vb = self.vb_terms(output, x0, x_t, idx);
                loss = loss + vb.clone() * (options.vlb_weight * self.schedule().len() as f64);
                Some(vb)
            }
        };
        Losses { loss, mse, vb }
    }
}
