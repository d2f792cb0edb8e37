//! unclip inference: loads a pipeline folder and generates images.
//!
//! A pipeline folder (made by `unclip pipeline assemble`, see [`assemble`]) holds `clip/` (HF
//! layout: both towers and `tokenizer.json`), `prior/`, `decoder/`, `upsampler-1/` and
//! optionally `upsampler-2/` (native exports) and `pipeline.json` ([`PipelineConfig`]: the
//! folders and each stage's sampling defaults). [`Pipeline`] runs
//!
//! - text → images: caption → CLIP text embedding and encodings → prior (image embedding,
//!   guidance against the empty caption, best of `n_candidates`) → decoder (guidance against
//!   the null image embedding + empty caption) → upsamplers;
//! - image variations: image → CLIP image embedding → decoder (empty caption) → upsamplers;
//! - interpolation: spherical interpolation between two captions' sampled image embeddings.
//!
//! Every random number comes from the seed (keyed by stage), so the same call gives the same
//! images. [`Pipeline`] works on any burn backend (no autodiff): the stages are rebuilt from
//! their exports by `unclip_stages::reload`.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): **infer**; it
//! depends on the stage layer, never on training or the dataset tools.

pub mod assemble;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use unclip_clip::{Clip, ClipConfig, ClipTokenizer};
use unclip_data::pixels::chw_to_rgb;
use unclip_diffusion::{DiffusionConfig, Sampler, SamplingConfig};
use unclip_models::{Decoder, NoiseKey, PriorTransformer, Upsampler};
use unclip_stages::decoder::DecoderStage;
use unclip_stages::prior::{sample_embeddings_with, PriorStage};
use unclip_stages::reload::{self, Reloaded};
use unclip_stages::text::{ClipDims, EmptyCaption, TextCond, TextEncodingsSource, TextInputs};
use unclip_stages::upsampler::UpsamplerStage;
use unclip_stages::StageError;

pub use assemble::{assemble, assemble_as, AssembleOptions, AssembleReport, DiffusersReport};

/// What can go wrong loading or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{0}")]
    Stage(#[from] StageError),
    #[error("CLIP: {0}")]
    Clip(#[from] unclip_clip::ClipError),
    #[error("{path}: {why}")]
    Pipeline { path: PathBuf, why: String },
    #[error("{0}")]
    Invalid(String),
}

/// The format tag of `pipeline.json`.
pub const PIPELINE_FORMAT: &str = "unclip-pipeline-1";

/// One diffusion stage of `pipeline.json`: its folder and sampling defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageEntry {
    /// Folder of the export, relative to the pipeline folder.
    pub path: String,
    /// Sampler, respacing (steps), η, guidance scale, x0 clipping.
    pub sampling: SamplingConfig,
    /// Prior only: samples drawn per caption, the one closest to the caption kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_candidates: Option<usize>,
}

/// `pipeline.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub format: String,
    /// The CLIP folder (HF layout), relative to the pipeline folder.
    pub clip: String,
    pub prior: StageEntry,
    pub decoder: StageEntry,
    /// In order: 64→256 then 256→1024 (or the demo's 32→64).
    #[serde(default)]
    pub upsamplers: Vec<StageEntry>,
}

/// Per-call overrides of a stage's sampling defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageOverrides {
    /// Respacing (`"ddim25"`, `"50"`, …).
    pub respacing: Option<String>,
    pub guidance: Option<f64>,
}

/// Options of one generation call.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    pub seed: u64,
    pub prior: StageOverrides,
    pub decoder: StageOverrides,
    /// One per upsampler (missing entries: the defaults).
    pub upsamplers: Vec<StageOverrides>,
    /// Apply at most this many upsamplers (`Some(0)`: the decoder's resolution).
    pub max_upsamplers: Option<usize>,
    /// Show a progress bar per stage.
    pub progress: bool,
}

