//! `stage: prior` — the diffusion prior (CLIP text → CLIP image embedding), Karlo / diffusers'
//! `PriorTransformer`. It trains on the embedding store alone: the shards are read for their
//! keys (and captions, for `text_encodings: on_the_fly`), images are never decoded. Image
//! embeddings are standardised per dimension with the store's mean/std (kept in the model);
//! the model predicts x0 with MSE; the text conditioning is replaced by the empty caption with
//! probability `text_cond_drop_prob`, drawn per sample from the keyed RNG.
//!
//! Sampling ([`sample_embeddings`]): the configured respaced sampler, classifier-free guidance
//! on x0 against the empty caption, and `n_candidates` draws per caption of which the one with
//! the largest dot product with the text embedding is kept (the paper's trick). Validation
//! samples the held-out captions and compares with their true image embeddings.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, ElementConversion, Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use unclip_clip::Clip;
use unclip_data::{Batch, BatchField, ImageTransform, SampleTransform};
use unclip_diffusion::{guided_model, DiffusionConfig, GaussianDiffusion, LossOptions, Sampler};
use unclip_models::{keyed_init, NoiseKey, PriorConfig, PriorTransformer};
use unclip_rng::KeyedRng;

use super::cond::{ClipDims, Conditioning, NoImage, TextEncodingsSource, TextInputs};
use super::to_vec;
use super::Noised;
use crate::config::{AtLeastOne, DataSource, Fraction, RunConfig};
use crate::export::{ExportLayout, ExportMeta, ExportReport};
use crate::{Split, TrainError, TrainTask, ValidationSums};

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

/// The prior stage on autodiff backend `B`.
#[derive(Clone)]
pub struct PriorTask<B: AutodiffBackend> {
    pub net: PriorConfig,
    pub cond: Conditioning,
    stats: (Vec<f32>, Vec<f32>),
    seed: u64,
    drop_prob: f64,
    n_candidates: usize,
    diffusion: GaussianDiffusion,
    sampler: Sampler,
    loss: LossOptions,
    guidance: f64,
    /// The frozen CLIP (`on_the_fly`), on the training device, without autodiff.
    clip: Option<Clip<B::InnerBackend>>,
    /// The preview's pool of held-out samples with thumbnails, loaded on first use.
    preview_pool: Arc<Mutex<Option<Batch>>>,
}

/// Side of the thumbnails in prior previews.
const THUMB: u32 = 32;
/// Held-out samples a preview's samples are matched against.
const PREVIEW_POOL: usize = 64;

/// What a prior task is built from (backend-independent).
#[derive(Clone)]
pub struct PriorSpec {
    pub net: PriorConfig,
    pub cond: Conditioning,
    /// `clip_mean` / `clip_std` the model starts with (see [`ImageEmbedNorm`]).
    stats: (Vec<f32>, Vec<f32>),
    seed: u64,
    drop_prob: f64,
    n_candidates: usize,
    diffusion: DiffusionConfig,
}

