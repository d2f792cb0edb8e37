//! The [`TrainTask`](crate::TrainTask) of each stage: what wires a stage (its network and
//! sampling from `unclip-stages`) to its data, loss, validation metrics and previews — and the
//! helpers they share (keyed timesteps and noise, retrieval counts, preview batches).

pub mod clip;
pub mod cond;
pub mod decoder;
pub mod denoise;
pub mod prior;
pub mod upsampler;

mod image_metrics;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use unclip_diffusion::{GaussianDiffusion, LossOptions};
use unclip_models::NoiseKey;

use crate::{TrainError, ValidationSums};

/// The first `count` samples of `shards` in order (one pass, no shuffle) through `transform`:
/// the fixed samples a stage's previews show.
pub(crate) fn first_samples(
    shards: &str,
    count: usize,
    seed: u64,
    transform: std::sync::Arc<dyn unclip_data::SampleTransform>,
) -> Result<unclip_data::Batch, TrainError> {
    let mut c = unclip_data::LoaderConfig::new(shards, count);
    c.workers = 1;
    c.seed = seed;
    c.shuffle = false;
    c.require_caption = false;
    c.drop_last = false;
    c.epochs = Some(1);
    let mut loader = unclip_data::Loader::new(c, unclip_data::Partition::SINGLE, transform, None)?;
    loader
        .next_batch()?
        .ok_or_else(|| TrainError::Task(format!("preview: no usable sample in {shards}")))
}

/// A tensor's values as f32.
pub(crate) fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, TrainError> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| TrainError::Task(format!("reading a tensor: {e:?}")))
}

/// The validation sums of a diffusion stage without metrics of its own: its training loss of
/// `out`, summed over the samples.
pub(crate) fn diffusion_loss_sums<B: Backend, const D: usize>(
    diffusion: &GaussianDiffusion,
    options: &LossOptions,
    (out, x0, x_t, noise): (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>, Tensor<B, D>),
    idx: &[usize],
) -> ValidationSums {
    let losses = diffusion.training_losses(options, out, x0, x_t, noise, idx);
    ValidationSums {
        loss: losses.loss.sum().into_scalar().elem::<f64>(),
        metrics: Vec::new(),
    }
}

/// A batch of clean samples noised for training: (x0, x_t, noise, timestep per row).
pub(crate) type Noised<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>, Vec<usize>);

/// Noises `x0` ([N, …]) at one timestep per row, drawing the timestep and the Gaussian noise
/// of row `r` from `key.rng("timestep" | "noise", r)`: the same for a sample whatever its
/// batch, worker count or resume point.
pub(crate) fn noise_keyed<B: Backend, const D: usize>(
    diffusion: &GaussianDiffusion,
    x0: Tensor<B, D>,
    key: &NoiseKey,
) -> Noised<B, D> {
    let dims = x0.dims();
    let per_row: usize = dims[1..].iter().product();
    let steps = diffusion.schedule().len() as u64;
    let mut idx = Vec::with_capacity(dims[0]);
    let mut noise = vec![0f32; dims[0] * per_row];
    for (row, chunk) in noise.chunks_mut(per_row).enumerate() {
        idx.push(key.rng("timestep", row).below(steps) as usize);
        key.rng("noise", row).fill_normal_f32(chunk);
    }
    let noise = Tensor::<B, D>::from_data(TensorData::new(noise, dims), &x0.device());
    let x_t = diffusion.q_sample(x0.clone(), &idx, noise.clone());
    (x0, x_t, noise, idx)
}

/// For each query row of `sims` [n × n, row-major; by columns when `by_row` is false], whether
/// one of its `k` most similar items has the query's own caption (so duplicate captions in a
/// batch count as correct). Ties go to the lower index.
pub(crate) fn retrieval_hits(
    sims: &[f32],
    n: usize,
    captions: &[&str],
    k: usize,
    by_row: bool,
) -> usize {
    (0..n)
        .filter(|&q| {
            let score = |j: usize| {
                if by_row {
                    sims[q * n + j]
                } else {
                    sims[j * n + q]
                }
            };
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
            order.iter().take(k).any(|&j| captions[j] == captions[q])
        })
        .count()
}

/// The sum over queries of what random ranking scores at top-1 with [`retrieval_hits`]'s
/// rule: the fraction of the batch sharing the query's caption.
pub(crate) fn chance_top1(captions: &[&str]) -> f64 {
    let n = captions.len() as f64;
    captions
        .iter()
        .map(|q| captions.iter().filter(|c| *c == q).count() as f64 / n)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrieval_hits_count_duplicate_captions_as_correct() {
        // Row q's best match is column (q + 1) % 3; captions 0 and 1 are the same.
        let sims = [0.1, 0.9, 0.0, 0.0, 0.1, 0.9, 0.9, 0.0, 0.1];
        let caps = ["a", "a", "b"];
        assert_eq!(retrieval_hits(&sims, 3, &caps, 1, true), 1);
        assert_eq!(retrieval_hits(&sims, 3, &caps, 2, true), 3);
        // Column q's best match is row (q + 2) % 3.
        assert_eq!(retrieval_hits(&sims, 3, &caps, 1, false), 1);
    }
}