/// Images at every resolution a generation produced, first the decoder's.
#[derive(Debug, Clone)]
pub struct Generated {
    /// `[stage][image]`: the decoder's images, then each upsampler's.
    pub stages: Vec<Vec<RgbImage>>,
    /// The CLIP image embeddings the decoder was conditioned on (`[n][D]`).
    pub image_embeds: Vec<Vec<f32>>,
}

impl Generated {
    /// The final (largest) images.
    pub fn images(&self) -> &[RgbImage] {
        self.stages.last().map(Vec::as_slice).unwrap_or(&[])
    }
}

/// A loaded pipeline on backend `B` (any backend: inference needs no autodiff).
pub struct Pipeline<B: Backend> {
    pub dir: PathBuf,
    pub config: PipelineConfig,
    pub clip: Clip<B>,
    pub clip_image_size: u32,
    tokenizer: ClipTokenizer,
    pub dims: ClipDims,
    empty: Arc<EmptyCaption>,
    prior: Reloaded<PriorStage, PriorTransformer<B>>,
    decoder: Reloaded<DecoderStage, Decoder<B>>,
    upsamplers: Vec<Reloaded<UpsamplerStage, Upsampler<B>>>,
    pub device: B::Device,
}

pub fn pipeline_error(path: &Path, why: impl std::fmt::Display) -> InferError {
    InferError::Pipeline {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Reads and checks `DIR/pipeline.json`.
pub fn read_config(dir: &Path) -> Result<PipelineConfig, InferError> {
    let path = dir.join("pipeline.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        pipeline_error(
            &path,
            format!("{e} (a pipeline folder is made by `unclip pipeline assemble`)"),
        )
    })?;
    let cfg: PipelineConfig = serde_json::from_str(&text).map_err(|e| pipeline_error(&path, e))?;
    if cfg.format != PIPELINE_FORMAT {
        return Err(pipeline_error(
            &path,
            format!("format `{}`, expected `{PIPELINE_FORMAT}`", cfg.format),
        ));
    }
    Ok(cfg)
}

/// A stage's sampler: its export's diffusion with `sampling` and `over` applied.
fn sampler_for(
    diffusion: &DiffusionConfig,
    sampling: &SamplingConfig,
    over: &StageOverrides,
) -> Result<(Sampler, f64), InferError> {
    let mut d = diffusion.clone();
    d.sampling = sampling.clone();
    if let Some(r) = &over.respacing {
        d.sampling.respacing = r.clone();
    }
    if let Some(g) = over.guidance {
        if !(g.is_finite() && g >= 1.0) {
            return Err(InferError::Invalid(format!(
                "guidance scale must be a number ≥ 1, got {g}"
            )));
        }
        d.sampling.guidance_scale = g;
    }
    let sampler = d
        .sampler()
        .map_err(|e| InferError::Invalid(format!("sampling: {e}")))?;
    Ok((sampler, d.sampling.guidance_scale))
}

/// A progress bar of `len` steps named `stage` (hidden unless `show`).
pub fn bar(show: bool, len: u64, stage: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(stage.to_owned());
    b
}

/// A tensor's values as f32.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, InferError> {
    Ok(unclip_stages::tensor_values(t)?)
}

/// `[N, 3, S, S]` in [-1, 1] as RGB images.
fn to_images<B: Backend>(x: Tensor<B, 4>) -> Result<Vec<RgbImage>, InferError> {
    let [_, _, h, w] = x.dims();
    let v = values(x)?;
    Ok(v.chunks_exact(3 * h * w)
        .map(|c| chw_to_rgb(c, w, h))
        .collect())
}

pub use unclip_data::pixels::grid;

/// Writes `img` as a PNG atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<(), InferError> {
    unclip_fs::write_png(path, img).map_err(|e| pipeline_error(path, e))
}

