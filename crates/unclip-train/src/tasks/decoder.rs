//! `stage: decoder` in training: the unCLIP decoder (`unclip_stages::decoder`) trained as an
//! ε-model (or with a learned variance and the hybrid loss) on images from the shards joined
//! by key with their embedding store.
//!
//! Classifier-free guidance dropout, per sample and independent, from the keyed RNG: the image
//! embedding becomes the learned null embedding with `image_cond_drop_prob` (purpose
//! `image_drop`), the caption becomes the empty caption's embedding, encodings and mask with
//! `text_cond_drop_prob` (purpose `text_drop`). [`DecoderTask::model_inputs`] returns exactly
//! what the network receives, so tests can count the drops at the model's input.
//!
//! Previews: ground truth | samples from the same embeddings and captions at guidance 1 | at
//! guidance 3 (guidance on ε, variance from the conditional branch), one row per held-out
//! sample.

use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Tensor};
use image::RgbImage;
use unclip_clip::Clip;
use unclip_data::transform::Crop;
use unclip_data::SampleTransform;
use unclip_data::{Batch, BatchField, ImageTransform};
use unclip_models::{Decoder, DecoderInputs, NoiseKey};
use unclip_stages::decoder::{DecoderModelConfig, DecoderStage};
use unclip_stages::export::{ExportLayout, ExportMeta, ExportReport};
use unclip_stages::text::{ClipDims, TextCond, TextEncodingsSource, TextInputs};

use super::cond::Conditioning;
use super::Noised;
use crate::config::{AtLeastOne, DataSource, RunConfig};
use crate::{Split, TaskFactory, TrainError, TrainTask, ValidationSums};

/// Guidance scales of the preview columns (after the ground truth).
pub const PREVIEW_GUIDANCE: [f64; 2] = [1.0, 3.0];
/// CLIP dimensions of `data.source: random` when the model section does not give them.
pub const RANDOM_DIMS: ClipDims = ClipDims {
    embed_dim: 512,
    text_width: 512,
    text_len: 77,
};

/// The decoder stage's configuration, validated, with its data; the [`TaskFactory`] of
/// `stage: decoder`.
#[derive(Clone)]
pub struct DecoderSpec {
    pub stage: DecoderStage,
    pub cond: Conditioning,
    seed: u64,
    source: DataSource,
    transform: ImageTransform,
    /// Shards (and their split) the preview draws its ground truth from.
    preview_shards: Option<(String, Split)>,
}

fn dim_of(v: Option<AtLeastOne>, default: usize) -> usize {
    v.map_or(default, |x| x.0 as usize)
}

impl DecoderSpec {
    pub fn new(cfg: &RunConfig<DecoderModelConfig>) -> Result<Self, TrainError> {
        let m = &cfg.model;
        let d = &cfg.data;
        m.validate()?;
        let clip_dir = m.clip.as_deref().map(Path::new);
        let cond = match d.source {
            DataSource::Random => {
                if m.text_encodings == TextEncodingsSource::OnTheFly {
                    return Err(TrainError::invalid(
                        "model.text_encodings",
                        "`on_the_fly` reads captions from shards; with `data.source: random` \
                         use `store` (random encodings)",
                    ));
                }
                let dims = ClipDims {
                    embed_dim: dim_of(m.embed_dim, RANDOM_DIMS.embed_dim),
                    text_width: dim_of(m.text_width, RANDOM_DIMS.text_width),
                    text_len: dim_of(m.text_len, RANDOM_DIMS.text_len),
                };
                Conditioning::random(dims, TextEncodingsSource::Store, None)?
            }
            DataSource::Shards => {
                let c = Conditioning::open(d, m.text_encodings, clip_dir)?;
                for (key, given, have) in [
                    ("model.embed_dim", m.embed_dim, c.text.dims.embed_dim),
                    ("model.text_width", m.text_width, c.text.dims.text_width),
                    ("model.text_len", m.text_len, c.text.dims.text_len),
                ] {
                    if let Some(g) = given {
                        if g.0 as usize != have {
                            return Err(TrainError::invalid(
                                key,
                                format!(
                                    "{} but the embedding store has {have}; leave it out (it \
                                     is read from the store) or use a matching store",
                                    g.0
                                ),
                            ));
                        }
                    }
                }
                c
            }
        };
        let image_size = d.image_size.0 as usize;
        let transform = ImageTransform {
            image_size: image_size as u32,
            resize_to: d.resize_to,
            crop: if d.random_crop {
                Crop::Random
            } else {
                Crop::Center
            },
            hflip_prob: d.hflip_prob.0,
        };
        transform
            .validate()
            .map_err(|why| TrainError::invalid("data", why))?;
        let stage = DecoderStage::new(m, cond.text.dims, image_size, &cfg.diffusion)?;
        let preview_shards = match (&d.val_shards, &d.shards) {
            (Some(v), _) => Some((v.clone(), Split::Val)),
            (None, Some(t)) => Some((t.clone(), Split::Train)),
            _ => None,
        };
        Ok(Self {
            stage,
            cond,
            seed: cfg.seed,
            source: d.source,
            transform,
            preview_shards,
        })
    }
}