impl PriorSpec {
    pub fn new(cfg: &RunConfig<PriorModelConfig>) -> Result<Self, TrainError> {
        let m = &cfg.model;
        let clip = m.clip.as_deref();
        let cond = match cfg.data.source {
            DataSource::Shards => {
                let cond = Conditioning::open(&cfg.data, m.text_encodings, clip)?;
                let d = cond.dims;
                for (key, given, have) in [
                    ("model.embed_dim", m.embed_dim, d.embed_dim),
                    ("model.text_width", m.text_width, d.text_width),
                    ("model.text_len", m.text_len, d.text_len),
                ] {
                    if let Some(g) = given {
                        if g.0 as usize != have {
                            return Err(TrainError::invalid(
                                key,
                                format!("{} but the embedding store has {have}", g.0),
                            ));
                        }
                    }
                }
                cond
            }
            DataSource::Random => {
                let need = |key: &str, v: Option<AtLeastOne>| {
                    v.map(|v| v.0 as usize).ok_or_else(|| {
                        TrainError::invalid(key, "required with `data.source: random`")
                    })
                };
                let dims = ClipDims {
                    embed_dim: need("model.embed_dim", m.embed_dim)?,
                    text_width: need("model.text_width", m.text_width)?,
                    text_len: need("model.text_len", m.text_len)?,
                };
                Conditioning::random(dims, m.text_encodings, clip)?
            }
        };
        let net = PriorConfig {
            embed_dim: cond.dims.embed_dim,
            width: m.width.0 as usize,
            depth: m.depth.0 as usize,
            heads: m.heads.0 as usize,
            text_len: cond.dims.text_len,
            text_width: cond.dims.text_width,
            dropout: m.dropout.0,
            time_embed_dim: m.time_embed_dim.map(|t| t.0 as usize),
            ff_mult: m.ff_mult.map(|t| t.0 as usize),
        };
        if !net.width.is_multiple_of(net.heads) {
            return Err(TrainError::invalid(
                "model.heads",
                format!("{} does not divide width {}", net.heads, net.width),
            ));
        }
        cfg.diffusion.sampler()?;
        let d = cond.dims.embed_dim;
        let scale = |s: f64| -> Result<(Vec<f32>, Vec<f32>), TrainError> {
            if !(s.is_finite() && s > 0.0) {
                return Err(TrainError::invalid(
                    "model.image_embed_norm.scale",
                    format!("must be a finite number > 0, got {s}"),
                ));
            }
            Ok((vec![0.0; d], vec![(1.0 / s) as f32; d]))
        };
        let stats = match m.image_embed_norm {
            ImageEmbedNorm::Standardize => (cond.image_mean.clone(), cond.image_std.clone()),
            ImageEmbedNorm::SqrtDim => scale((d as f64).sqrt())?,
            ImageEmbedNorm::Scale(s) => scale(s)?,
        };
        Ok(Self {
            net,
            cond,
            stats,
            seed: cfg.seed,
            drop_prob: m.text_cond_drop_prob.0,
            n_candidates: m.n_candidates.0 as usize,
            diffusion: cfg.diffusion.clone(),
        })
    }
}

impl PriorSpec {
    /// The stage's `diffusion:` section.
    pub fn diffusion_config(&self) -> &DiffusionConfig {
        &self.diffusion
    }

    /// Samples drawn per caption at sampling, the best kept (`model.n_candidates`).
    pub fn n_candidates(&self) -> usize {
        self.n_candidates
    }
}

impl crate::launch::TaskFactory for PriorSpec {
    type Task<B: AutodiffBackend> = PriorTask<B>;
    fn build<B: AutodiffBackend>(&self, device: &B::Device) -> Result<PriorTask<B>, TrainError> {
        Ok(PriorTask {
            net: self.net.clone(),
            cond: self.cond.clone(),
            stats: self.stats.clone(),
            seed: self.seed,
            drop_prob: self.drop_prob,
            n_candidates: self.n_candidates,
            diffusion: self.diffusion.diffusion()?,
            sampler: self.diffusion.sampler()?,
            loss: self.diffusion.loss_options(),
            guidance: self.diffusion.sampling.guidance_scale,
            clip: self.cond.load_clip::<B::InnerBackend>(device)?,
            preview_pool: Arc::new(Mutex::new(None)),
        })
    }
}

/// Rows `[1..n, 0]` of `x`: every row gets its neighbour's value (the shuffled-caption control).
fn roll<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let n = x.dims()[0];
    if n < 2 {
        return x;
    }
    Tensor::cat(vec![x.clone().narrow(0, 1, n - 1), x.narrow(0, 0, 1)], 0)
}

fn repeat_rows<B: Backend, const D: usize>(x: Tensor<B, D>, k: usize) -> Tensor<B, D> {
    if k == 1 {
        return x;
    }
    let n = x.dims()[0];
    let idx: Vec<i64> = (0..n * k).map(|r| (r / k) as i64).collect();
    let idx =
        Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(idx, [n * k]), &x.device());
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
    cond: &Conditioning,
    sampler: &Sampler,
    text: &TextInputs<B>,
    scale: f64,
    n_candidates: usize,
    key: &NoiseKey,
    device: &B::Device,
) -> Result<Tensor<B, 2>, TrainError> {
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
    cond: &Conditioning,
    sampler: &Sampler,
    text: &TextInputs<B>,
    scale: f64,
    n_candidates: usize,
    key: &NoiseKey,
    device: &B::Device,
    on_step: &mut dyn FnMut(),
) -> Result<Tensor<B, 2>, TrainError> {
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
        let empty = cond.empty_inputs::<B>(rows, device)?;
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
    let scores = to_vec((z.clone() * repeat_rows(text.embed.clone(), k)).sum_dim(1))?;
    let best: Vec<i64> = (0..n)
        .map(|i| {
            let c = (0..k)
                .max_by(|&a, &b| scores[i * k + a].total_cmp(&scores[i * k + b]))
                .unwrap_or(0);
            (i * k + c) as i64
        })
        .collect();
    let best = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(best, [n]), device);
    Ok(z.select(0, best))
}

