//! `stage: prior` — the diffusion prior (CLIP text → CLIP image embedding), Karlo / diffusers'
//! `PriorTransformer` ([`unclip_models::PriorTransformer`]): its `model:` section, the network
//! it builds, and sampling.
//!
//! Image embeddings are brought to the diffusion's scale with `clip_mean` / `clip_std` kept in
//! the model (see [`ImageEmbedNorm`]); the model predicts x0. Sampling
//! ([`sample_embeddings`]): the configured respaced sampler, classifier-free guidance on x0
//! against the empty caption, and `n_candidates` draws per caption of which the one with the
//! largest dot product with the text embedding is kept (the paper's trick).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use unclip_config::{AtLeastOne, Fraction};
use unclip_diffusion::{guided_model, DiffusionConfig, Sampler};
use unclip_models::{keyed_init, NoiseKey, PriorConfig, PriorTransformer};
use unclip_rng::KeyedRng;

use crate::export::{write_diffusers, write_native, ExportLayout, ExportMeta, ExportReport};
use crate::text::{TextCond, TextEncodingsSource, TextInputs};
use crate::{tensor_values, StageError};

/// How image embeddings are brought to the scale the prior's diffusion works at. Whatever the
/// choice, the model stores it as `clip_mean` / `clip_std` (a fixed scale s is mean 0, std 1/s),
/// so exports and samplers need not know which was used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ImageEmbedNorm {
    /// Per-dimension mean and std of the training store's image embeddings (Karlo, diffusers).
    #[default]
    Standardize,
    /// Multiply the unit-norm embeddings by √D (DALLE2-pytorch).
    SqrtDim,
    /// Multiply by a fixed factor (the paper: 17.2).
    Scale(f64),
}

/// The `model:` section of `stage: prior`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriorModelConfig {
    /// Transformer width.
    pub width: AtLeastOne,
    /// Transformer blocks.
    pub depth: AtLeastOne,
    /// Attention heads (must divide `width`).
    pub heads: AtLeastOne,
    /// Hidden width of the timestep MLP; absent = `width` (diffusers' default).
    pub time_embed_dim: Option<AtLeastOne>,
    /// Hidden width of the blocks' MLPs as a multiple of `width`; absent = 4 (diffusers' only
    /// value: the diffusers export refuses others).
    pub ff_mult: Option<AtLeastOne>,
    /// Dropout after attention and inside the MLP.
    pub dropout: Fraction,
    /// Where the per-token caption encodings come from: `store`, `on_the_fly` or `none`.
    pub text_encodings: TextEncodingsSource,
    /// Probability that a sample's caption is replaced by the empty caption (CFG).
    pub text_cond_drop_prob: Fraction,
    /// The frozen CLIP folder the store was made with (needed by `on_the_fly`).
    pub clip: Option<PathBuf>,
    /// Candidates drawn per caption at sampling; the one closest to the text embedding wins.
    pub n_candidates: AtLeastOne,
    /// `standardize` (per-dimension, from the store), `sqrt_dim` or `{scale: 17.2}`.
    pub image_embed_norm: ImageEmbedNorm,
    /// CLIP sizes for `data.source: random` (otherwise read from the embedding store).
    pub embed_dim: Option<AtLeastOne>,
    pub text_width: Option<AtLeastOne>,
    pub text_len: Option<AtLeastOne>,
}

impl Default for PriorModelConfig {
    fn default() -> Self {
        Self {
            width: AtLeastOne(512),
            depth: AtLeastOne(6),
            heads: AtLeastOne(8),
            time_embed_dim: None,
            ff_mult: None,
            dropout: Fraction(0.0),
            text_encodings: TextEncodingsSource::Store,
            text_cond_drop_prob: Fraction(0.1),
            clip: None,
            n_candidates: AtLeastOne(2),
            image_embed_norm: ImageEmbedNorm::Standardize,
            embed_dim: None,
            text_width: None,
            text_len: None,
        }
    }
}