impl TaskFactory for DecoderSpec {
    type Task<B: AutodiffBackend> = DecoderTask<B>;
    fn build<B: AutodiffBackend>(&self, device: &B::Device) -> Result<DecoderTask<B>, TrainError> {
        Ok(DecoderTask {
            clip: self.cond.load_clip::<B::InnerBackend>(device)?,
            spec: self.clone(),
            preview_batch: Mutex::new(None),
        })
    }
}

/// The decoder stage on backend `B`: the spec, the frozen CLIP of `on_the_fly`, and the
/// preview's ground-truth batch (loaded on the first preview).
pub struct DecoderTask<B: AutodiffBackend> {
    pub spec: DecoderSpec,
    clip: Option<Clip<B::InnerBackend>>,
    preview_batch: Mutex<Option<Batch>>,
}

impl<B: AutodiffBackend> DecoderTask<B> {
    /// The per-sample CFG drops of a training forward pass keyed by `key` (image, caption);
    /// none without a key.
    pub fn drops(&self, key: Option<&NoiseKey>, n: usize) -> (Vec<bool>, Vec<bool>) {
        let m = &self.spec.stage.model;
        match key {
            Some(k) => (
                TextCond::drops(k, "image_drop", m.image_cond_drop_prob.0, n),
                TextCond::drops(k, "text_drop", m.text_cond_drop_prob.0, n),
            ),
            None => (vec![false; n], vec![false; n]),
        }
    }

    fn inner_inputs(
        &self,
        model: &Decoder<B::InnerBackend>,
        batch: &Batch,
        drop_image: Vec<bool>,
        drop_text: Vec<bool>,
        device: &B::Device,
    ) -> Result<DecoderInputs<B::InnerBackend>, TrainError> {
        let text = self.spec.cond.text::<B::InnerBackend>(
            batch,
            &drop_text,
            self.clip.as_ref(),
            device,
        )?;
        let image = batch.tensor::<B::InnerBackend, 2>("image_embed", device)?;
        Ok(self
            .spec
            .stage
            .inputs(model, image, drop_image, drop_text, text)?)
    }

    /// Exactly what `model` receives for `batch` in a training step keyed by `key` (with the
    /// CFG drops) or, without a key, in evaluation (no drops).
    pub fn model_inputs(
        &self,
        model: &Decoder<B>,
        batch: &Batch,
        key: Option<&NoiseKey>,
        device: &B::Device,
    ) -> Result<DecoderInputs<B>, TrainError> {
        let (drop_image, drop_text) = self.drops(key, batch.len());
        // The caption side has no trainable parameter: computed without a graph.
        let text = self.spec.cond.text::<B::InnerBackend>(
            batch,
            &drop_text,
            self.clip.as_ref(),
            device,
        )?;
        let text = TextInputs {
            embed: Tensor::from_inner(text.embed),
            encodings: text.encodings.map(|(e, m)| {
                (
                    Tensor::from_inner(e),
                    Tensor::<B, 2, Bool>::from_data(m.into_data(), device),
                )
            }),
        };
        let image = batch.tensor::<B, 2>("image_embed", device)?;
        Ok(self
            .spec
            .stage
            .inputs(model, image, drop_image, drop_text, text)?)
    }

    fn noised<Bk: Backend>(
        &self,
        batch: &Batch,
        key: &NoiseKey,
        device: &Bk::Device,
    ) -> Result<Noised<Bk, 4>, TrainError> {
        // The loader gives images in [-1, 1] already.
        let x0 = batch.tensor::<Bk, 4>("image", device)?;
        Ok(super::noise_keyed(&self.spec.stage.diffusion, x0, key))
    }

    /// The preview's ground-truth batch: the first `count` samples of the validation stream
    /// (else the training stream) in order, through the task's own transform.
    fn preview_batch(&self, count: usize, key: &NoiseKey) -> Result<Batch, TrainError> {
        let mut cached = self.preview_batch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cached.as_ref() {
            return Ok(b.clone());
        }
        let batch = match (&self.spec.preview_shards, self.spec.source) {
            (Some((shards, split)), DataSource::Shards) => {
                super::first_samples(shards, count, self.spec.seed, self.transform(*split)?)?
            }
            _ => {
                let k = NoiseKey {
                    seed: key.seed,
                    step: 0,
                    indices: (0..count as u64).collect(),
                };
                <Self as TrainTask<B>>::random_batch(self, count, &k)
            }
        };
        *cached = Some(batch.clone());
        Ok(batch)
    }
}

impl<B: AutodiffBackend> TrainTask<B> for DecoderTask<B> {
    type Model = Decoder<B>;

