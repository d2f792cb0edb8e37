//! Reverse-process samplers over a (possibly respaced) schedule: DDPM ancestral and DDIM(η).
//!
//! The network is a closure `model(x_t, t) -> output` where `t` holds the *original* training
//! timestep of every sample; noise for each step comes from the caller (`noise(step)`), so a run
//! is reproducible with the project's keyed RNG. Steps are counted in sampling order: step 0 is
//! the noisiest.

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::clip::ClipX0;
use crate::gaussian::GaussianDiffusion;

/// Which reverse process (`diffusion.sampling.sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Ancestral sampling with the process's variance (fixed or learned).
    #[default]
    Ddpm,
    /// DDIM with stochasticity η (η = 0 deterministic, η = 1 DDPM-like variance).
    Ddim,
}

/// Result of one reverse step.
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend, const D: usize> {
    /// x_{t−1} (the next step's input).
    pub prev_sample: Tensor<B, D>,
    /// The (clipped) x0 predicted at this step.
    pub pred_x0: Tensor<B, D>,
}

/// What the per-step callback sees (for progress bars and previews).
#[derive(Debug)]
pub struct Progress<'a, B: Backend, const D: usize> {
    /// 0-based step in sampling order.
    pub step: usize,
    pub num_steps: usize,
    /// Original timestep of this step.
    pub timestep: usize,
    pub output: &'a StepOutput<B, D>,
}

/// A configured sampler. Build it on the respaced process (see `DiffusionConfig::sampler`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    diffusion: GaussianDiffusion,
    kind: SamplerKind,
    eta: f64,
    clip: ClipX0,
}

impl Sampler {
    pub fn new(diffusion: GaussianDiffusion, kind: SamplerKind, eta: f64, clip: ClipX0) -> Self {
        Sampler {
            diffusion,
            kind,
            eta,
            clip,
        }
    }

    pub fn diffusion(&self) -> &GaussianDiffusion {
        &self.diffusion
    }

    pub fn num_steps(&self) -> usize {
        self.diffusion.schedule().len()
    }

    /// Original timesteps in sampling order (descending).
    pub fn timesteps(&self) -> Vec<usize> {
        self.diffusion
            .schedule()
            .timesteps()
            .iter()
            .rev()
            .copied()
            .collect()
    }

    /// Whether `step` draws noise (DDPM except the last step; DDIM when η > 0 except the last).
    pub fn needs_noise(&self, step: usize) -> bool {
        let last = step + 1 >= self.num_steps();
        !last && (self.kind == SamplerKind::Ddpm || self.eta > 0.0)
    }

    /// One reverse step from the network `output` at `x_t`. `noise` (shaped like `x_t`) must be
    /// given when [`needs_noise`](Self::needs_noise) is true and is ignored otherwise.
    pub fn step<B: Backend, const D: usize>(
        &self,
        step: usize,
        x_t: Tensor<B, D>,
        output: Tensor<B, D>,
        noise: Option<Tensor<B, D>>,
    ) -> StepOutput<B, D> {
        let n = self.num_steps();
        assert!(step < n, "step {step} out of range for a {n}-step sampler");
        let i = n - 1 - step;
        let idx = vec![i; x_t.dims()[0]];
        let noise = if self.needs_noise(step) {
            Some(noise.unwrap_or_else(|| panic!("sampling step {step} needs noise")))
        } else {
            None
        };
        match self.kind {
            SamplerKind::Ddpm => {
                let mv = self.diffusion.p_mean_variance(output, x_t, &idx, self.clip);
                let prev_sample = match noise {
                    Some(z) => mv.mean + (mv.log_variance * 0.5).exp() * z,
                    None => mv.mean,
                };
                StepOutput {
                    prev_sample,
                    pred_x0: mv.pred_x0,
                }
            }
            SamplerKind::Ddim => {
                let d = &self.diffusion;
                let (mean_out, _) = d.split_output(output, x_t.dims()[1]);
                let pred_x0 = self.clip.apply(d.pred_x0(mean_out, x_t.clone(), &idx));
                // ε consistent with the clipped x0 (ADM; diffusers `use_clipped_model_output=True`).
                let eps = d.eps_from_x0(x_t.clone(), pred_x0.clone(), &idx);
                let b = d.schedule().buffers();
                let (ab, ab_prev) = (b.alphas_cumprod[i], b.alphas_cumprod_prev[i]);
                let sigma =
                    self.eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).sqrt();
                let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
                let mut prev_sample = pred_x0.clone() * ab_prev.sqrt() + eps * dir;
                if let Some(z) = noise {
                    prev_sample = prev_sample + z * sigma;
                }
                StepOutput {
                    prev_sample,
                    pred_x0,
                }
            }
        }
    }

    /// Run the whole chain from `x_start` (pure noise at the first timestep) and return x0.
    /// `model(x_t, t)` gets the original timestep of each sample; `noise(step)` is called only
    /// for steps that need it; `on_step` sees every step's result.
    pub fn sample<B, const D: usize, M, N, C>(
        &self,
        x_start: Tensor<B, D>,
        mut model: M,
        mut noise: N,
        mut on_step: C,
    ) -> Tensor<B, D>
    where
        B: Backend,
        M: FnMut(Tensor<B, D>, &[usize]) -> Tensor<B, D>,
        N: FnMut(usize) -> Tensor<B, D>,
        C: FnMut(Progress<'_, B, D>),
    {
        let batch = x_start.dims()[0];
        let timesteps = self.timesteps();
        let num_steps = timesteps.len();
        let mut x = x_start;
        for (step, &timestep) in timesteps.iter().enumerate() {
            let output = model(x.clone(), &vec![timestep; batch]);
            let z = self.needs_noise(step).then(|| noise(step));
            let out = self.step(step, x, output, z);
            on_step(Progress {
                step,
                num_steps,
                timestep,
                output: &out,
            });
            x = out.prev_sample;
        }
        x
    }
}

/// Timesteps drawn uniformly from `0..num_timesteps` with the caller's RNG (training).
/// Panics when `num_timesteps` is 0.
pub fn sample_timesteps<R: rand::RngCore + ?Sized>(
    rng: &mut R,
    batch: usize,
    num_timesteps: usize,
) -> Vec<usize> {
    use rand::Rng;
    (0..batch)
        .map(|_| rng.random_range(0..num_timesteps))
        .collect()
}