/// Reads an image file as RGB.
pub fn open_rgb(path: &Path) -> Result<RgbImage, InferError> {
    Ok(image::open(path)
        .map_err(|e| pipeline_error(path, e))?
        .to_rgb8())
}

/// Spherical interpolation between unit vectors `a` and `b` at `t` (renormalised).
pub fn slerp(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na = a
        .iter()
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    let nb = b
        .iter()
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    let cos = (dot / (na * nb)).clamp(-1.0, 1.0);
    let omega = cos.acos();
    let (wa, wb) = if omega.abs() < 1e-6 {
        (1.0 - t, t)
    } else {
        (
            ((1.0 - t) * omega).sin() / omega.sin(),
            (t * omega).sin() / omega.sin(),
        )
    };
    let v: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| wa * *x as f64 / na + wb * *y as f64 / nb)
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    v.iter().map(|x| (x / n) as f32).collect()
}

impl<B: Backend> Pipeline<B> {
    /// Loads the pipeline folder `dir` on `device`.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, InferError> {
        let config = read_config(dir)?;
        let clip_dir = dir.join(&config.clip);
        let clip_cfg = ClipConfig::from_file(clip_dir.join("config.json"))?;
        let clip = Clip::<B>::load_hf(&clip_cfg, clip_dir.join("model.safetensors"), device)?;
        let tok = clip_dir.join("tokenizer.json");
        let tokenizer = if tok.exists() {
            ClipTokenizer::from_file(&tok)?
        } else {
            ClipTokenizer::bundled()?
        }
        .with_context_length(unclip_clip::CONTEXT_LENGTH);
        let dims = ClipDims {
            embed_dim: clip_cfg.projection_dim,
            text_width: clip_cfg.text_config.hidden_size,
            text_len: unclip_clip::CONTEXT_LENGTH,
        };
        let stage = |e: &StageEntry| dir.join(&e.path);
        let prior = reload::prior::<B>(&stage(&config.prior), dims, device)?;
        let decoder = reload::decoder::<B>(&stage(&config.decoder), dims, device)?;
        let mut upsamplers = Vec::new();
        let mut side = decoder.stage.image_size;
        for e in &config.upsamplers {
            let u = reload::upsampler::<B>(&stage(e), device)?;
            if u.stage.low_res_size != side {
                return Err(pipeline_error(
                    &stage(e),
                    format!(
                        "this upsampler takes {} px images, the stage before it makes {side} px",
                        u.stage.low_res_size
                    ),
                ));
            }
            side = u.stage.image_size;
            upsamplers.push(u);
        }
        let mut me = Self {
            dir: dir.to_path_buf(),
            config,
            clip,
            clip_image_size: clip_cfg.vision_config.image_size as u32,
            tokenizer,
            dims,
            empty: Arc::new(EmptyCaption {
                text_embed: Vec::new(),
                encodings: None,
                mask: None,
            }),
            prior,
            decoder,
            upsamplers,
            device: device.clone(),
        };
        let empty = me.encode_text(&[String::new()])?;
        let mask = empty
            .encodings
            .as_ref()
            .map(|(_, m)| m.clone().into_data().to_vec::<bool>())
            .transpose()
            .map_err(|e| InferError::Invalid(format!("empty caption: {e:?}")))?;
        me.empty = Arc::new(EmptyCaption {
            text_embed: values(empty.embed)?,
            encodings: empty.encodings.map(|(e, _)| values(e)).transpose()?,
            mask,
        });
        Ok(me)
    }

    /// Side of the decoder's images and of each upsampler's.
    pub fn sides(&self) -> Vec<usize> {
        std::iter::once(self.decoder.stage.image_size)
            .chain(self.upsamplers.iter().map(|u| u.stage.image_size))
            .collect()
    }

    /// CLIP text embeddings, per-token encodings and masks of `captions`.
    pub fn encode_text(&self, captions: &[String]) -> Result<TextInputs<B>, InferError> {
        let ids = captions
            .iter()
            .map(|c| self.tokenizer.encode(c).map(|t| t.ids))
            .collect::<Result<Vec<_>, _>>()?;
        let out = self.clip.encode_text(&ids);
        Ok(TextInputs {
            embed: out.text_embeds,
            encodings: Some((out.text_encodings, out.text_mask)),
        })
    }

    /// L2-normalised CLIP image embeddings `[N, D]` of `images` (CLIP's own preprocessing).
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Tensor<B, 2>, InferError> {
        let x = unclip_clip::preprocess_batch::<B>(images, self.clip_image_size, &self.device)?;
        Ok(self.clip.encode_image(x))
    }

    /// The empty caption of this pipeline's CLIP as a stage's caption conditioning (the
    /// unconditional branch of guidance).
    fn text_cond(&self, source: TextEncodingsSource) -> TextCond {
        TextCond {
            source,
            dims: self.dims,
            empty: self.empty.clone(),
        }
    }

    /// Image embeddings `[N, D]` sampled by the prior for `captions`.
    pub fn prior_embeddings(
        &self,
        captions: &[String],
        opts: &GenerateOptions,
    ) -> Result<Tensor<B, 2>, InferError> {
        let e = &self.config.prior;
        let stage = &self.prior.stage;
        let (sampler, scale) = sampler_for(&stage.diffusion_config, &e.sampling, &opts.prior)?;
        let cond = self.text_cond(stage.text.source);
        let mut text = self.encode_text(captions)?;
        if stage.text.source == TextEncodingsSource::None {
            text.encodings = None;
        }
        let key = NoiseKey {
            seed: opts.seed,
            step: 0,
            indices: (0..captions.len() as u64).collect(),
        };
        let k = e.n_candidates.unwrap_or(stage.n_candidates());
        let b = bar(opts.progress, sampler.timesteps().len() as u64, "prior");
        let z = sample_embeddings_with(
            &self.prior.model,
            &cond,
            &sampler,
            &text,
            scale,
            k,
            &key,
            &self.device,
            &mut || b.inc(1),
        )?;
        b.finish();
        Ok(z)
    }

    /// Decoder images for image embeddings `image_embed` `[N, D]` and captions `text` (the
    /// empty caption where `None`), then the upsamplers.
    pub fn decode(
        &self,
        image_embed: Tensor<B, 2>,
        captions: Option<&[String]>,
        opts: &GenerateOptions,
    ) -> Result<Generated, InferError> {
        let n = image_embed.dims()[0];
        let stage = &self.decoder.stage;
        let e = &self.config.decoder;
        let (sampler, scale) = sampler_for(&stage.diffusion_config, &e.sampling, &opts.decoder)?;
        let empty = self
            .text_cond(TextEncodingsSource::Store)
            .empty_inputs::<B>(n, &self.device);
        let text = match captions {
            Some(c) => self.encode_text(c)?,
            None => TextInputs {
                embed: empty.embed.clone(),
                encodings: empty.encodings.clone(),
            },
        };
        let embeds = values(image_embed.clone())?;
        let model = &self.decoder.model;
        let cond = stage.inputs(
            model,
            image_embed.clone(),
            vec![false; n],
            vec![false; n],
            text,
        )?;
        let uncond = stage.inputs(model, image_embed, vec![true; n], vec![true; n], empty)?;
        let key = NoiseKey {
            seed: opts.seed,
            step: 1,
            indices: (0..n as u64).collect(),
        };
        let b = bar(opts.progress, sampler.timesteps().len() as u64, "decoder");
        let mut x = stage.sample_images_with(
            &sampler,
            model,
            &cond,
            &uncond,
            scale,
            &key,
            &self.device,
            &mut || b.inc(1),
        );
        b.finish();
        let mut stages = vec![to_images(x.clone())?];
        let count = opts
            .max_upsamplers
            .unwrap_or(usize::MAX)
            .min(self.upsamplers.len());
        for (i, u) in self.upsamplers.iter().take(count).enumerate() {
            let over = opts.upsamplers.get(i).cloned().unwrap_or_default();
            let entry = &self.config.upsamplers[i];
            let (sampler, _) = sampler_for(&u.stage.diffusion_config, &entry.sampling, &over)?;
            let low = u.stage.upsample_low_res(x)?;
            let key = NoiseKey {
                seed: opts.seed,
                step: 2 + i as u64,
                indices: (0..n as u64).collect(),
            };
            let steps = sampler.timesteps().len() as u64;
            let b = bar(opts.progress, steps, &format!("upsampler-{}", i + 1));
            x = u
                .stage
                .sample_images_with(&sampler, &u.model, low, &key, &mut || b.inc(1));
            b.finish();
            stages.push(to_images(x.clone())?);
        }
        Ok(Generated {
            stages,
            image_embeds: embeds
                .chunks_exact(self.dims.embed_dim)
                .map(<[f32]>::to_vec)
                .collect(),
        })
    }

    /// Text → images: prior, decoder (conditioned on the caption too), upsamplers.
    pub fn text_to_images(
        &self,
        captions: &[String],
        opts: &GenerateOptions,
    ) -> Result<Generated, InferError> {
        if captions.is_empty() {
            return Err(InferError::Invalid("no caption given".into()));
        }
        let z = self.prior_embeddings(captions, opts)?;
        self.decode(z, Some(captions), opts)
    }

    /// Variations of `image`: its CLIP image embedding decoded `n` times (empty caption).
    pub fn variations(
        &self,
        image: &RgbImage,
        n: usize,
        opts: &GenerateOptions,
    ) -> Result<Generated, InferError> {
        let z = self.embed_images(std::slice::from_ref(image))?;
        let z = Tensor::cat(vec![z; n.max(1)], 0);
        self.decode(z, None, opts)
    }

    /// `steps` images along the spherical path between the prior's image embeddings of
    /// captions `a` and `b` (decoded with the empty caption, so only the embedding varies).
    pub fn interpolate(
        &self,
        a: &str,
        b: &str,
        steps: usize,
        opts: &GenerateOptions,
    ) -> Result<Generated, InferError> {
        let steps = steps.max(2);
        let z = values(self.prior_embeddings(&[a.to_owned(), b.to_owned()], opts)?)?;
        let d = self.dims.embed_dim;
        let (za, zb) = z.split_at(d);
        let path: Vec<f32> = (0..steps)
            .flat_map(|i| slerp(za, zb, i as f64 / (steps - 1) as f64))
            .collect();
        let z = Tensor::from_data(TensorData::new(path, [steps, d]), &self.device);
        self.decode(z, None, opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slerp_keeps_unit_norm_and_hits_both_ends() {
        let a = [1.0f32, 0.0, 0.0];
        let b = [0.0f32, 2.0, 0.0];
        assert_eq!(slerp(&a, &b, 0.0), vec![1.0, 0.0, 0.0]);
        let end = slerp(&a, &b, 1.0);
        assert!(
            (end[1] - 1.0).abs() < 1e-6 && end[0].abs() < 1e-6,
            "{end:?}"
        );
        let mid = slerp(&a, &b, 0.5);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!(
            (mid[0] - s).abs() < 1e-6 && (mid[1] - s).abs() < 1e-6,
            "{mid:?}"
        );
    }

    #[test]
    fn a_missing_or_foreign_pipeline_json_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let e = read_config(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("unclip pipeline assemble"), "{e}");
        std::fs::write(
            tmp.path().join("pipeline.json"),
            r#"{"format": "x", "clip": "c", "prior": {"path": "p", "sampling": {}},
                "decoder": {"path": "d", "sampling": {}}}"#,
        )
        .unwrap();
        let e = read_config(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("format `x`"), "{e}");
    }
}
