//! `stage: upsampler` — the unCLIP super-resolution diffusion models (64→256, 256→1024,
//! [`unclip_models::Upsampler`]): the `model:` section, the network it builds, the
//! noise augmentation of the low-resolution conditioning, sampling, and the export layouts
//! (native, or diffusers' `UNet2DModel` in `unet/`).
//!
//! The conditioning is the low-resolution image upsampled to the target size (made in the
//! loader's workers in training, `unclip_data::superres`; by [`UpsamplerStage::upsample_low_res`]
//! in inference). Optional Imagen-style noise augmentation (`model.noise_aug`) noises it with the
//! diffusion's own `q_sample` at an augmentation timestep drawn per sample in training (fixed
//! at validation and sampling), which the network receives through its noise-level MLP. With
//! `model.residual` the diffusion models the residual `image − low_res`.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use unclip_config::{AtLeastOne, Fraction};
use unclip_data::degrade::{DegradationConfig, LowRes, ResizeMode};
use unclip_data::pixels::{chw_to_rgb, to_chw_unit};
use unclip_diffusion::{DiffusionConfig, GaussianDiffusion, LossOptions, Sampler, VarianceType};
use unclip_models::{upsampler_to_diffusers, NoiseKey, UNetConfig, Upsampler, UpsamplerConfig};

use crate::decoder::levels;
use crate::export::{write_diffusers, write_native, ExportLayout, ExportMeta, ExportReport};
use crate::{keyed_normal, tensor_values, StageError, GROUPS};

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