    fn init_model(&self, device: &B::Device) -> Decoder<B> {
        self.spec.stage.init(device)
    }

    fn transform(&self, split: Split) -> Result<Arc<dyn SampleTransform>, TrainError> {
        self.spec
            .cond
            .transform(Arc::new(self.spec.transform.clone()), split)
    }

    fn random_batch(&self, batch_size: usize, key: &NoiseKey) -> Batch {
        let s = self.spec.stage.image_size;
        let ClipDims {
            embed_dim: d,
            text_width: w,
            text_len: l,
        } = self.spec.cond.text.dims;
        let n = batch_size;
        let mut image = vec![0f32; n * 3 * s * s];
        let mut image_embed = vec![0f32; n * d];
        let mut text_embed = vec![0f32; n * d];
        let mut enc = vec![0f32; n * l * w];
        let mut mask = vec![0f32; n * l];
        let unit = |v: &mut [f32]| {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
        };
        for row in 0..n {
            let mut rng = key.rng("random_batch", row);
            image[row * 3 * s * s..(row + 1) * 3 * s * s]
                .iter_mut()
                .for_each(|v| *v = rng.uniform_f32() * 2.0 - 1.0);
            for v in [&mut image_embed, &mut text_embed] {
                let r = &mut v[row * d..(row + 1) * d];
                rng.fill_normal_f32(r);
                unit(r);
            }
            rng.fill_normal_f32(&mut enc[row * l * w..(row + 1) * l * w]);
            let len = 2 + rng.below(l.saturating_sub(1).max(1) as u64) as usize;
            mask[row * l..(row + 1) * l]
                .iter_mut()
                .enumerate()
                .for_each(|(i, m)| *m = if i < len { 1.0 } else { 0.0 });
        }
        let field = |name: &str, shape: Vec<usize>, data: Vec<f32>| BatchField {
            name: name.into(),
            shape,
            data,
        };
        Batch {
            epoch: 0,
            keys: key.indices.iter().map(|i| format!("random-{i}")).collect(),
            captions: vec![None; n],
            indices: key.indices.clone(),
            fields: vec![
                field("image", vec![n, 3, s, s], image),
                field("image_embed", vec![n, d], image_embed),
                field("text_embed", vec![n, d], text_embed),
                field("text_encodings", vec![n, l, w], enc),
                field("text_mask", vec![n, l], mask),
            ],
        }
    }

    fn loss(
        &self,
        model: &Decoder<B>,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let inputs = self.model_inputs(model, batch, Some(key), device)?;
        let (x0, x_t, noise, idx) = self.noised::<B>(batch, key, device)?;
        let out = model.forward(x_t.clone(), &idx, &inputs, Some(key));
        let losses = self.spec.stage.diffusion.training_losses(
            &self.spec.stage.loss,
            out,
            x0,
            x_t,
            noise,
            &idx,
        );
        Ok(losses.loss.mean())
    }

    fn validation_sums(
        &self,
        model: &Decoder<B>,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<ValidationSums, TrainError> {
        let model = model.valid();
        let n = batch.len();
        let inputs = self.inner_inputs(&model, batch, vec![false; n], vec![false; n], device)?;
        let (x0, x_t, noise, idx) = self.noised::<B::InnerBackend>(batch, key, device)?;
        let out = model.forward(x_t.clone(), &idx, &inputs, None);
        Ok(super::diffusion_loss_sums(
            &self.spec.stage.diffusion,
            &self.spec.stage.loss,
            (out, x0, x_t, noise),
            &idx,
        ))
    }

    fn preview(
        &self,
        model: &Decoder<B>,
        count: usize,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Option<RgbImage>, TrainError> {
        let batch = self.preview_batch(count, key)?;
        let n = batch.len();
        let s = self.spec.stage.image_size;
        let model = model.valid();
        let cond = self.inner_inputs(&model, &batch, vec![false; n], vec![false; n], device)?;
        let uncond = self.inner_inputs(&model, &batch, vec![true; n], vec![true; n], device)?;
        let truth = batch.tensor::<B::InnerBackend, 4>("image", device)?;
        let mut columns = vec![truth];
        for scale in PREVIEW_GUIDANCE {
            columns.push(self.spec.stage.sample_images(
                &self.spec.stage.sampler,
                &model,
                &cond,
                &uncond,
                scale,
                key,
                device,
            ));
        }
        // One row per sample: ground truth, then each guidance scale.
        let cols = columns.len();
        let grid = Tensor::stack::<5>(columns, 1).reshape([n * cols, 3, s, s]);
        let pixels: Vec<f32> = super::to_vec(grid)?;
        Ok(Some(unclip_data::pixels::chw_grid(
            &pixels,
            n * cols,
            s,
            Some(cols),
        )))
    }

    fn export(
        &self,
        model: &Decoder<B>,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, TrainError> {
        Ok(self.spec.stage.export(model, meta, out, layout)?)
    }
}
