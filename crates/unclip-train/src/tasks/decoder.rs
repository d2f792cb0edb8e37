//! `stage: decoder` — the unCLIP decoder: the ADM [`UNet`] conditioned on the CLIP image
//! embedding and the caption through [`ClipConditioning`] (diffusers' `UnCLIPTextProjModel`),
//! trained as an ε-model (or with a learned variance and the hybrid loss) on images from the
//! shards joined by key with their embedding store.
//!
//! Classifier-free guidance dropout, per sample and independent, from the keyed RNG: the image
//! embedding becomes the learned null embedding with `image_cond_drop_prob` (purpose
//! `image_drop`), the caption becomes the empty caption's embedding, encodings and mask with
//! `text_cond_drop_prob` (purpose `text_drop`). [`DecoderTask::model_inputs`] returns exactly
//! what the network receives, so tests can count the drops at the model's input.
//!
//! Previews: ground truth | samples from the same embeddings and captions at guidance 1 | at
//! guidance 3 (guidance on ε, variance from the conditional branch), one row per held-out
//! sample. Export: native, or `--layout diffusers` (`unet/` = `UNet2DConditionModel`,
//! `text_proj/` = `UnCLIPTextProjModel`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use unclip_clip::Clip;
use unclip_data::transform::Crop;
use unclip_data::SampleTransform;
use unclip_data::{Batch, BatchField, ImageTransform};
use unclip_diffusion::{
    guided_model, DiffusionConfig, GaussianDiffusion, LossOptions, Sampler, VarianceType,
};
use unclip_models::{
    text_proj_to_diffusers, unet_to_diffusers, ClipCondConfig, ClipConditioning, NoiseKey, UNet,
    UNetConfig,
};

use super::Noised;
use crate::config::{AtLeastOne, DataSource, Fraction, RunConfig};
use crate::export::{ExportLayout, ExportMeta, ExportReport};
use crate::launch::TaskFactory;
use crate::tasks::cond::{ClipDims, Conditioning, TextEncodingsSource, TextInputs};
use crate::{Split, TrainError, TrainTask, ValidationSums};

/// GroupNorm groups of the UNet (ADM's 32; every level's channels must be a multiple).
pub const GROUPS: usize = 32;
/// Guidance scales of the preview columns (after the ground truth).
pub const PREVIEW_GUIDANCE: [f64; 2] = [1.0, 3.0];
/// CLIP dimensions of `data.source: random` when the model section does not give them.
pub const RANDOM_DIMS: ClipDims = ClipDims {
    embed_dim: 512,
    text_width: 512,
    text_len: 77,
};

/// The `model:` section of `stage: decoder`. Defaults: the paper's 64 px decoder (except
/// `context_dim`, see its doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecoderModelConfig {
    /// Channels of level 0 (ADM `model_channels`, diffusers `block_out_channels[0]`).
    pub model_channels: AtLeastOne,
    /// Channel multiplier of each level; level `i` works at `image_size / 2^i`.
    pub channel_mult: Vec<AtLeastOne>,
    /// ResBlocks per level on the way down (one more on the way up).
    pub num_res_blocks: AtLeastOne,
    /// Sides in pixels of the levels with attention blocks (e.g. `[32, 16, 8]` at 64 px);
    /// the middle block always has one.
    pub attention_resolutions: Vec<AtLeastOne>,
    /// Channels per attention head.
    pub head_channels: AtLeastOne,
    /// ResBlock dropout (keyed masks, training only).
    pub dropout: Fraction,
    /// Predict the variance too (6 output channels); needs `diffusion.variance: learned_range`
    /// and `diffusion.loss: hybrid`.
    pub learned_variance: bool,
    /// Width of the context tokens (image tokens + projected text encodings); default the
    /// time-embedding width `4 · model_channels`.
    pub context_dim: Option<AtLeastOne>,
    /// Context tokens made from the image embedding (4 in the paper and Karlo).
    pub extra_tokens: AtLeastOne,
    /// Probability that a sample's image embedding becomes the learned null embedding.
    pub image_cond_drop_prob: Fraction,
    /// Probability that a sample's caption becomes the empty caption (paper 0.5, Karlo 0.3).
    pub text_cond_drop_prob: Fraction,
    /// `store` or `on_the_fly` (`none` is refused: the decoder attends to the encodings).
    pub text_encodings: TextEncodingsSource,
    /// The frozen CLIP folder (HF layout) for `text_encodings: on_the_fly`.
    pub clip: Option<String>,
    /// CLIP embedding width; only with `data.source: random` (else read from the store,
    /// and a different value here is refused). Default 512.
    pub embed_dim: Option<AtLeastOne>,
    /// Width of the per-token text encodings (as `embed_dim`). Default 512.
    pub text_width: Option<AtLeastOne>,
    /// Tokens per caption (as `embed_dim`). Default 77.
    pub text_len: Option<AtLeastOne>,
    /// Factor on the CLIP image and pooled text embeddings before their projections. CLIP
    /// embeddings are unit vectors, so with a small `embed_dim` each component is tiny next to
    /// the timestep embedding; e.g. √embed_dim gives components of order 1. Default 1 (the
    /// paper, Karlo, diffusers); `--layout diffusers` export needs 1.
    pub embed_scale: f64,
}

