//! `stage: prior` in training: the diffusion prior (`unclip_stages::prior`) wired to the
//! embedding store. It trains on the store alone: the shards are read for their keys (and
//! captions, for `text_encodings: on_the_fly`), images are never decoded. Image embeddings are
//! standardised per dimension with the store's mean/std (kept in the model); the model predicts
//! x0 with MSE; the text conditioning is replaced by the empty caption with probability
//! `text_cond_drop_prob`, drawn per sample from the keyed RNG. Validation samples the held-out
//! captions and compares with their true image embeddings.

use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, ElementConversion, Tensor};
use image::RgbImage;
use unclip_clip::Clip;
use unclip_data::{Batch, BatchField, ImageTransform, SampleTransform};
use unclip_diffusion::{GaussianDiffusion, LossOptions};
use unclip_models::{NoiseKey, PriorTransformer};
use unclip_stages::export::{ExportLayout, ExportMeta, ExportReport};
use unclip_stages::prior::{sample_embeddings, PriorModelConfig, PriorStage};
use unclip_stages::text::{ClipDims, TextCond, TextEncodingsSource, TextInputs};

use super::cond::{Conditioning, NoImage};
use super::to_vec;
use super::Noised;
use crate::config::{AtLeastOne, DataSource, RunConfig};
use crate::{Split, TaskFactory, TrainError, TrainTask, ValidationSums};

/// The prior stage on autodiff backend `B`.
#[derive(Clone)]
pub struct PriorTask<B: AutodiffBackend> {
    pub spec: PriorSpec,
    diffusion: GaussianDiffusion,
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

/// What a prior task is built from (backend-independent): the stage and its data.
#[derive(Clone)]
pub struct PriorSpec {
    pub stage: PriorStage,
    pub cond: Conditioning,
    seed: u64,
}

impl PriorSpec {
    pub fn new(cfg: &RunConfig<PriorModelConfig>) -> Result<Self, TrainError> {
        let m = &cfg.model;
        let clip = m.clip.as_deref();
        let cond = match cfg.data.source {
            DataSource::Shards => {
                let cond = Conditioning::open(&cfg.data, m.text_encodings, clip)?;
                let d = cond.text.dims;
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
        let stats = (cond.image_mean.clone(), cond.image_std.clone());
        let stage = PriorStage::new(m, cond.text.clone(), stats, &cfg.diffusion)?;
        Ok(Self {
            stage,
            cond,
            seed: cfg.seed,
        })
    }
}

impl TaskFactory for PriorSpec {
    type Task<B: AutodiffBackend> = PriorTask<B>;
    fn build<B: AutodiffBackend>(&self, device: &B::Device) -> Result<PriorTask<B>, TrainError> {
        let d = &self.stage.diffusion_config;
        Ok(PriorTask {
            spec: self.clone(),
            diffusion: d.diffusion()?,
            loss: d.loss_options(),
            guidance: d.sampling.guidance_scale,
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
        let Some((shards, split)) = self.spec.cond.preview_stream() else {
            return Ok(None);
        };
        let thumbs = Arc::new(ImageTransform::new(THUMB));
        let batch = super::first_samples(
            &shards,
            PREVIEW_POOL,
            self.spec.seed,
            self.spec.cond.transform(thumbs, split)?,
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
        match (&self.clip, self.spec.cond.text.source) {
            (Some(clip), TextEncodingsSource::OnTheFly) => {
                // The frozen CLIP runs without autodiff; its outputs enter as constants.
                let t = self
                    .spec
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
            _ => self.spec.cond.text::<BB>(batch, drop, None, device),
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
        self.spec.stage.init(self.spec.seed, device)
    }

    fn init_is_seeded(&self) -> bool {
        true
    }

    fn transform(&self, split: Split) -> Result<Arc<dyn SampleTransform>, TrainError> {
        self.spec.cond.transform(Arc::new(NoImage), split)
    }

    fn random_batch(&self, batch_size: usize, key: &NoiseKey) -> Batch {
        let d = self.spec.cond.text.dims;
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
        if self.spec.cond.text.source == TextEncodingsSource::Store {
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
        let drop_prob = self.spec.stage.model.text_cond_drop_prob.0;
        let drop = TextCond::drops(key, "text_drop", drop_prob, batch.len());
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
        let d = self.spec.cond.text.dims.embed_dim;
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
                &self.spec.stage.text,
                &self.spec.stage.sampler,
                t,
                self.guidance,
                self.spec.stage.n_candidates(),
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
        let mean: Vec<f32> = (0..n)
            .flat_map(|_| self.spec.cond.image_mean.clone())
            .collect();
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
            &self.spec.stage.text,
            &self.spec.stage.sampler,
            &text,
            self.guidance,
            self.spec.stage.n_candidates(),
            &k,
            device,
        )?)?;
        let d = self.spec.cond.text.dims.embed_dim;
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
        Ok(Some(unclip_data::pixels::chw_grid(
            &pixels,
            2 * n,
            THUMB as usize,
            Some(2),
        )))
    }

    fn export(
        &self,
        model: &Self::Model,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, TrainError> {
        Ok(self.spec.stage.export(model, meta, out, layout)?)
    }
}
