//! `stage: upsampler` — the unCLIP super-resolution diffusion models (64→256, 256→1024): the
//! ADM [`UNet`] without attention or context, fed `x_t` concatenated with the corrupted
//! low-resolution image upsampled to the target size (6 input channels), trained as an
//! ε-model on random crops of the target.
//!
//! The low-resolution conditioning is made in the loader's workers by [`UpsamplerTransform`]
//! (see [`degrade`]): the target image (`data.image_size`, through the standard transform),
//! in training a random crop of `model.crop_fraction` of its side (aligned to the low-res
//! pixel grid), downsampled to the low resolution and corrupted (`model.degradation`), then
//! upsampled back — fields `image`, `low_res` (both `[3, S, S]`) and `low_res_small`
//! (`[3, s, s]`, for previews). Validation and previews run at full size.
//!
//! Optional Imagen-style noise augmentation (`model.noise_aug`), applied by the task on the
//! model's input: the low-res image is noised with the diffusion's own `q_sample` at an
//! augmentation timestep drawn per sample in training (fixed at validation and sampling), and
//! the network receives that timestep through a second timestep MLP added to its time
//! embedding (the UNet's `class_embed` path; diffusers' `class_embed_type = "timestep"`).
//!
//! Previews: one row per held-out image — low-res (nearest) | bicubic | sample | ground
//! truth, sampled with `diffusion.sampling` (e.g. `ddim` with `respacing: ddim27`). Export:
//! native, or `--layout diffusers` (`unet/` = `UNet2DModel`).

pub mod degrade;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use unclip_data::transform::{to_chw_unit, Crop, DecodedSample, SampleContext};
use unclip_data::transform::{Example, Field, TransformError};
use unclip_data::SampleTransform;
use unclip_data::{Batch, BatchField, ImageTransform};
use unclip_diffusion::{DiffusionConfig, GaussianDiffusion, LossOptions, Sampler, VarianceType};
use unclip_models::{
    unet_from_diffusers, unet_to_diffusers, NoiseKey, TimestepMlp, TimestepMlpConfig, UNet,
    UNetConfig,
};

use self::degrade::{DegradationConfig, LowRes, ResizeMode};
use super::{image_metrics, to_vec};
use crate::config::{AtLeastOne, DataSource, Fraction, RunConfig};
use crate::export::{ExportLayout, ExportMeta, ExportReport};
use crate::launch::TaskFactory;
use crate::{Split, TrainError, TrainTask, ValidationSums};

/// GroupNorm groups of the UNet (ADM's 32).
pub const GROUPS: usize = 32;

/// `model.noise_aug`: Imagen-style noise augmentation of the low-res conditioning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NoiseAugConfig {
    pub enabled: bool,
    /// Training: the augmentation level of each sample is uniform in `[0, max_level]`, a
    /// fraction of the diffusion's T (timestep `round(level · (T − 1))`). Default 0.5.
    pub max_level: f64,
    /// The fixed level of validation and sampling. Default 0.1.
    pub sample_level: f64,
}

impl Default for NoiseAugConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_level: 0.5,
            sample_level: 0.1,
        }
    }
}

/// The `model:` section of `stage: upsampler`. Defaults: the paper's 64→256 upsampler
/// (with `data.image_size: 256`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpsamplerModelConfig {
    /// Channels of level 0 (ADM `model_channels`).
    pub model_channels: AtLeastOne,
    /// Channel multiplier of each level.
    pub channel_mult: Vec<AtLeastOne>,
    /// ResBlocks per level on the way down (one more on the way up).
    pub num_res_blocks: AtLeastOne,
    /// ResBlock dropout (keyed masks, training only).
    pub dropout: Fraction,
    /// ADM `use_scale_shift_norm` (GLIDE's upsampler: true; Karlo's: false).
    pub scale_shift: bool,
    /// Side of the low-resolution input; `data.image_size` (the target side) must be an
    /// integer multiple.
    pub low_res_size: AtLeastOne,
    /// Side of the training crops as a fraction of the target side, in (0, 1]; rounded down
    /// to a multiple of the upsampling factor and of the UNet's total downsampling.
    pub crop_fraction: f64,
    /// The antialiased downsample to the low resolution (`degradation.kind: none | blur`).
    pub downsample: ResizeMode,
    /// The upsample of the corrupted low-res image back to the target size.
    pub upsample: ResizeMode,
    pub degradation: DegradationConfig,
    pub noise_aug: NoiseAugConfig,
    /// Diffuse the residual `image − low_res` (the target minus its upsampled low-res
    /// conditioning) instead of the image; sampling adds `low_res` back. With
    /// `diffusion.parameterization: x0` the untrained network (zero output layer) returns the
    /// upsampled low-res image itself, so training starts from bicubic instead of from noise.
    /// Not part of the paper (nor loadable by diffusers' `UNet2DModel` pipelines: the diffusers
    /// export refuses it). Default false.
    pub residual: bool,
    /// Validation also samples every held-out image with `diffusion.sampling` and reports
    /// `psnr_sample` and the edge energies (sampler steps × validation batches of extra
    /// forward passes; off by default).
    pub sample_metrics: bool,
}

