//! Clipping of the predicted x0 before it enters the posterior mean (`diffusion.sampling.clip_x0`).

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

/// How the predicted x0 is limited at sampling time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClipX0 {
    /// Leave x0 as predicted (diffusers `clip_sample=False`).
    None,
    /// Clamp to `[-range, range]` (ADM `clip_denoised=True` is range 1; diffusers `clip_sample`,
    /// `clip_sample_range`).
    Static(f64),
    /// Imagen dynamic thresholding (diffusers `thresholding=True`): per sample,
    /// `s = clamp(quantile(|x0|, percentile), 1, max_value)`, then `x0 ← clamp(x0, −s, s) / s`.
    /// The quantile interpolates linearly between order statistics, as `torch.quantile` does.
    Dynamic { percentile: f64, max_value: f64 },
}

impl Default for ClipX0 {
    fn default() -> Self {
        ClipX0::Static(1.0)
    }
}

impl ClipX0 {
    /// Apply to a batch of predicted x0 (`[B, …]`, any rank).
    pub fn apply<B: Backend, const D: usize>(&self, x0: Tensor<B, D>) -> Tensor<B, D> {
        match *self {
            ClipX0::None => x0,
            ClipX0::Static(range) => x0.clamp(-range, range),
            ClipX0::Dynamic {
                percentile,
                max_value,
            } => dynamic_threshold(x0, percentile, max_value),
        }
    }
}

fn dynamic_threshold<B: Backend, const D: usize>(
    x0: Tensor<B, D>,
    percentile: f64,
    max_value: f64,
) -> Tensor<B, D> {
    let dims = x0.dims();
    let batch = dims[0];
    let n: usize = dims[1..].iter().product();
    let sorted: Tensor<B, 2> = x0.clone().reshape([batch, n]).abs().sort(1);
    let pos = percentile.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    let frac = pos - lo as f64;
    let v_lo = sorted.clone().narrow(1, lo, 1);
    let v_hi = sorted.narrow(1, hi, 1);
    let s = (v_lo.clone() + (v_hi - v_lo).mul_scalar(frac)).clamp(1.0, max_value);
    let mut shape = [1usize; D];
    shape[0] = batch;
    let s: Tensor<B, D> = s.reshape(shape).expand(dims);
    x0.max_pair(s.clone().neg()).min_pair(s.clone()) / s
}