/// The upsampler stage, validated: sizes, the corruption of the conditioning, the network's
/// shape, the diffusion.
#[derive(Clone)]
pub struct UpsamplerStage {
    pub model: UpsamplerModelConfig,
    pub net: UpsamplerConfig,
    /// Target side S.
    pub image_size: usize,
    /// Low-res side s.
    pub low_res_size: usize,
    /// Training crop side.
    pub crop_size: usize,
    /// The downsample, corruption and upsample of the conditioning.
    pub low_res: LowRes,
    pub diffusion: GaussianDiffusion,
    pub sampler: Sampler,
    pub loss: LossOptions,
    pub diffusion_config: DiffusionConfig,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl UpsamplerStage {
    /// The stage of `model` with target side `image_size`.
    pub fn new(
        model: &UpsamplerModelConfig,
        image_size: usize,
        diffusion: &DiffusionConfig,
    ) -> Result<Self, StageError> {
        let m = model;
        let s = image_size;
        let l = m.low_res_size.0 as usize;
        if l >= s || !s.is_multiple_of(l) {
            return Err(StageError::invalid(
                "model.low_res_size",
                format!(
                    "{l} must be smaller than data.image_size ({s}) and divide it (the \
                     upsampling factor is an integer)"
                ),
            ));
        }
        let factor = s / l;
        let levels = levels(&m.channel_mult, s)?;
        let f = m.crop_fraction;
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            return Err(StageError::invalid(
                "model.crop_fraction",
                format!("must be in (0, 1], got {f}"),
            ));
        }
        let down = 1usize << (levels - 1);
        let unit = factor / gcd(factor, down) * down;
        let crop_size = ((s as f64 * f).round() as usize / unit) * unit;
        if crop_size == 0 {
            return Err(StageError::invalid(
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
                return Err(StageError::invalid(
                    k,
                    format!("must be in [0, 1], got {v}"),
                ));
            }
        }
        if diffusion.variance == VarianceType::LearnedRange {
            return Err(StageError::invalid(
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
            .map_err(|(k, why)| StageError::invalid(format!("model.degradation.{k}"), why))?;
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
            .map_err(|why| StageError::invalid("model", why))?;
        Ok(Self {
            model: m.clone(),
            net: UpsamplerConfig {
                unet,
                noise_aug: na.enabled,
            },
            image_size: s,
            low_res_size: l,
            crop_size,
            low_res,
            diffusion: diffusion.diffusion()?,
            sampler: diffusion.sampler()?,
            loss: diffusion.loss_options(),
            diffusion_config: diffusion.clone(),
        })
    }

    /// Target side / low-res side.
    pub fn factor(&self) -> usize {
        self.image_size / self.low_res_size
    }

    /// A fresh network (burn's initialisers; training redraws it from the run's keyed RNG).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Upsampler<B> {
        self.net.init(device)
    }

    /// What the diffusion models for target `image` given its upsampled low-res `low` (both
    /// `[N, 3, S, S]`): the image, or with `model.residual` the residual `image − low`.
    pub fn to_diffusion_space<B: Backend>(
        &self,
        image: Tensor<B, 4>,
        low: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        if self.model.residual {
            image - low
        } else {
            image
        }
    }

    /// The inverse of [`Self::to_diffusion_space`]: with `model.residual`, `x + low` clamped
    /// to [-1, 1].
    pub fn from_diffusion_space<B: Backend>(
        &self,
        x: Tensor<B, 4>,
        low: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        if self.model.residual {
            (x + low).clamp(-1.0, 1.0)
        } else {
            x
        }
    }

    /// The network's conditioning from `low` (`[N, 3, S, S]`, the low-res images upsampled to
    /// the target side), noise-augmented when enabled — in training (`train`) at a level
    /// drawn per sample from `key` (`noise_aug_level`), else at `sample_level`; the noise from
    /// `key` (`noise_aug`). Returns the augmentation timesteps with the augmentation.
    pub fn augment<B: Backend>(
        &self,
        low: Tensor<B, 4>,
        key: &NoiseKey,
        train: bool,
    ) -> (Tensor<B, 4>, Option<Vec<usize>>) {
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
        let noise = Tensor::<B, 4>::from_data(TensorData::new(noise, dims), &low.device());
        let low = self.diffusion.q_sample(low, &t, noise);
        (low, Some(t))
    }

    /// Samples `[N, 3, S, S]` in [-1, 1] with `sampler` conditioned on `low` (the low-res
    /// images upsampled to the target side, before augmentation); the start noise and every
    /// step's noise from `(key.seed, key.step)`, the augmentation noise per row of `key`.
    pub fn sample_images<B: Backend>(
        &self,
        sampler: &Sampler,
        model: &Upsampler<B>,
        low: Tensor<B, 4>,
        key: &NoiseKey,
    ) -> Tensor<B, 4> {
        self.sample_images_with(sampler, model, low, key, &mut || {})
    }

    /// [`Self::sample_images`], calling `on_step` after every sampler step (progress bars).
    pub fn sample_images_with<B: Backend>(
        &self,
        sampler: &Sampler,
        model: &Upsampler<B>,
        low: Tensor<B, 4>,
        key: &NoiseKey,
        on_step: &mut dyn FnMut(),
    ) -> Tensor<B, 4> {
        let device = low.device();
        let (cond, aug_t) = self.augment(low.clone(), key, false);
        let shape = cond.dims();
        let normal = |purpose: &str, step: u64| {
            keyed_normal::<B, 4>(key.seed, purpose, step, shape, &device)
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
    pub fn upsample_low_res<B: Backend>(
        &self,
        images: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>, StageError> {
        let [n, c, h, w] = images.dims();
        let device = images.device();
        if c != 3 || h != self.low_res_size || w != self.low_res_size {
            return Err(StageError::Input(format!(
                "the upsampler takes [N, 3, {l}, {l}] images, got [{n}, {c}, {h}, {w}]",
                l = self.low_res_size
            )));
        }
        let pixels = tensor_values(images)?;
        let s = self.image_size;
        let mut out = Vec::with_capacity(n * 3 * s * s);
        for img in pixels.chunks_exact(3 * h * w) {
            let rgb = chw_to_rgb(img, w, h);
            let up = self
                .low_res
                .upsample(&rgb, s as u32)
                .map_err(StageError::Input)?;
            to_chw_unit(&up, &mut out);
        }
        Ok(Tensor::from_data(
            TensorData::new(out, [n, 3, s, s]),
            &device,
        ))
    }

    /// Writes `model` into `out` in `layout`.
    pub fn export<B: Backend>(
        &self,
        model: &Upsampler<B>,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, StageError> {
        match layout {
            ExportLayout::Native => write_native::<B, _>(model, meta, out),
            ExportLayout::Diffusers => {
                if self.model.residual {
                    return Err(StageError::invalid(
                        "--layout diffusers",
                        "this upsampler was trained with `model.residual: true` (it denoises \
                         the residual image − low-res): diffusers' UNet2DModel pipelines would \
                         use its output as the image itself; export the native layout",
                    ));
                }
                let (config, tensors) = upsampler_to_diffusers(model, &self.net.unet)
                    .map_err(|e| StageError::invalid("--layout diffusers", e))?;
                let dir = out.join("unet");
                std::fs::create_dir_all(&dir)
                    .map_err(|e| StageError::io("cannot create", &dir, e))?;
                write_diffusers(&dir, &config, tensors, meta)
            }
        }
    }
}