impl Default for UpsamplerModelConfig {
    fn default() -> Self {
        Self {
            model_channels: AtLeastOne(320),
            channel_mult: [1, 2, 3, 4].map(AtLeastOne).to_vec(),
            num_res_blocks: AtLeastOne(3),
            dropout: Fraction(0.1),
            scale_shift: true,
            low_res_size: AtLeastOne(64),
            crop_fraction: 0.25,
            downsample: ResizeMode::Bicubic,
            upsample: ResizeMode::Bicubic,
            degradation: DegradationConfig::default(),
            noise_aug: NoiseAugConfig::default(),
            residual: false,
            sample_metrics: false,
        }
    }
}

/// The per-sample transform: target crop, corrupted low-res copy, both at the crop's size.
#[derive(Debug, Clone)]
pub struct UpsamplerTransform {
    /// The standard transform to the full target size.
    pub base: ImageTransform,
    pub low_res: LowRes,
    /// Target side / low-res side.
    pub factor: u32,
    /// Side of the crop (the full target side for validation).
    pub crop: u32,
}

impl UpsamplerTransform {
    /// (target crop, corrupted low-res, low-res upsampled to the crop) of a decoded image.
    pub fn apply_rgb(
        &self,
        img: &RgbImage,
        ctx: &SampleContext,
    ) -> Result<(RgbImage, RgbImage, RgbImage), String> {
        let full = self.base.apply_rgb(img, &mut ctx.rng("image_transform"))?;
        let s = self.base.image_size;
        let target = if self.crop < s {
            let mut rng = ctx.rng("upsampler_crop");
            let cells = ((s - self.crop) / self.factor + 1) as u64;
            let x = rng.below(cells) as u32 * self.factor;
            let y = rng.below(cells) as u32 * self.factor;
            image::imageops::crop_imm(&full, x, y, self.crop, self.crop).to_image()
        } else {
            full
        };
        let small =
            self.low_res
                .degrade(&target, self.crop / self.factor, &mut ctx.rng("degrade"))?;
        let up = self.low_res.upsample(&small, self.crop)?;
        Ok((target, small, up))
    }
}

impl SampleTransform for UpsamplerTransform {
    fn apply(&self, sample: DecodedSample, ctx: SampleContext) -> Result<Example, TransformError> {
        let img = sample.decode()?;
        let (target, small, up) =
            self.apply_rgb(&img, &ctx)
                .map_err(|detail| TransformError::Other {
                    reason: "transform_error",
                    detail,
                })?;
        let field = |name: &str, img: &RgbImage| {
            let (w, h) = img.dimensions();
            let mut data = Vec::with_capacity((3 * w * h) as usize);
            to_chw_unit(img, &mut data);
            Field {
                name: name.into(),
                shape: vec![3, h as usize, w as usize],
                data,
            }
        };
        Ok(Example {
            key: sample.key,
            caption: sample.caption,
            index: ctx.index,
            fields: vec![
                field("image", &target),
                field("low_res", &up),
                field("low_res_small", &small),
            ],
        })
    }
}

/// The upsampler network: the UNet and, with noise augmentation, the MLP of the
/// augmentation timestep.
#[derive(Module, Debug)]
pub struct Upsampler<B: Backend> {
    pub unet: UNet<B>,
    pub noise_level_embed: Option<TimestepMlp<B>>,
}

impl<B: Backend> Upsampler<B> {
    /// The network output for `x_t` `[N, 3, H, W]` at (un-respaced) timesteps `t`,
    /// conditioned on `low_res` `[N, 3, H, W]` (already noise-augmented) and its augmentation
    /// timesteps `aug_t` (ignored without noise augmentation); dropout only with `key`.
    pub fn forward(
        &self,
        x_t: Tensor<B, 4>,
        low_res: Tensor<B, 4>,
        t: &[usize],
        aug_t: Option<&[usize]>,
        key: Option<&NoiseKey>,
    ) -> Tensor<B, 4> {
        let device = x_t.device();
        let emb = match (&self.noise_level_embed, aug_t) {
            (Some(mlp), Some(a)) => {
                let a: Vec<f64> = a.iter().map(|&s| s as f64).collect();
                Some(mlp.forward(&a, &device))
            }
            _ => None,
        };
        let t: Vec<f64> = t.iter().map(|&s| s as f64).collect();
        let x = Tensor::cat(vec![x_t, low_res], 1);
        self.unet.forward(x, &t, emb, None, None, key)
    }
}