/// The prior stage, validated: the network's shape, the caption conditioning, the embedding
/// scale, the diffusion.
#[derive(Clone)]
pub struct PriorStage {
    pub model: PriorModelConfig,
    pub net: PriorConfig,
    pub text: TextCond,
    /// `clip_mean` / `clip_std` the model starts with (see [`ImageEmbedNorm`]).
    pub stats: (Vec<f32>, Vec<f32>),
    pub diffusion_config: DiffusionConfig,
    pub sampler: Sampler,
}

impl PriorStage {
    /// The stage of `model` for the caption conditioning `text`, with `image_stats` the
    /// per-dimension mean and std of the training image embeddings (used by `standardize`).
    pub fn new(
        model: &PriorModelConfig,
        text: TextCond,
        image_stats: (Vec<f32>, Vec<f32>),
        diffusion: &DiffusionConfig,
    ) -> Result<Self, StageError> {
        let m = model;
        let net = PriorConfig {
            embed_dim: text.dims.embed_dim,
            width: m.width.0 as usize,
            depth: m.depth.0 as usize,
            heads: m.heads.0 as usize,
            text_len: text.dims.text_len,
            text_width: text.dims.text_width,
            dropout: m.dropout.0,
            time_embed_dim: m.time_embed_dim.map(|t| t.0 as usize),
            ff_mult: m.ff_mult.map(|t| t.0 as usize),
        };
        if !net.width.is_multiple_of(net.heads) {
            return Err(StageError::invalid(
                "model.heads",
                format!("{} does not divide width {}", net.heads, net.width),
            ));
        }
        let sampler = diffusion.sampler()?;
        let d = text.dims.embed_dim;
        let scale = |s: f64| -> Result<(Vec<f32>, Vec<f32>), StageError> {
            if !(s.is_finite() && s > 0.0) {
                return Err(StageError::invalid(
                    "model.image_embed_norm.scale",
                    format!("must be a finite number > 0, got {s}"),
                ));
            }
            Ok((vec![0.0; d], vec![(1.0 / s) as f32; d]))
        };
        let stats = match m.image_embed_norm {
            ImageEmbedNorm::Standardize => image_stats,
            ImageEmbedNorm::SqrtDim => scale((d as f64).sqrt())?,
            ImageEmbedNorm::Scale(s) => scale(s)?,
        };
        Ok(Self {
            model: m.clone(),
            net,
            text,
            stats,
            diffusion_config: diffusion.clone(),
            sampler,
        })
    }

    /// A fresh network with every random weight drawn from `seed` (the prior's own keyed
    /// initialisation) and the embedding statistics in place.
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> PriorTransformer<B> {
        let m = keyed_init(self.net.init(device), seed)
            .expect("the prior's random parameters are all Linear weights");
        m.with_stats(&self.stats.0, &self.stats.1)
    }

    /// Samples drawn per caption at sampling, the best kept (`model.n_candidates`).
    pub fn n_candidates(&self) -> usize {
        self.model.n_candidates.0 as usize
    }

    /// Writes `model` into `out` in `layout` (the CLIP sizes recorded in `meta`).
    pub fn export<B: Backend>(
        &self,
        model: &PriorTransformer<B>,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, StageError> {
        let mut meta = meta.clone();
        self.text.dims.record(&mut meta.model);
        let meta = &meta;
        match layout {
            ExportLayout::Native => write_native::<B, _>(model, meta, out),
            ExportLayout::Diffusers => {
                let (config, tensors) =
                    unclip_models::prior_to_diffusers(model).map_err(StageError::Input)?;
                write_diffusers(out, &config, tensors, meta)
            }
        }
    }
}

fn repeat_rows<B: Backend, const D: usize>(x: Tensor<B, D>, k: usize) -> Tensor<B, D> {
    if k == 1 {
        return x;
    }
    let n = x.dims()[0];
    let idx: Vec<i64> = (0..n * k).map(|r| (r / k) as i64).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n * k]), &x.device());
    x.select(0, idx)
}