impl Conditioning {
    /// The empty caption repeated `n` times, as the unconditional branch of guidance.
    pub fn empty_inputs<B: Backend>(
        &self,
        n: usize,
        device: &B::Device,
    ) -> Result<TextInputs<B>, TrainError> {
        let d = self.dims;
        let rep = |v: &[f32]| -> Vec<f32> { (0..n).flat_map(|_| v.iter().copied()).collect() };
        let embed = Tensor::<B, 2>::from_data(
            TensorData::new(rep(&self.empty.text_embed), [n, d.embed_dim]),
            device,
        );
        let encodings = match (&self.empty.encodings, &self.empty.mask) {
            (Some(e), Some(m)) if self.source != TextEncodingsSource::None => {
                let m: Vec<f32> = m.iter().map(|&b| b as u8 as f32).collect();
                Some((
                    Tensor::<B, 3>::from_data(
                        TensorData::new(rep(e), [n, d.text_len, d.text_width]),
                        device,
                    ),
                    Tensor::<B, 2>::from_data(TensorData::new(rep(&m), [n, d.text_len]), device)
                        .greater_elem(0.5),
                ))
            }
            _ => None,
        };
        Ok(TextInputs { embed, encodings })
    }
}

/// Per-row cosine similarity of two [N, D] tensors.
fn cosine(a: &[f32], b: &[f32], d: usize) -> Vec<f64> {
    a.chunks(d)
        .zip(b.chunks(d))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
            let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum::<f64>().sqrt();
            dot / (nx * ny).max(1e-12)
        })
        .collect()
}

impl<B: AutodiffBackend> PriorTask<B> {
    /// The first 64 samples of the preview stream with their thumbnails (cached).
    fn preview_pool(&self) -> Result<Option<Batch>, TrainError> {
        let mut cached = self.preview_pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cached.as_ref() {
            return Ok(Some(b.clone()));
        }
        let Some((shards, split)) = self.cond.preview_stream() else {
            return Ok(None);
        };
        let thumbs = Arc::new(ImageTransform::new(THUMB));
        let batch = super::first_samples(
            &shards,
            PREVIEW_POOL,
            self.seed,
            self.cond.transform(thumbs, split)?,
        )?;
        *cached = Some(batch.clone());
        Ok(Some(batch))
    }

    fn text<BB: Backend<Device = B::Device>>(
        &self,
        batch: &Batch,
        drop: &[bool],
        device: &BB::Device,
    ) -> Result<TextInputs<BB>, TrainError> {
        match (&self.clip, self.cond.source) {
            (Some(clip), TextEncodingsSource::OnTheFly) => {
                // The frozen CLIP runs without autodiff; its outputs enter as constants.
                let t = self
                    .cond
                    .text::<B::InnerBackend>(batch, drop, Some(clip), device)?;
                let conv2 = |x: Tensor<B::InnerBackend, 2>| {
                    Tensor::<BB, 2>::from_data(x.into_data(), device)
                };
                Ok(TextInputs {
                    embed: conv2(t.embed),
                    encodings: t.encodings.map(|(e, m)| {
                        (
                            Tensor::<BB, 3>::from_data(e.into_data(), device),
                            Tensor::<BB, 2, Bool>::from_data(m.into_data(), device),
                        )
                    }),
                })
            }
            _ => self.cond.text::<BB>(batch, drop, None, device),
        }
    }

    /// Standardised image embeddings, noised at keyed timesteps.
    fn noised<BB: Backend<Device = B::Device>>(
        &self,
        model: &PriorTransformer<BB>,
        batch: &Batch,
        key: &NoiseKey,
        device: &BB::Device,
    ) -> Result<Noised<BB, 2>, TrainError> {
        let x0 = model.standardize(batch.tensor::<BB, 2>("image_embed", device)?);
        Ok(super::noise_keyed(&self.diffusion, x0, key))
    }