/// The upsampler stage's configuration, validated; the [`TaskFactory`] of `stage: upsampler`.
#[derive(Clone)]
pub struct UpsamplerSpec {
    pub model: UpsamplerModelConfig,
    pub unet: UNetConfig,
    /// Target side S.
    pub image_size: usize,
    /// Low-res side s.
    pub low_res_size: usize,
    /// Training crop side.
    pub crop_size: usize,
    /// The training transform (crops); validation uses it with `crop = image_size`.
    pub transform: UpsamplerTransform,
    seed: u64,
    source: DataSource,
    diffusion: GaussianDiffusion,
    sampler: Sampler,
    loss: LossOptions,
    diffusion_config: DiffusionConfig,
    preview_shards: Option<String>,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl UpsamplerSpec {
    pub fn new(cfg: &RunConfig<UpsamplerModelConfig>) -> Result<Self, TrainError> {
        let m = &cfg.model;
        let d = &cfg.data;
        let s = d.image_size.0 as usize;
        let l = m.low_res_size.0 as usize;
        if l >= s || !s.is_multiple_of(l) {
            return Err(TrainError::invalid(
                "model.low_res_size",
                format!(
                    "{l} must be smaller than data.image_size ({s}) and divide it (the \
                     upsampling factor is an integer)"
                ),
            ));
        }
        let factor = s / l;
        let levels = m.channel_mult.len();
        if levels == 0 {
            return Err(TrainError::invalid("model.channel_mult", "is empty"));
        }
        if levels > 16 || !s.is_multiple_of(1 << (levels - 1)) {
            return Err(TrainError::invalid(
                "model.channel_mult",
                format!(
                    "{levels} levels halve the image {} times, but data.image_size {s} is not \
                     divisible by {}",
                    levels - 1,
                    1u64 << (levels - 1).min(63)
                ),
            ));
        }
        let f = m.crop_fraction;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return Err(TrainError::invalid(
                "model.crop_fraction",
                format!("must be in (0, 1], got {f}"),
            ));
        }
        let down = 1usize << (levels - 1);
        let unit = factor / gcd(factor, down) * down;
        let crop_size = ((s as f64 * f).round() as usize / unit) * unit;
        if crop_size == 0 {
            return Err(TrainError::invalid(
                "model.crop_fraction",
                format!(
                    "{f} of {s} px is smaller than {unit} px, the least common multiple of the \
                     upsampling factor ({factor}) and the UNet's downsampling ({down})"
                ),
            ));
        }
        let na = &m.noise_aug;
        for (k, v) in [
            ("model.noise_aug.max_level", na.max_level),
            ("model.noise_aug.sample_level", na.sample_level),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(TrainError::invalid(
                    k,
                    format!("must be in [0, 1], got {v}"),
                ));
            }
        }
        if cfg.diffusion.variance == VarianceType::LearnedRange {
            return Err(TrainError::invalid(
                "diffusion.variance",
                "the upsampler predicts no variance: use `fixed_small` or `fixed_large` \
                 (with `loss: mse`)",
            ));
        }
        let low_res = LowRes {
            downsample: m.downsample,
            upsample: m.upsample,
            degradation: m.degradation.clone(),
        };
        low_res
            .validate()
            .map_err(|(k, why)| TrainError::invalid(format!("model.degradation.{k}"), why))?;
        let base = ImageTransform {
            image_size: s as u32,
            resize_to: d.resize_to,
            crop: if d.random_crop {
                Crop::Random
            } else {
                Crop::Center
            },
            hflip_prob: d.hflip_prob.0,
        };
        base.validate()
            .map_err(|why| TrainError::invalid("data", why))?;
        let unet = UNetConfig {
            in_channels: 6,
            out_channels: 3,
            model_channels: m.model_channels.0 as usize,
            channel_mult: m.channel_mult.iter().map(|c| c.0 as usize).collect(),
            num_res_blocks: m.num_res_blocks.0 as usize,
            attention_levels: vec![false; levels],
            head_channels: 64,
            dropout: m.dropout.0,
            groups: GROUPS,
            context_dim: None,
            class_embed: na.enabled,
            mid_attention: false,
            scale_shift: m.scale_shift,
            sample_size: Some(s),
        };
        unet.validate()
            .map_err(|why| TrainError::invalid("model", why))?;
        Ok(Self {
            model: m.clone(),
            unet,
            image_size: s,
            low_res_size: l,
            crop_size,
            transform: UpsamplerTransform {
                base,
                low_res,
                factor: factor as u32,
                crop: crop_size as u32,
            },
            seed: cfg.seed,
            source: d.source,
            diffusion: cfg.diffusion.diffusion()?,
            sampler: cfg.diffusion.sampler()?,
            loss: cfg.diffusion.loss_options(),
            diffusion_config: cfg.diffusion.clone(),
            preview_shards: d.val_shards.clone().or_else(|| d.shards.clone()),
        })
    }

    /// The transform of `split`: training crops, full-size validation.
    pub fn transform_for(&self, split: Split) -> UpsamplerTransform {
        let mut t = self.transform.clone();
        if split == Split::Val {
            t.crop = self.image_size as u32;
        }
        t
    }
}