/// Samples image embeddings (raw CLIP space, [N, D]) for `text` with the prior `model`:
/// `sampler` steps, guidance `scale` against the empty caption of `cond`, `n_candidates`
/// per row keeping the one with the largest dot product with the row's text embedding. Noise
/// comes from `KeyedRng(seed, …, step, indices[row])`, so a caption gets the same sample
/// whatever the batch it is in.
#[allow(clippy::too_many_arguments)]
pub fn sample_embeddings<B: Backend>(
    model: &PriorTransformer<B>,
    cond: &TextCond,
    sampler: &Sampler,
    text: &TextInputs<B>,
    scale: f64,
    n_candidates: usize,
    key: &NoiseKey,
    device: &B::Device,
) -> Result<Tensor<B, 2>, StageError> {
    sample_embeddings_with(
        model,
        cond,
        sampler,
        text,
        scale,
        n_candidates,
        key,
        device,
        &mut || {},
    )
}

/// [`sample_embeddings`], calling `on_step` after every sampler step (progress bars).
#[allow(clippy::too_many_arguments)]
pub fn sample_embeddings_with<B: Backend>(
    model: &PriorTransformer<B>,
    cond: &TextCond,
    sampler: &Sampler,
    text: &TextInputs<B>,
    scale: f64,
    n_candidates: usize,
    key: &NoiseKey,
    device: &B::Device,
    on_step: &mut dyn FnMut(),
) -> Result<Tensor<B, 2>, StageError> {
    let n = text.embed.dims()[0];
    let (k, d) = (n_candidates.max(1), cond.dims.embed_dim);
    let rows = n * k;
    let embed = repeat_rows(text.embed.clone(), k);
    let encodings = text.encodings.clone().map(|(e, m)| {
        (
            repeat_rows(e, k),
            repeat_rows(m.float(), k).greater_elem(0.5),
        )
    });
    let (embed, encodings) = if scale != 1.0 {
        let empty = cond.empty_inputs::<B>(rows, device);
        let embed = Tensor::cat(vec![embed, empty.embed], 0);
        let encodings = match (encodings, empty.encodings) {
            (Some((e, m)), Some((ee, em))) => Some((
                Tensor::cat(vec![e, ee], 0),
                Tensor::cat(vec![m.int(), em.int()], 0).bool(),
            )),
            _ => None,
        };
        (embed, encodings)
    } else {
        (embed, encodings)
    };
    let (enc, mask) = match encodings {
        Some((e, m)) => (Some(e), Some(m)),
        None => (None, None),
    };
    let net = |x: Tensor<B, 2>, t: &[usize]| {
        let t: Vec<f64> = t.iter().map(|&v| v as f64).collect();
        model.forward(x, &t, embed.clone(), enc.clone(), mask.clone(), None)
    };
    let row_index = |r: usize| key.indices[r / k].wrapping_mul(k as u64) + (r % k) as u64;
    let normal = |purpose: &str| {
        let mut v = vec![0f32; rows * d];
        for (r, chunk) in v.chunks_mut(d).enumerate() {
            KeyedRng::new(key.seed, purpose, key.step, row_index(r)).fill_normal_f32(chunk);
        }
        Tensor::<B, 2>::from_data(TensorData::new(v, [rows, d]), device)
    };
    let start = normal("prior_sample_start");
    let noise = |step: usize| normal(&format!("prior_sample_noise/{step}"));
    let variance = sampler.diffusion().variance();
    let x0 = if scale != 1.0 {
        sampler.sample(start, guided_model(net, scale, variance), noise, |_| {
            on_step()
        })
    } else {
        sampler.sample(start, net, noise, |_| on_step())
    };
    let z = model.unstandardize(x0);
    if k == 1 {
        return Ok(z);
    }
    // Keep, per caption, the candidate with the largest dot product with its text embedding.
    let scores = tensor_values((z.clone() * repeat_rows(text.embed.clone(), k)).sum_dim(1))?;
    let best: Vec<i64> = (0..n)
        .map(|i| {
            let c = (0..k)
                .max_by(|&a, &b| scores[i * k + a].total_cmp(&scores[i * k + b]))
                .unwrap_or(0);
            (i * k + c) as i64
        })
        .collect();
    let best = Tensor::<B, 1, Int>::from_data(TensorData::new(best, [n]), device);
    Ok(z.select(0, best))
}
