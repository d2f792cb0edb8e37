//! Beta schedules and every buffer derived from them, in f64.
//!
//! A [`Schedule`] is indexed by position `i` in `0..len()`. For the full training schedule
//! position and timestep coincide; a respaced schedule keeps a subset of the original
//! timesteps (`timesteps()[i]` is what the network is shown) with betas recomputed so that
//! `ᾱ` at every kept step equals the original `ᾱ` there (GLIDE/ADM `SpacedDiffusion`).

use serde::{Deserialize, Serialize};

use crate::error::DiffusionError;

/// Which beta schedule (`diffusion.schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Nichol & Dhariwal cosine schedule (diffusers `squaredcos_cap_v2`).
    #[default]
    Cosine,
    /// Ho et al. linear schedule, 1e-4 → 0.02, scaled by 1000/T (ADM `get_named_beta_schedule("linear")`).
    Linear,
}

/// Betas of a named schedule with `num_timesteps` steps, computed in f64.
pub fn beta_schedule(kind: BetaSchedule, num_timesteps: usize) -> Vec<f64> {
    let t_total = num_timesteps as f64;
    match kind {
        BetaSchedule::Cosine => {
            let alpha_bar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..num_timesteps)
                .map(|i| {
                    let t1 = i as f64 / t_total;
                    let t2 = (i + 1) as f64 / t_total;
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999)
                })
                .collect()
        }
        BetaSchedule::Linear => {
            let scale = 1000.0 / t_total;
            let (start, end) = (scale * 1e-4, scale * 0.02);
            if num_timesteps == 1 {
                return vec![start];
            }
            // numpy.linspace(start, end, T): start + k * step, with the end point exact.
            let step = (end - start) / (t_total - 1.0);
            (0..num_timesteps)
                .map(|k| {
                    if k + 1 == num_timesteps {
                        end
                    } else {
                        start + k as f64 * step
                    }
                })
                .collect()
        }
    }
}

/// The per-step buffers of a diffusion process (all f64, one entry per schedule position).
#[derive(Debug, Clone, PartialEq)]
pub struct Buffers {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    /// `ᾱ_{i-1}`, with 1.0 at position 0.
    pub alphas_cumprod_prev: Vec<f64>,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    /// β̃_i = β_i (1 − ᾱ_{i−1}) / (1 − ᾱ_i); 0 at position 0.
    pub posterior_variance: Vec<f64>,
    /// log β̃_i, with position 0 replaced by log β̃_1 (the true value is log 0).
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
}

impl Buffers {
    fn from_betas(betas: Vec<f64>) -> Self {
        let n = betas.len();
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0;
        for b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc);
        }
        let alphas_cumprod_prev: Vec<f64> = std::iter::once(1.0)
            .chain(alphas_cumprod[..n.saturating_sub(1)].iter().copied())
            .collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let ac = &alphas_cumprod;
        let acp = &alphas_cumprod_prev;
        let posterior_variance = map(&|i| betas[i] * (1.0 - acp[i]) / (1.0 - ac[i]));
        let posterior_log_variance_clipped = map(&|i| {
            let v = if i == 0 && n > 1 {
                posterior_variance[1]
            } else {
                posterior_variance[i]
            };
            v.ln()
        });
        Buffers {
            sqrt_alphas_cumprod: map(&|i| ac[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - ac[i]).sqrt()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / ac[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / ac[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * acp[i].sqrt() / (1.0 - ac[i])),
            posterior_mean_coef2: map(&|i| {
                (1.0 - acp[i]) * (1.0 - betas[i]).sqrt() / (1.0 - ac[i])
            }),
            posterior_log_variance_clipped,
            posterior_variance,
            alphas_cumprod_prev,
            alphas_cumprod,
            betas,
        }
    }
}

/// A (possibly respaced) diffusion schedule: buffers plus the original timestep of each position.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    buffers: Buffers,
    timesteps: Vec<usize>,
    num_train_timesteps: usize,
}

impl Schedule {
    /// The full training schedule of a named beta schedule.
    pub fn new(kind: BetaSchedule, num_timesteps: usize) -> Result<Self, DiffusionError> {
        if num_timesteps < 2 {
            return Err(DiffusionError::TooFewTimesteps(num_timesteps));
        }
        Self::from_betas(beta_schedule(kind, num_timesteps))
    }

    /// A full schedule from explicit betas (each in (0, 1)).
    pub fn from_betas(betas: Vec<f64>) -> Result<Self, DiffusionError> {
        if betas.len() < 2 {
            return Err(DiffusionError::TooFewTimesteps(betas.len()));
        }
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b > 0.0 && **b < 1.0))
        {
            return Err(DiffusionError::InvalidBeta {
                index: i,
                value: *b,
            });
        }
        let n = betas.len();
        Ok(Schedule {
            buffers: Buffers::from_betas(betas),
            timesteps: (0..n).collect(),
            num_train_timesteps: n,
        })
    }

    /// Keep only the original timesteps `use_timesteps` (any order, no duplicates needed) and
    /// recompute β'_k = 1 − ᾱ_{t_k} / ᾱ_{t_{k−1}} (ᾱ_{t_{−1}} = 1). Respacing a respaced
    /// schedule is not supported: respace the full one.
    pub fn respace(&self, use_timesteps: &[usize]) -> Result<Schedule, DiffusionError> {
        if self.timesteps.len() != self.num_train_timesteps {
            return Err(DiffusionError::AlreadyRespaced);
        }
        let mut kept: Vec<usize> = use_timesteps.to_vec();
        kept.sort_unstable();
        kept.dedup();
        if let Some(&t) = kept.iter().find(|&&t| t >= self.num_train_timesteps) {
            return Err(DiffusionError::TimestepOutOfRange {
                t,
                len: self.num_train_timesteps,
            });
        }
        if kept.len() < 2 {
            return Err(DiffusionError::TooFewTimesteps(kept.len()));
        }
        let ac = &self.buffers.alphas_cumprod;
        let mut last = 1.0;
        let betas = kept
            .iter()
            .map(|&t| {
                let b = 1.0 - ac[t] / last;
                last = ac[t];
                b
            })
            .collect();
        Ok(Schedule {
            buffers: Buffers::from_betas(betas),
            timesteps: kept,
            num_train_timesteps: self.num_train_timesteps,
        })
    }

    pub fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    /// Number of positions (steps) in this schedule.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// Always false: a schedule has at least two steps.
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// The original (training) timestep of each position, ascending.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// T of the training schedule this one was derived from.
    pub fn num_train_timesteps(&self) -> usize {
        self.num_train_timesteps
    }

    /// Signal-to-noise ratio ᾱ/(1 − ᾱ) at each position.
    pub fn snr(&self) -> Vec<f64> {
        self.buffers
            .alphas_cumprod
            .iter()
            .map(|a| a / (1.0 - a))
            .collect()
    }
}