impl UpsamplerSpec {
    /// What the diffusion models for target `image` given its upsampled low-res `low` (both
    /// `[N, 3, S, S]`): the image, or with `model.residual` the residual `image − low`.
    pub fn to_diffusion_space<Bk: Backend>(
        &self,
        image: Tensor<Bk, 4>,
        low: Tensor<Bk, 4>,
    ) -> Tensor<Bk, 4> {
        if self.model.residual {
            image - low
        } else {
            image
        }
    }

    /// The inverse of [`Self::to_diffusion_space`]: with `model.residual`, `x + low` clamped
    /// to [-1, 1].
    pub fn from_diffusion_space<Bk: Backend>(
        &self,
        x: Tensor<Bk, 4>,
        low: Tensor<Bk, 4>,
    ) -> Tensor<Bk, 4> {
        if self.model.residual {
            (x + low).clamp(-1.0, 1.0)
        } else {
            x
        }
    }

    /// The stage's `diffusion:` section.
    pub fn diffusion_config(&self) -> &DiffusionConfig {
        &self.diffusion_config
    }

    /// The network's conditioning from `low` (`[N, 3, S, S]`, the low-res images upsampled to
    /// the target side), noise-augmented when enabled — in training (`train`) at a level
    /// drawn per sample from `key` (`noise_aug_level`), else at `sample_level`; the noise from
    /// `key` (`noise_aug`). Returns the augmentation timesteps with the augmentation.
    pub fn augment<Bk: Backend>(
        &self,
        low: Tensor<Bk, 4>,
        key: &NoiseKey,
        train: bool,
    ) -> (Tensor<Bk, 4>, Option<Vec<usize>>) {
        let na = &self.model.noise_aug;
        if !na.enabled {
            return (low, None);
        }
        let dims = low.dims();
        let per_row: usize = dims[1..].iter().product();
        let last = (self.diffusion.schedule().len() - 1) as f64;
        let mut t = Vec::with_capacity(dims[0]);
        let mut noise = vec![0f32; dims[0] * per_row];
        for (row, chunk) in noise.chunks_mut(per_row).enumerate() {
            let level = if train {
                key.rng("noise_aug_level", row).uniform_f64() * na.max_level
            } else {
                na.sample_level
            };
            t.push((level * last).round() as usize);
            key.rng("noise_aug", row).fill_normal_f32(chunk);
        }
        let noise = Tensor::<Bk, 4>::from_data(TensorData::new(noise, dims), &low.device());
        let low = self.diffusion.q_sample(low, &t, noise);
        (low, Some(t))
    }

    /// Samples `[N, 3, S, S]` in [-1, 1] with `sampler` conditioned on `low` (the low-res
    /// images upsampled to the target side, before augmentation); the start noise and every
    /// step's noise from `(key.seed, key.step)`, the augmentation noise per row of `key`.
    pub fn sample_images<Bk: Backend>(
        &self,
        sampler: &Sampler,
        model: &Upsampler<Bk>,
        low: Tensor<Bk, 4>,
        key: &NoiseKey,
    ) -> Tensor<Bk, 4> {
        self.sample_images_with(sampler, model, low, key, &mut || {})
    }

    /// [`Self::sample_images`], calling `on_step` after every sampler step (progress bars).
    pub fn sample_images_with<Bk: Backend>(
        &self,
        sampler: &Sampler,
        model: &Upsampler<Bk>,
        low: Tensor<Bk, 4>,
        key: &NoiseKey,
        on_step: &mut dyn FnMut(),
    ) -> Tensor<Bk, 4> {
        let device = low.device();
        let (cond, aug_t) = self.augment(low.clone(), key, false);
        let shape = cond.dims();
        let normal = |purpose: &str, step: u64| {
            super::keyed_normal::<Bk, 4>(key.seed, purpose, step, shape, &device)
        };
        let x = sampler.sample(
            normal("preview_start", key.step),
            |x, t| model.forward(x, cond.clone(), t, aug_t.as_deref(), None),
            |step| normal("preview_step", key.step.wrapping_add(step as u64 + 1)),
            |_| on_step(),
        );
        self.from_diffusion_space(x, low)
    }