impl Default for DecoderModelConfig {
    fn default() -> Self {
        Self {
            model_channels: AtLeastOne(512),
            channel_mult: [1, 2, 3, 4].map(AtLeastOne).to_vec(),
            num_res_blocks: AtLeastOne(3),
            attention_resolutions: [32, 16, 8].map(AtLeastOne).to_vec(),
            head_channels: AtLeastOne(64),
            dropout: Fraction(0.1),
            learned_variance: false,
            context_dim: None,
            extra_tokens: AtLeastOne(4),
            image_cond_drop_prob: Fraction(0.1),
            text_cond_drop_prob: Fraction(0.5),
            text_encodings: TextEncodingsSource::Store,
            clip: None,
            embed_dim: None,
            text_width: None,
            text_len: None,
            embed_scale: 1.0,
        }
    }
}

/// The decoder network: CLIP conditioning + UNet.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub unet: UNet<B>,
    pub cond: ClipConditioning<B>,
}

/// Exactly what the decoder network receives for a batch (after the CFG drops).
#[derive(Debug, Clone)]
pub struct DecoderInputs<B: Backend> {
    /// Rows replaced by the learned null image embedding.
    pub drop_image: Vec<bool>,
    /// Rows replaced by the empty caption.
    pub drop_text: Vec<bool>,
    /// `[N, D]`, dropped rows = the null embedding.
    pub image_embed: Tensor<B, 2>,
    /// Pooled text embedding `[N, D]`, dropped rows = the empty caption's.
    pub text_embed: Tensor<B, 2>,
    /// `[N, L, W]`, dropped rows = the empty caption's encodings.
    pub text_encodings: Tensor<B, 3>,
    /// `[N, L]` (true = real token), dropped rows = the empty caption's mask.
    pub text_mask: Tensor<B, 2, Bool>,
}

impl<B: Backend> DecoderInputs<B> {
    /// `self` rows followed by `other` rows (the doubled batch of guidance).
    pub fn cat(&self, other: &Self) -> Self {
        let flags = |a: &[bool], b: &[bool]| a.iter().chain(b).copied().collect();
        Self {
            drop_image: flags(&self.drop_image, &other.drop_image),
            drop_text: flags(&self.drop_text, &other.drop_text),
            image_embed: Tensor::cat(vec![self.image_embed.clone(), other.image_embed.clone()], 0),
            text_embed: Tensor::cat(vec![self.text_embed.clone(), other.text_embed.clone()], 0),
            text_encodings: Tensor::cat(
                vec![self.text_encodings.clone(), other.text_encodings.clone()],
                0,
            ),
            text_mask: Tensor::cat(vec![self.text_mask.clone(), other.text_mask.clone()], 0),
        }
    }
}

impl<B: Backend> Decoder<B> {
    /// The network output for `x_t` at (un-respaced) timesteps `t`; dropout only with `key`.
    pub fn forward(
        &self,
        x_t: Tensor<B, 4>,
        t: &[usize],
        inputs: &DecoderInputs<B>,
        key: Option<&NoiseKey>,
    ) -> Tensor<B, 4> {
        let (emb, context, mask) = self.cond.forward(
            inputs.image_embed.clone(),
            &[],
            inputs.text_embed.clone(),
            inputs.text_encodings.clone(),
            inputs.text_mask.clone(),
        );
        let t: Vec<f64> = t.iter().map(|&s| s as f64).collect();
        self.unet
            .forward(x_t, &t, Some(emb), Some(context), Some(mask), key)
    }
}

