//! `stage: decoder` — the unCLIP decoder ([`unclip_models::Decoder`]: the ADM UNet conditioned
//! on the CLIP image embedding and the caption): its `model:` section, the network it builds,
//! its inputs after classifier-free guidance drops, sampling, and its export layouts (native,
//! or diffusers' `UNet2DConditionModel` in `unet/` + `UnCLIPTextProjModel` in `text_proj/`).

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use unclip_config::{AtLeastOne, Fraction};
use unclip_diffusion::{
    guided_model, DiffusionConfig, GaussianDiffusion, LossOptions, Sampler, VarianceType,
};
use unclip_models::{
    text_proj_to_diffusers, unet_to_diffusers, CaptionInputs, ClipCondConfig, Decoder,
    DecoderConfig, DecoderInputs, NoiseKey, UNetConfig,
};

use crate::export::{write_diffusers, write_native, ExportLayout, ExportMeta, ExportReport};
use crate::text::{ClipDims, TextEncodingsSource, TextInputs};
use crate::{keyed_normal, StageError, GROUPS};

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

impl DecoderModelConfig {
    /// The checks that need nothing but the section itself.
    pub fn validate(&self) -> Result<(), StageError> {
        if self.text_encodings == TextEncodingsSource::None {
            return Err(StageError::invalid(
                "model.text_encodings",
                "the decoder attends to the caption's per-token encodings: use `store` or \
                 `on_the_fly`",
            ));
        }
        if !(self.embed_scale.is_finite() && self.embed_scale > 0.0) {
            return Err(StageError::invalid(
                "model.embed_scale",
                format!("must be a finite number > 0, got {}", self.embed_scale),
            ));
        }
        Ok(())
    }
}

/// The decoder stage, validated: the network's shape, the CLIP sizes, the diffusion.
#[derive(Clone)]
pub struct DecoderStage {
    pub model: DecoderModelConfig,
    pub net: DecoderConfig,
    pub dims: ClipDims,
    pub image_size: usize,
    pub diffusion: GaussianDiffusion,
    pub sampler: Sampler,
    pub loss: LossOptions,
    pub variance: VarianceType,
    pub diffusion_config: DiffusionConfig,
}

fn dim_of(v: Option<AtLeastOne>, default: usize) -> usize {
    v.map_or(default, |x| x.0 as usize)
}

/// The UNet's number of levels (`channel_mult`), checked against `image_size`: each level
/// after the first halves the side.
pub(crate) fn levels(channel_mult: &[AtLeastOne], image_size: usize) -> Result<usize, StageError> {
    let levels = channel_mult.len();
    if levels == 0 {
        return Err(StageError::invalid("model.channel_mult", "is empty"));
    }
    if levels > 16 || !image_size.is_multiple_of(1 << (levels - 1)) {
        return Err(StageError::invalid(
            "model.channel_mult",
            format!(
                "{levels} levels halve the image {} times, but data.image_size {image_size} \
                 is not divisible by {}",
                levels - 1,
                1u64 << (levels - 1).min(63)
            ),
        ));
    }
    Ok(levels)
}

impl DecoderStage {
    /// The stage of `model` for CLIP sizes `dims` at `image_size` px.
    pub fn new(
        model: &DecoderModelConfig,
        dims: ClipDims,
        image_size: usize,
        diffusion: &DiffusionConfig,
    ) -> Result<Self, StageError> {
        let m = model;
        m.validate()?;
        let levels = levels(&m.channel_mult, image_size)?;
        let sides: Vec<usize> = (0..levels).map(|l| image_size >> l).collect();
        let mut attention_levels = vec![false; levels];
        for r in &m.attention_resolutions {
            let l = sides.iter().position(|&s| s as u64 == r.0).ok_or_else(|| {
                StageError::invalid(
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
        let learned = diffusion.variance == VarianceType::LearnedRange;
        if m.learned_variance != learned {
            return Err(StageError::invalid(
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
            .map_err(|why| StageError::invalid("model", why))?;
        let cond = ClipCondConfig {
            clip_dim: dims.embed_dim,
            text_width: dims.text_width,
            time_embed_dim: unet.time_embed_dim(),
            context_dim,
            extra_tokens: m.extra_tokens.0 as usize,
        };
        Ok(Self {
            model: m.clone(),
            net: DecoderConfig { unet, cond },
            dims,
            image_size,
            diffusion: diffusion.diffusion()?,
            sampler: diffusion.sampler()?,
            loss: diffusion.loss_options(),
            variance: diffusion.variance,
            diffusion_config: diffusion.clone(),
        })
    }

    /// A fresh network (burn's initialisers; training redraws it from the run's keyed RNG).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Decoder<B> {
        self.net.init(device)
    }

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
    ) -> Result<DecoderInputs<B>, StageError> {
        let (text_encodings, text_mask) = text.encodings.ok_or_else(|| {
            StageError::Input("the decoder needs per-token text encodings".into())
        })?;
        let caption = CaptionInputs {
            text_embed: text.embed,
            text_encodings,
            text_mask,
        };
        Ok(model.inputs(
            image_embed,
            drop_image,
            drop_text,
            caption,
            self.model.embed_scale,
        ))
    }

    /// Samples `[N, 3, S, S]` images in [-1, 1] with `sampler` for `cond`, classifier-free
    /// guidance `scale` against `uncond` (rows of the same batch with the image embedding and
    /// caption dropped; not evaluated at scale 1), guidance on ε with the variance of the
    /// conditional branch. The start noise and every step's noise come from
    /// `(key.seed, key.step)`.
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
        let normal =
            |purpose: &str, step: u64| keyed_normal::<B, 4>(key.seed, purpose, step, shape, device);
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

    /// Writes `model` into `out` in `layout` (the CLIP sizes recorded in `meta`).
    pub fn export<B: Backend>(
        &self,
        model: &Decoder<B>,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, StageError> {
        let mut meta = meta.clone();
        self.dims.record(&mut meta.model);
        let meta = &meta;
        match layout {
            ExportLayout::Native => write_native::<B, _>(model, meta, out),
            ExportLayout::Diffusers => self.export_diffusers(model, meta, out),
        }
    }

    fn export_diffusers<B: Backend>(
        &self,
        model: &Decoder<B>,
        meta: &ExportMeta,
        out: &Path,
    ) -> Result<ExportReport, StageError> {
        if self.model.embed_scale != 1.0 {
            return Err(StageError::invalid(
                "--layout diffusers",
                format!(
                    "model.embed_scale is {}; diffusers' UnCLIPTextProjModel has no such factor \
                     (export with --layout native)",
                    self.model.embed_scale
                ),
            ));
        }
        let unet = unet_to_diffusers(&model.unet, &self.net.unet)
            .map_err(|e| StageError::invalid("--layout diffusers", e))?;
        let text_proj = text_proj_to_diffusers(&model.cond, &self.net.cond)
            .map_err(|e| StageError::invalid("--layout diffusers", e))?;
        let mut reports = Vec::new();
        for (sub, (config, weights)) in [("unet", unet), ("text_proj", text_proj)] {
            let dir = out.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| StageError::io("cannot create", &dir, e))?;
            reports.push(write_diffusers(&dir, &config, weights, meta)?);
        }
        let tensors = reports.iter().map(|r| r.tensors).sum();
        let first = reports.swap_remove(0);
        Ok(ExportReport { tensors, ..first })
    }
}