    /// `images` (`[N, 3, s, s]` in [-1, 1], the low-res side) as the network's conditioning
    /// input: quantised to 8 bits and upsampled to the target side as in training.
    pub fn upsample_low_res<Bk: Backend>(
        &self,
        images: Tensor<Bk, 4>,
    ) -> Result<Tensor<Bk, 4>, TrainError> {
        let [n, c, h, w] = images.dims();
        let device = images.device();
        if c != 3 || h != self.low_res_size || w != self.low_res_size {
            return Err(TrainError::Task(format!(
                "the upsampler takes [N, 3, {l}, {l}] images, got [{n}, {c}, {h}, {w}]",
                l = self.low_res_size
            )));
        }
        let pixels = to_vec(images)?;
        let s = self.image_size;
        let mut out = Vec::with_capacity(n * 3 * s * s);
        for img in pixels.chunks_exact(3 * h * w) {
            let rgb = crate::plot::chw_to_rgb(img, w, h);
            let up = self
                .transform
                .low_res
                .upsample(&rgb, s as u32)
                .map_err(TrainError::Task)?;
            to_chw_unit(&up, &mut out);
        }
        Ok(Tensor::from_data(
            TensorData::new(out, [n, 3, s, s]),
            &device,
        ))
    }
}

impl TaskFactory for UpsamplerSpec {
    type Task<B: AutodiffBackend> = UpsamplerTask;
    fn build<B: AutodiffBackend>(&self, _: &B::Device) -> Result<UpsamplerTask, TrainError> {
        Ok(UpsamplerTask {
            spec: self.clone(),
            preview_batch: Mutex::new(None),
        })
    }
}

/// The upsampler stage: the spec and the preview's batch (loaded on the first preview).
pub struct UpsamplerTask {
    pub spec: UpsamplerSpec,
    preview_batch: Mutex<Option<Batch>>,
}

impl UpsamplerTask {
    /// The diffusion's inputs for `batch`: x0 (the `image` field in diffusion space, see
    /// [`UpsamplerSpec::to_diffusion_space`]), the `low_res` field, and the network's
    /// conditioning — `low_res` noise-augmented when enabled, in training (`train`) at a level
    /// drawn per sample from `key` (`noise_aug_level`), else at `sample_level`; the noise from
    /// `key` (`noise_aug`) — with the augmentation timesteps.
    #[allow(clippy::type_complexity)]
    pub fn inputs<Bk: Backend>(
        &self,
        batch: &Batch,
        key: &NoiseKey,
        train: bool,
        device: &Bk::Device,
    ) -> Result<
        (
            Tensor<Bk, 4>,
            Tensor<Bk, 4>,
            Tensor<Bk, 4>,
            Option<Vec<usize>>,
        ),
        TrainError,
    > {
        let image = batch.tensor::<Bk, 4>("image", device)?;
        let low = batch.tensor::<Bk, 4>("low_res", device)?;
        let x0 = self.spec.to_diffusion_space(image, low.clone());
        let (cond, aug_t) = self.spec.augment(low.clone(), key, train);
        Ok((x0, low, cond, aug_t))
    }

    fn random_batch_sized(&self, n: usize, key: &NoiseKey, side: usize) -> Batch {
        let small = side / (self.spec.image_size / self.spec.low_res_size);
        let mut fields = Vec::new();
        for (name, sz) in [("image", side), ("low_res", side), ("low_res_small", small)] {
            let mut data = vec![0f32; n * 3 * sz * sz];
            for (row, chunk) in data.chunks_mut(3 * sz * sz).enumerate() {
                let mut rng = key.rng(&format!("random_batch.{name}"), row);
                chunk
                    .iter_mut()
                    .for_each(|v| *v = rng.uniform_f32() * 2.0 - 1.0);
            }
            fields.push(BatchField {
                name: name.into(),
                shape: vec![n, 3, sz, sz],
                data,
            });
        }
        Batch {
            epoch: 0,
            keys: key.indices.iter().map(|i| format!("random-{i}")).collect(),
            captions: vec![None; n],
            indices: key.indices.clone(),
            fields,
        }
    }