/// Rows flagged in `drop` of `image` replaced by `null` `[D]`.
fn with_null<B: Backend>(image: Tensor<B, 2>, null: Tensor<B, 1>, drop: &[bool]) -> Tensor<B, 2> {
    if !drop.iter().any(|&d| d) {
        return image;
    }
    let [n, d] = image.dims();
    let device = image.device();
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(drop.to_vec(), [n, 1]), &device)
        .expand([n, d]);
    image.mask_where(mask, null.reshape([1, d]).expand([n, d]))
}

fn assemble<B: Backend>(
    null: Tensor<B, 1>,
    image_embed: Tensor<B, 2>,
    drop_image: Vec<bool>,
    drop_text: Vec<bool>,
    text: TextInputs<B>,
    scale: f64,
) -> Result<DecoderInputs<B>, TrainError> {
    let (text_encodings, text_mask) = text
        .encodings
        .ok_or_else(|| TrainError::Task("the decoder needs per-token text encodings".into()))?;
    let (image_embed, text_embed) = if scale == 1.0 {
        (with_null(image_embed, null, &drop_image), text.embed)
    } else {
        (
            with_null(image_embed, null, &drop_image) * scale,
            text.embed * scale,
        )
    };
    Ok(DecoderInputs {
        image_embed,
        drop_image,
        drop_text,
        text_embed,
        text_encodings,
        text_mask,
    })
}

/// The decoder stage's configuration, validated; the [`TaskFactory`] of `stage: decoder`.
#[derive(Clone)]
pub struct DecoderSpec {
    pub model: DecoderModelConfig,
    pub unet: UNetConfig,
    pub cond_config: ClipCondConfig,
    pub image_size: usize,
    pub cond: Conditioning,
    seed: u64,
    source: DataSource,
    transform: ImageTransform,
    diffusion: GaussianDiffusion,
    sampler: Sampler,
    loss: LossOptions,
    variance: VarianceType,
    diffusion_config: DiffusionConfig,
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
        if m.text_encodings == TextEncodingsSource::None {
            return Err(TrainError::invalid(
                "model.text_encodings",
                "the decoder attends to the caption's per-token encodings: use `store` or \
                 `on_the_fly`",
            ));
        }
        if !(m.embed_scale.is_finite() && m.embed_scale > 0.0) {
            return Err(TrainError::invalid(
                "model.embed_scale",
                format!("must be a finite number > 0, got {}", m.embed_scale),
            ));
        }
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
                    ("model.embed_dim", m.embed_dim, c.dims.embed_dim),
                    ("model.text_width", m.text_width, c.dims.text_width),
                    ("model.text_len", m.text_len, c.dims.text_len),
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
        let levels = m.channel_mult.len();
        if levels == 0 {
            return Err(TrainError::invalid("model.channel_mult", "is empty"));
        }
        if levels > 16 || !image_size.is_multiple_of(1 << (levels - 1)) {
            return Err(TrainError::invalid(
                "model.channel_mult",
                format!(
                    "{levels} levels halve the image {} times, but data.image_size {image_size} \
                     is not divisible by {}",
                    levels - 1,
                    1u64 << (levels - 1).min(63)
                ),
            ));
        }
        let sides: Vec<usize> = (0..levels).map(|l| image_size >> l).collect();
        let mut attention_levels = vec![false; levels];
        for r in &m.attention_resolutions {
            let l = sides.iter().position(|&s| s as u64 == r.0).ok_or_else(|| {
                TrainError::invalid(
                    "model.attention_resolutions",
                    format!(
                        "{} px is not the side of a level (the levels are {sides:?} px)",
                        r.0
                    ),
                )
            })?;
            attention_levels[l] = true;
        }
        let out_channels = if m.learned_variance { 6 } else { 3 };
        let learned = cfg.diffusion.variance == VarianceType::LearnedRange;
        if m.learned_variance != learned {
            return Err(TrainError::invalid(
                "model.learned_variance",
                if m.learned_variance {
                    "true needs `diffusion.variance: learned_range` and `diffusion.loss: hybrid`"
                } else {
                    "false, but `diffusion.variance: learned_range` needs the variance channels: \
                     set `model.learned_variance: true`"
                },
            ));
        }
        let mc = m.model_channels.0 as usize;
        let context_dim = dim_of(m.context_dim, 4 * mc);
        let unet = UNetConfig {
            in_channels: 3,
            out_channels,
            model_channels: mc,
            channel_mult: m.channel_mult.iter().map(|c| c.0 as usize).collect(),
            num_res_blocks: m.num_res_blocks.0 as usize,
            attention_levels,
            head_channels: m.head_channels.0 as usize,
            dropout: m.dropout.0,
            groups: GROUPS,
            context_dim: Some(context_dim),
            class_embed: true,
            mid_attention: true,
            scale_shift: true,
            sample_size: Some(image_size),
        };
        unet.validate()
            .map_err(|why| TrainError::invalid("model", why))?;
        let cond_config = ClipCondConfig {
            clip_dim: cond.dims.embed_dim,
            text_width: cond.dims.text_width,
            time_embed_dim: unet.time_embed_dim(),
            context_dim,
            extra_tokens: m.extra_tokens.0 as usize,
        };
        let preview_shards = match (&d.val_shards, &d.shards) {
            (Some(v), _) => Some((v.clone(), Split::Val)),
            (None, Some(t)) => Some((t.clone(), Split::Train)),
            _ => None,
        };
        Ok(Self {
            model: m.clone(),
            unet,
            cond_config,
            image_size,
            cond,
            seed: cfg.seed,
            source: d.source,
            transform,
            diffusion: cfg.diffusion.diffusion()?,
            sampler: cfg.diffusion.sampler()?,
            loss: cfg.diffusion.loss_options(),
            variance: cfg.diffusion.variance,
            diffusion_config: cfg.diffusion.clone(),
            preview_shards,
        })
    }
}