    fn loss_of<BB: Backend<Device = B::Device>>(
        &self,
        model: &PriorTransformer<BB>,
        batch: &Batch,
        key: &NoiseKey,
        drop: &[bool],
        train: bool,
        device: &BB::Device,
    ) -> Result<Tensor<BB, 1>, TrainError> {
        let (x0, x_t, noise, idx) = self.noised(model, batch, key, device)?;
        let text = self.text::<BB>(batch, drop, device)?;
        let (enc, mask) = match text.encodings {
            Some((e, m)) => (Some(e), Some(m)),
            None => (None, None),
        };
        let t: Vec<f64> = idx.iter().map(|&v| v as f64).collect();
        let out = model.forward(x_t.clone(), &t, text.embed, enc, mask, train.then_some(key));
        Ok(self
            .diffusion
            .training_losses(&self.loss, out, x0, x_t, noise, &idx)
            .loss)
    }
}

impl<B: AutodiffBackend> TrainTask<B> for PriorTask<B> {
    type Model = PriorTransformer<B>;

    fn init_model(&self, device: &B::Device) -> Self::Model {
        let m = keyed_init(self.net.init(device), self.seed)
            .expect("the prior's random parameters are all Linear weights");
        m.with_stats(&self.stats.0, &self.stats.1)
    }

    fn init_is_seeded(&self) -> bool {
        true
    }

    fn transform(&self, split: Split) -> Result<Arc<dyn SampleTransform>, TrainError> {
        self.cond.transform(Arc::new(NoImage), split)
    }

    fn random_batch(&self, batch_size: usize, key: &NoiseKey) -> Batch {
        let d = self.cond.dims;
        let normalized = |purpose: &str, row: usize| {
            let mut v = vec![0f32; d.embed_dim];
            key.rng(purpose, row).fill_normal_f32(&mut v);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            v
        };
        let mut fields = vec![
            BatchField {
                name: "image_embed".into(),
                shape: vec![batch_size, d.embed_dim],
                data: (0..batch_size)
                    .flat_map(|r| normalized("random_image", r))
                    .collect(),
            },
            BatchField {
                name: "text_embed".into(),
                shape: vec![batch_size, d.embed_dim],
                data: (0..batch_size)
                    .flat_map(|r| normalized("random_text", r))
                    .collect(),
            },
        ];
        if self.cond.source == TextEncodingsSource::Store {
            let per = d.text_len * d.text_width;
            let mut enc = vec![0f32; batch_size * per];
            let mut mask = vec![0f32; batch_size * d.text_len];
            for r in 0..batch_size {
                let mut rng = key.rng("random_encodings", r);
                rng.fill_normal_f32(&mut enc[r * per..(r + 1) * per]);
                let len = 2 + rng.below(d.text_len as u64 - 1) as usize;
                mask[r * d.text_len..r * d.text_len + len.min(d.text_len)].fill(1.0);
            }
            fields.push(BatchField {
                name: "text_encodings".into(),
                shape: vec![batch_size, d.text_len, d.text_width],
                data: enc,
            });
            fields.push(BatchField {
                name: "text_mask".into(),
                shape: vec![batch_size, d.text_len],
                data: mask,
            });
        }
        Batch {
            epoch: 0,
            keys: key.indices.iter().map(|i| format!("random-{i}")).collect(),
            captions: vec![None; batch_size],
            indices: key.indices.clone(),
            fields,
        }
    }

    fn loss(
        &self,
        model: &Self::Model,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let drop = Conditioning::drops(key, "text_drop", self.drop_prob, batch.len());
        Ok(self.loss_of(model, batch, key, &drop, true, device)?.mean())
    }