    /// The preview's batch: the first `count` samples of the validation stream (else the
    /// training stream) in order, at full size.
    fn preview_batch(&self, count: usize, key: &NoiseKey) -> Result<Batch, TrainError> {
        let mut cached = self.preview_batch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cached.as_ref() {
            return Ok(b.clone());
        }
        let batch = match (&self.spec.preview_shards, self.spec.source) {
            (Some(shards), DataSource::Shards) => {
                let t = Arc::new(self.spec.transform_for(Split::Val));
                super::first_samples(shards, count, self.spec.seed, t)?
            }
            _ => {
                let k = NoiseKey {
                    seed: key.seed,
                    step: 0,
                    indices: (0..count as u64).collect(),
                };
                self.random_batch_sized(count, &k, self.spec.image_size)
            }
        };
        *cached = Some(batch.clone());
        Ok(batch)
    }

    /// Samples `[N, 3, S, S]` in [-1, 1] for `batch`'s low-res images with the configured
    /// sampler; every random number from `key.seed` and `key.step`.
    pub fn sample<Bk: Backend>(
        &self,
        model: &Upsampler<Bk>,
        batch: &Batch,
        key: &NoiseKey,
        device: &Bk::Device,
    ) -> Result<Tensor<Bk, 4>, TrainError> {
        let low = batch.tensor::<Bk, 4>("low_res", device)?;
        Ok(self.spec.sample_images(&self.spec.sampler, model, low, key))
    }

    fn export_diffusers<B: Backend>(
        &self,
        model: &Upsampler<B>,
        meta: &ExportMeta,
        out: &Path,
    ) -> Result<ExportReport, TrainError> {
        if self.spec.model.residual {
            return Err(TrainError::invalid(
                "--layout diffusers",
                "this upsampler was trained with `model.residual: true` (it denoises the \
                 residual image − low-res): diffusers' UNet2DModel pipelines would use its \
                 output as the image itself; export the native layout",
            ));
        }
        let (config, tensors) = upsampler_to_diffusers(model, &self.spec.unet)
            .map_err(|e| TrainError::invalid("--layout diffusers", e))?;
        let dir = out.join("unet");
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io("cannot create", &dir, e))?;
        crate::export::write_diffusers(&dir, &config, tensors.into_iter().collect(), meta)
    }
}

/// The tensors of a diffusers state dict.
pub type DiffusersTensors = BTreeMap<String, TensorData>;

/// `model` as a diffusers `UNet2DModel` (config and state dict, PyTorch layouts): the UNet and,
/// with noise augmentation, `class_embed_type = "timestep"` with the noise-level MLP as
/// `class_embedding.linear_{1,2}` (the augmentation timestep goes through the UNet's sinusoid,
/// then this MLP).
pub fn upsampler_to_diffusers<B: Backend>(
    model: &Upsampler<B>,
    unet: &UNetConfig,
) -> Result<(serde_json::Value, DiffusersTensors), String> {
    let (mut config, mut tensors) = unet_to_diffusers(&model.unet, unet)?;
    if let Some(mlp) = &model.noise_level_embed {
        config["class_embed_type"] = serde_json::json!("timestep");
        for (name, lin) in [("linear_1", &mlp.linear_1), ("linear_2", &mlp.linear_2)] {
            // burn stores [in, out]; PyTorch [out, in].
            let w = lin.weight.val().transpose().into_data();
            tensors.insert(format!("class_embedding.{name}.weight"), w);
            if let Some(b) = &lin.bias {
                tensors.insert(format!("class_embedding.{name}.bias"), b.val().into_data());
            }
        }
    }
    Ok((config, tensors))
}