impl DecoderSpec {
    /// The stage's `diffusion:` section.
    pub fn diffusion_config(&self) -> &DiffusionConfig {
        &self.diffusion_config
    }

    /// Samples `[N, 3, S, S]` images in [-1, 1] with `sampler` for `cond`, classifier-free guidance
    /// `scale` against `uncond` (rows of the same batch with the image embedding and caption
    /// dropped; not evaluated at scale 1), guidance on ε with the variance of the conditional
    /// branch. The start noise and every step's noise come from `(key.seed, key.step)`.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_images<B: Backend>(
        &self,
        sampler: &Sampler,
        model: &Decoder<B>,
        cond: &DecoderInputs<B>,
        uncond: &DecoderInputs<B>,
        scale: f64,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Tensor<B, 4> {
        let none = &mut || {};
        self.sample_images_with(sampler, model, cond, uncond, scale, key, device, none)
    }

    /// [`Self::sample_images`], calling `on_step` after every sampler step (progress bars).
    #[allow(clippy::too_many_arguments)]
    pub fn sample_images_with<B: Backend>(
        &self,
        sampler: &Sampler,
        model: &Decoder<B>,
        cond: &DecoderInputs<B>,
        uncond: &DecoderInputs<B>,
        scale: f64,
        key: &NoiseKey,
        device: &B::Device,
        on_step: &mut dyn FnMut(),
    ) -> Tensor<B, 4> {
        let n = cond.image_embed.dims()[0];
        let s = self.image_size;
        let shape = [n, 3, s, s];
        let normal = |purpose: &str, step: u64| {
            super::keyed_normal::<B, 4>(key.seed, purpose, step, shape, device)
        };
        let noise = |step: usize| normal("preview_step", key.step.wrapping_add(step as u64 + 1));
        let start = normal("preview_start", key.step);
        if scale == 1.0 {
            let net = |x, t: &[usize]| model.forward(x, t, cond, None);
            return sampler.sample(start, net, noise, |_| on_step());
        }
        let both = cond.cat(uncond);
        sampler.sample(
            start,
            guided_model(
                |x, t: &[usize]| model.forward(x, t, &both, None),
                scale,
                self.variance,
            ),
            noise,
            |_| on_step(),
        )
    }
}