    fn validation_sums(
        &self,
        model: &Self::Model,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<ValidationSums, TrainError> {
        let model = model.valid();
        let n = batch.len();
        let loss = self
            .loss_of::<B::InnerBackend>(&model, batch, key, &vec![false; n], false, device)?
            .sum()
            .into_scalar()
            .elem::<f64>();
        let d = self.cond.dims.embed_dim;
        let text = self.text::<B::InnerBackend>(batch, &vec![false; n], device)?;
        let shuffled = TextInputs {
            embed: roll(text.embed.clone()),
            encodings: text
                .encodings
                .clone()
                .map(|(e, m)| (roll(e), roll(m.float()).greater_elem(0.5))),
        };
        let sample = |t: &TextInputs<B::InnerBackend>| {
            sample_embeddings(
                &model,
                &self.cond,
                &self.sampler,
                t,
                self.guidance,
                self.n_candidates,
                key,
                device,
            )
        };
        let pred = to_vec(sample(&text)?)?;
        let pred_shuffled = to_vec(sample(&shuffled)?)?;
        let truth = batch
            .field("image_embed")
            .ok_or_else(|| TrainError::Task("no image_embed".into()))?
            .data
            .clone();
        let text_embed = to_vec(text.embed)?;
        let mean: Vec<f32> = (0..n).flat_map(|_| self.cond.image_mean.clone()).collect();
        // Retrieval: is the true image embedding the nearest (by cosine) to the prediction
        // among the batch's? A same-caption image counts as correct, as in the CLIP stage.
        let mut sims = vec![0f32; n * n];
        for i in 0..n {
            let row = cosine(&pred[i * d..(i + 1) * d].repeat(n), &truth, d);
            for (j, s) in row.into_iter().enumerate() {
                sims[i * n + j] = s as f32;
            }
        }
        let captions: Vec<&str> = batch
            .captions
            .iter()
            .zip(&batch.keys)
            .map(|(c, k)| c.as_deref().unwrap_or(k))
            .collect();
        let sum = |v: Vec<f64>| v.into_iter().sum::<f64>();
        Ok(ValidationSums {
            loss,
            metrics: vec![
                ("cos_pred".into(), sum(cosine(&pred, &truth, d))),
                (
                    "cos_text_baseline".into(),
                    sum(cosine(&text_embed, &truth, d)),
                ),
                ("cos_mean_baseline".into(), sum(cosine(&mean, &truth, d))),
                (
                    "cos_shuffled".into(),
                    sum(cosine(&pred_shuffled, &truth, d)),
                ),
                (
                    "retrieval_top1".into(),
                    super::retrieval_hits(&sims, n, &captions, 1, true) as f64,
                ),
                ("chance_top1".into(), super::chance_top1(&captions)),
            ],
        })
    }

    /// What the prior imagines: for the first `count` held-out captions, the true image
    /// (left) beside the held-out image whose CLIP embedding is nearest to the prior's sample
    /// (right), among the first 64 held-out samples. `None` without shards.
    fn preview(
        &self,
        model: &Self::Model,
        count: usize,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Option<RgbImage>, TrainError> {
        let Some(pool) = self.preview_pool()? else {
            return Ok(None);
        };
        let model = model.valid();
        let n = count.min(pool.len());
        let rows: Vec<usize> = (0..n).collect();
        let batch = pool.select_rows(&rows);
        let text = self.text::<B::InnerBackend>(&batch, &vec![false; n], device)?;
        let k = NoiseKey {
            seed: key.seed,
            step: key.step,
            indices: batch.indices.clone(),
        };
        let sampled = to_vec(sample_embeddings(
            &model,
            &self.cond,
            &self.sampler,
            &text,
            self.guidance,
            self.n_candidates,
            &k,
            device,
        )?)?;
        let d = self.cond.dims.embed_dim;
        let truth = &pool
            .field("image_embed")
            .ok_or_else(|| TrainError::Task("no image_embed".into()))?
            .data;
        let images = &pool
            .field("image")
            .ok_or_else(|| TrainError::Task("no image".into()))?
            .data;
        let per = 3 * (THUMB * THUMB) as usize;
        let mut pixels = Vec::with_capacity(2 * n * per);
        for i in 0..n {
            let sims = cosine(&sampled[i * d..(i + 1) * d].repeat(pool.len()), truth, d);
            let nearest = (0..pool.len())
                .max_by(|&a, &b| sims[a].total_cmp(&sims[b]))
                .unwrap_or(i);
            for j in [i, nearest] {
                pixels.extend_from_slice(&images[j * per..(j + 1) * per]);
            }
        }
        Ok(Some(crate::plot::image_grid_with_columns(
            &pixels,
            2 * n,
            THUMB as usize,
            2,
        )))
    }

    fn export(
        &self,
        model: &Self::Model,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, TrainError> {
        let mut meta = meta.clone();
        self.cond.dims.record(&mut meta.model);
        let meta = &meta;
        match layout {
            ExportLayout::Native => crate::export::write_native::<B, _>(model, meta, out),
            ExportLayout::Diffusers => {
                let (config, tensors) =
                    unclip_models::prior_to_diffusers(model).map_err(TrainError::Task)?;
                crate::export::write_diffusers(out, &config, tensors, meta)
            }
        }
    }
}