/// Reads a diffusers `UNet2DModel` (as [`upsampler_to_diffusers`] writes it, or diffusers'
/// `save_pretrained`): `class_embed_type` null, or `"timestep"` for an upsampler with noise
/// augmentation, whose `class_embedding.linear_{1,2}` become the noise-level MLP. Returns the
/// model and its UNet's config.
pub fn upsampler_from_diffusers<B: Backend>(
    config: &serde_json::Value,
    tensors: &DiffusersTensors,
    device: &B::Device,
) -> Result<(Upsampler<B>, UNetConfig), String> {
    if config["class_embed_type"] != "timestep" {
        let (unet, cfg) = unet_from_diffusers(config, tensors, device)?;
        if cfg.class_embed {
            return Err(format!(
                "config: class_embed_type {} is not an upsampler's (null, \"timestep\")",
                config["class_embed_type"]
            ));
        }
        let model = Upsampler {
            unet,
            noise_level_embed: None,
        };
        return Ok((model, cfg));
    }
    // The UNet takes the MLP's output through its additive-embedding ("identity") path.
    let mut unet_config = config.clone();
    unet_config["class_embed_type"] = serde_json::json!("identity");
    let (mlp_tensors, unet_tensors): (DiffusersTensors, DiffusersTensors) = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| k.starts_with("class_embedding."));
    let (unet, cfg) = unet_from_diffusers(&unet_config, &unet_tensors, device)?;
    let mut mlp = TimestepMlpConfig::new(cfg.model_channels).init::<B>(device);
    let c = cfg.model_channels;
    for (name, lin, [out, inp]) in [
        ("linear_1", &mut mlp.linear_1, [4 * c, c]),
        ("linear_2", &mut mlp.linear_2, [4 * c, 4 * c]),
    ] {
        let get = |suffix: &str, shape: &[usize]| {
            let key = format!("class_embedding.{name}.{suffix}");
            let t = mlp_tensors
                .get(&key)
                .ok_or_else(|| format!("missing tensor {key}"))?;
            if t.shape.as_slice() != shape {
                return Err(format!("{key}: shape {:?}, expected {shape:?}", t.shape));
            }
            Ok(t.clone().convert::<f32>())
        };
        let w = Tensor::<B, 2>::from_data(get("weight", &[out, inp])?, device).transpose();
        lin.weight = burn::module::Param::from_tensor(w);
        let b = Tensor::<B, 1>::from_data(get("bias", &[out])?, device);
        lin.bias = Some(burn::module::Param::from_tensor(b));
    }
    let known = [
        "linear_1.weight",
        "linear_1.bias",
        "linear_2.weight",
        "linear_2.bias",
    ];
    if let Some(k) = mlp_tensors
        .keys()
        .find(|k| !known.contains(&k.trim_start_matches("class_embedding.")))
    {
        return Err(format!("unexpected tensor {k}"));
    }
    let model = Upsampler {
        unet,
        noise_level_embed: Some(mlp),
    };
    Ok((model, cfg))
}

/// `pixels` (`[N, 3, s, s]`, CHW) enlarged to `side` by pixel repetition.
fn nearest_up(pixels: &[f32], n: usize, s: usize, side: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * 3 * side * side);
    for plane in pixels.chunks_exact(s * s).take(n * 3) {
        for y in 0..side {
            for x in 0..side {
                out.push(plane[(y * s / side) * s + x * s / side]);
            }
        }
    }
    out
}

impl<B: AutodiffBackend> TrainTask<B> for UpsamplerTask {
    type Model = Upsampler<B>;

    fn init_model(&self, device: &B::Device) -> Upsampler<B> {
        Upsampler {
            unet: self.spec.unet.init(device),
            noise_level_embed: self
                .spec
                .model
                .noise_aug
                .enabled
                .then(|| TimestepMlpConfig::new(self.spec.unet.model_channels).init(device)),
        }
    }

    fn transform(&self, split: Split) -> Result<Arc<dyn SampleTransform>, TrainError> {
        Ok(Arc::new(self.spec.transform_for(split)))
    }

    fn random_batch(&self, batch_size: usize, key: &NoiseKey) -> Batch {
        self.random_batch_sized(batch_size, key, self.spec.crop_size)
    }

    fn loss(
        &self,
        model: &Upsampler<B>,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let (x0, _, cond, aug_t) = self.inputs::<B>(batch, key, true, device)?;
        let (x0, x_t, noise, idx) = super::noise_keyed(&self.spec.diffusion, x0, key);
        let out = model.forward(x_t.clone(), cond, &idx, aug_t.as_deref(), Some(key));
        let losses =
            self.spec
                .diffusion
                .training_losses(&self.spec.loss, out, x0, x_t, noise, &idx);
        Ok(losses.loss.mean())
    }