impl DecoderSpec {
    /// The network inputs of CLIP image embeddings `image_embed` `[N, D]` and captions `text`
    /// (embedding + per-token encodings), rows flagged in `drop_image` replaced by `model`'s
    /// learned null embedding (the caller replaces dropped captions in `text`), scaled by
    /// `model.embed_scale`.
    pub fn inputs<B: Backend>(
        &self,
        model: &Decoder<B>,
        image_embed: Tensor<B, 2>,
        drop_image: Vec<bool>,
        drop_text: Vec<bool>,
        text: TextInputs<B>,
    ) -> Result<DecoderInputs<B>, TrainError> {
        assemble(
            model.cond.null_image_embed.val(),
            image_embed,
            drop_image,
            drop_text,
            text,
            self.model.embed_scale,
        )
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
        let m = &self.spec.model;
        match key {
            Some(k) => (
                Conditioning::drops(k, "image_drop", m.image_cond_drop_prob.0, n),
                Conditioning::drops(k, "text_drop", m.text_cond_drop_prob.0, n),
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
        assemble(
            model.cond.null_image_embed.val(),
            image,
            drop_image,
            drop_text,
            text,
            self.spec.model.embed_scale,
        )
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
        assemble(
            model.cond.null_image_embed.val(),
            image,
            drop_image,
            drop_text,
            text,
            self.spec.model.embed_scale,
        )
    }

    fn noised<Bk: Backend>(
        &self,
        batch: &Batch,
        key: &NoiseKey,
        device: &Bk::Device,
    ) -> Result<Noised<Bk, 4>, TrainError> {
        // The loader gives images in [-1, 1] already.
        let x0 = batch.tensor::<Bk, 4>("image", device)?;
        Ok(super::noise_keyed(&self.spec.diffusion, x0, key))
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

    fn export_diffusers(
        &self,
        model: &Decoder<B>,
        meta: &ExportMeta,
        out: &Path,
    ) -> Result<ExportReport, TrainError> {
        if self.spec.model.embed_scale != 1.0 {
            return Err(TrainError::invalid(
                "--layout diffusers",
                format!(
                    "model.embed_scale is {}; diffusers' UnCLIPTextProjModel has no such factor \
                     (export with --layout native)",
                    self.spec.model.embed_scale
                ),
            ));
        }
        let unet = unet_to_diffusers(&model.unet, &self.spec.unet)
            .map_err(|e| TrainError::invalid("--layout diffusers", e))?;
        let text_proj = text_proj_to_diffusers(&model.cond, &self.spec.cond_config)
            .map_err(|e| TrainError::invalid("--layout diffusers", e))?;
        let mut reports = Vec::new();
        for (sub, (config, weights)) in [("unet", unet), ("text_proj", text_proj)] {
            let dir = out.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| TrainError::io("cannot create", &dir, e))?;
            reports.push(crate::export::write_diffusers(
                &dir,
                &config,
                weights.into_iter().collect(),
                meta,
            )?);
        }
        let tensors = reports.iter().map(|r| r.tensors).sum();
        let first = reports.swap_remove(0);
        Ok(ExportReport { tensors, ..first })
    }
}

impl<B: AutodiffBackend> TrainTask<B> for DecoderTask<B> {
    type Model = Decoder<B>;

    fn init_model(&self, device: &B::Device) -> Decoder<B> {
        Decoder {
            unet: self.spec.unet.init(device),
            cond: self.spec.cond_config.init(device),
        }
    }

    fn transform(&self, split: Split) -> Result<Arc<dyn SampleTransform>, TrainError> {
        self.spec
            .cond
            .transform(Arc::new(self.spec.transform.clone()), split)
    }

    fn random_batch(&self, batch_size: usize, key: &NoiseKey) -> Batch {
        let s = self.spec.image_size;
        let ClipDims {
            embed_dim: d,
            text_width: w,
            text_len: l,
        } = self.spec.cond.dims;
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
        let losses =
            self.spec
                .diffusion
                .training_losses(&self.spec.loss, out, x0, x_t, noise, &idx);
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
            &self.spec.diffusion,
            &self.spec.loss,
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
        let s = self.spec.image_size;
        let model = model.valid();
        let cond = self.inner_inputs(&model, &batch, vec![false; n], vec![false; n], device)?;
        let uncond = self.inner_inputs(&model, &batch, vec![true; n], vec![true; n], device)?;
        let truth = batch.tensor::<B::InnerBackend, 4>("image", device)?;
        let mut columns = vec![truth];
        for scale in PREVIEW_GUIDANCE {
            columns.push(self.spec.sample_images(
                &self.spec.sampler,
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
        Ok(Some(crate::plot::image_grid_with_columns(
            &pixels,
            n * cols,
            s,
            cols,
        )))
    }

    fn export(
        &self,
        model: &Decoder<B>,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, TrainError> {
        let mut meta = meta.clone();
        self.spec.cond.dims.record(&mut meta.model);
        let meta = &meta;
        match layout {
            ExportLayout::Native => crate::export::write_native::<B, _>(model, meta, out),
            ExportLayout::Diffusers => self.export_diffusers(model, meta, out),
        }
    }
}