    /// The loss, plus image metrics per held-out image: `psnr_x0_mid` (the network's x̂0 at
    /// the fixed timestep T/2, from the same noise as the loss), `psnr_bicubic` (the
    /// conditioning itself) and, with `model.sample_metrics`, `psnr_sample` and the gradient
    /// energy at the ground truth's edges of the sample, the conditioning and the truth.
    fn validation_sums(
        &self,
        model: &Upsampler<B>,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<ValidationSums, TrainError> {
        let model = model.valid();
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let diffusion = &self.spec.diffusion;
        let (x0, low, cond, aug_t) = self.inputs::<I<B>>(batch, key, false, device)?;
        let (x0, x_t, noise, idx) = super::noise_keyed(diffusion, x0, key);
        let out = model.forward(x_t.clone(), cond.clone(), &idx, aug_t.as_deref(), None);
        let mut sums = super::diffusion_loss_sums(
            diffusion,
            &self.spec.loss,
            (out, x0.clone(), x_t, noise.clone()),
            &idx,
        );
        let n = batch.len();
        let mid = vec![diffusion.schedule().len() / 2; n];
        let x_mid = diffusion.q_sample(x0, &mid, noise);
        let x0_mid = |model: &Upsampler<I<B>>| {
            let out = model.forward(x_mid.clone(), cond.clone(), &mid, aug_t.as_deref(), None);
            let (mean, _) = diffusion.split_output(out, 3);
            let x0 = diffusion.pred_x0(mean, x_mid.clone(), &mid);
            to_vec(self.spec.from_diffusion_space(x0, low.clone()))
        };
        let x0_hat = x0_mid(&model)?;
        let field = |name: &str| {
            batch
                .field(name)
                .map(|f| f.data.clone())
                .ok_or_else(|| TrainError::Task(format!("validation: no `{name}` in the batch")))
        };
        let (truth, bicubic) = (field("image")?, field("low_res")?);
        let s = self.spec.image_size;
        let per = 3 * s * s;
        let rows = |v: &[f32]| v.chunks_exact(per).map(<[f32]>::to_vec).collect::<Vec<_>>();
        let (truth, bicubic, x0_hat) = (rows(&truth), rows(&bicubic), rows(&x0_hat));
        let sum = |f: &dyn Fn(usize) -> f64| (0..n).map(f).sum::<f64>();
        sums.metrics.push((
            "psnr_x0_mid".into(),
            sum(&|i| image_metrics::psnr(&x0_hat[i], &truth[i])),
        ));
        sums.metrics.push((
            "psnr_bicubic".into(),
            sum(&|i| image_metrics::psnr(&bicubic[i], &truth[i])),
        ));
        if self.spec.model.sample_metrics {
            // The same x̂0 from the untrained network (the run's keyed initialisation).
            let init = unclip_models::keyed_init(
                <Self as TrainTask<B>>::init_model(self, device).valid(),
                self.spec.seed,
            )
            .map_err(|p| TrainError::Task(format!("keyed_init: unknown parameters {p:?}")))?;
            let x0_init = rows(&x0_mid(&init)?);
            sums.metrics.push((
                "psnr_x0_mid_init".into(),
                sum(&|i| image_metrics::psnr(&x0_init[i], &truth[i])),
            ));
            let sample = rows(&to_vec(self.sample(&model, batch, key, device)?)?);
            let masks: Vec<_> = truth
                .iter()
                .map(|t| image_metrics::edge_mask(t, s))
                .collect();
            let edge =
                |img: &[Vec<f32>], i: usize| image_metrics::edge_energy(&img[i], s, &masks[i]);
            sums.metrics.push((
                "psnr_sample".into(),
                sum(&|i| image_metrics::psnr(&sample[i], &truth[i])),
            ));
            sums.metrics
                .push(("edge_energy_sample".into(), sum(&|i| edge(&sample, i))));
            sums.metrics
                .push(("edge_energy_bicubic".into(), sum(&|i| edge(&bicubic, i))));
            sums.metrics
                .push(("edge_energy_truth".into(), sum(&|i| edge(&truth, i))));
        }
        Ok(sums)
    }

    fn preview(
        &self,
        model: &Upsampler<B>,
        count: usize,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Option<RgbImage>, TrainError> {
        let batch = self.preview_batch(count, key)?;
        let n = batch.len();
        let s = self.spec.image_size;
        let model = model.valid();
        let k = NoiseKey {
            seed: key.seed,
            step: key.step,
            indices: (0..n as u64).collect(),
        };
        let sample = self.sample(&model, &batch, &k, device)?;
        let field = |name: &str| -> Result<Vec<f32>, TrainError> {
            batch
                .field(name)
                .map(|f| f.data.clone())
                .ok_or_else(|| TrainError::Task(format!("preview: no `{name}` in the batch")))
        };
        let small = field("low_res_small")?;
        let l = self.spec.low_res_size;
        let sample = to_vec(sample)?;
        let columns = [
            nearest_up(&small, n, l, s),
            field("low_res")?,
            sample,
            field("image")?,
        ];
        // One row per sample: low-res | bicubic | sample | ground truth.
        let per = 3 * s * s;
        let mut pixels = Vec::with_capacity(4 * n * per);
        for row in 0..n {
            for c in &columns {
                pixels.extend_from_slice(&c[row * per..(row + 1) * per]);
            }
        }
        Ok(Some(crate::plot::image_grid_with_columns(
            &pixels,
            n * columns.len(),
            s,
            columns.len(),
        )))
    }

    fn export(
        &self,
        model: &Upsampler<B>,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, TrainError> {
        match layout {
            ExportLayout::Native => crate::export::write_native::<B, _>(model, meta, out),
            ExportLayout::Diffusers => self.export_diffusers(model, meta, out),
        }
    }
}
