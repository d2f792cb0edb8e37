//! `stage: clip` — contrastive training of both CLIP towers from scratch (CLIP / x-clip):
//! symmetric InfoNCE over the batch with a learnable temperature, clamped at
//! `max_logit_scale` (100, as CLIP). Images go through CLIP's own preprocessing (the one
//! `unclip embed` applies, so training and embedding see the same pixels); captions through
//! the tokenizer shipped with unclip. Validation reports image→text and text→image top-1 /
//! top-5 retrieval within each validation batch. The export is a HF `CLIPModel` folder, which
//! `unclip embed` and transformers load like a downloaded CLIP.

use std::path::Path;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use unclip_clip::{
    Activation, Clip, ClipConfig, ClipTextConfig, ClipTokenizer, ClipVisionConfig, StoreDtype,
    BUNDLED_TOKENIZER_JSON, END_OF_TEXT, START_OF_TEXT,
};
use unclip_data::transform::{DecodedSample, Example, Field, SampleContext, TransformError};
use unclip_data::{Batch, BatchField, SampleTransform};
use unclip_models::NoiseKey;

use crate::config::{AtLeastOne, Positive, RunConfig};
use crate::{Split, TrainError, TrainTask, ValidationSums};
use unclip_stages::export::{ExportDtype, ExportLayout, ExportMeta, ExportReport};

/// One tower's shape (HF `CLIPTextConfig` / `CLIPVisionConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TowerConfig {
    pub hidden_size: AtLeastOne,
    pub intermediate_size: AtLeastOne,
    pub num_hidden_layers: AtLeastOne,
    pub num_attention_heads: AtLeastOne,
    #[serde(default = "default_act")]
    pub hidden_act: Activation,
    /// Vision tower only: side of the square patches (the image side is `data.image_size`).
    #[serde(default)]
    pub patch_size: Option<u32>,
}

fn default_act() -> Activation {
    Activation::QuickGelu
}

/// The `model:` section of `stage: clip`. Defaults: ViT-B/32's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipModelConfig {
    /// Width of the shared embedding space.
    pub projection_dim: AtLeastOne,
    /// Initial log of the inverse temperature (CLIP: ln(1/0.07)).
    pub logit_scale_init: f64,
    /// The inverse temperature is clamped to this (CLIP: 100).
    pub max_logit_scale: Positive,
    pub text: TowerConfig,
    pub vision: TowerConfig,
}

impl Default for ClipModelConfig {
    fn default() -> Self {
        Self {
            projection_dim: AtLeastOne(512),
            logit_scale_init: 2.6592,
            max_logit_scale: Positive(100.0),
            text: TowerConfig {
                hidden_size: AtLeastOne(512),
                intermediate_size: AtLeastOne(2048),
                num_hidden_layers: AtLeastOne(12),
                num_attention_heads: AtLeastOne(8),
                hidden_act: Activation::QuickGelu,
                patch_size: None,
            },
            vision: TowerConfig {
                hidden_size: AtLeastOne(768),
                intermediate_size: AtLeastOne(3072),
                num_hidden_layers: AtLeastOne(12),
                num_attention_heads: AtLeastOne(12),
                hidden_act: Activation::QuickGelu,
                patch_size: Some(32),
            },
        }
    }
}

impl ClipModelConfig {
    /// The HF `CLIPConfig` of this section for square images of `image_size` pixels.
    pub fn hf_config(&self, image_size: u32) -> Result<ClipConfig, TrainError> {
        let (t, v) = (&self.text, &self.vision);
        if t.patch_size.is_some() {
            return Err(TrainError::invalid(
                "model.text.patch_size",
                "only the vision tower has patches",
            ));
        }
        let patch = v.patch_size.ok_or_else(|| {
            TrainError::invalid("model.vision.patch_size", "required for the vision tower")
        })?;
        if patch == 0 || !image_size.is_multiple_of(patch) {
            return Err(TrainError::invalid(
                "model.vision.patch_size",
                format!("{patch} does not divide data.image_size {image_size}"),
            ));
        }
        for (name, tower) in [("text", t), ("vision", v)] {
            if !tower
                .hidden_size
                .0
                .is_multiple_of(tower.num_attention_heads.0)
            {
                return Err(TrainError::invalid(
                    format!("model.{name}.num_attention_heads"),
                    format!(
                        "{} does not divide hidden_size {}",
                        tower.num_attention_heads.0, tower.hidden_size.0
                    ),
                ));
            }
        }
        Ok(ClipConfig {
            text_config: ClipTextConfig {
                hidden_size: t.hidden_size.0 as usize,
                intermediate_size: t.intermediate_size.0 as usize,
                num_hidden_layers: t.num_hidden_layers.0 as usize,
                num_attention_heads: t.num_attention_heads.0 as usize,
                hidden_act: t.hidden_act,
                max_position_embeddings: unclip_clip::CONTEXT_LENGTH,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: v.hidden_size.0 as usize,
                intermediate_size: v.intermediate_size.0 as usize,
                num_hidden_layers: v.num_hidden_layers.0 as usize,
                num_attention_heads: v.num_attention_heads.0 as usize,
                hidden_act: v.hidden_act,
                image_size: image_size as usize,
                patch_size: patch as usize,
                ..ClipVisionConfig::default()
            },
            projection_dim: self.projection_dim.0 as usize,
            logit_scale_init_value: self.logit_scale_init,
            initializer_factor: 1.0,
        })
    }
}

/// Decode → CLIP preprocessing (`pixel_values` [3, S, S]) and tokenize (`tokens` [77], ids
/// stored as exact f32 integers). A sample without caption is skipped (`missing_caption`).
struct ClipSample {
    image_size: u32,
    tokenizer: Arc<ClipTokenizer>,
}

impl SampleTransform for ClipSample {
    fn apply(&self, sample: DecodedSample, ctx: SampleContext) -> Result<Example, TransformError> {
        let other = |reason: &'static str, detail: String| TransformError::Other { reason, detail };
        let caption = sample.caption.clone().ok_or_else(|| {
            other(
                "missing_caption",
                format!("`{}` has no caption", sample.key),
            )
        })?;
        let tokens = self
            .tokenizer
            .encode(&caption)
            .map_err(|e| other("transform_error", e.to_string()))?;
        let img = sample.decode()?;
        let pixels = unclip_clip::preprocess(&img, self.image_size)
            .map_err(|e| other("transform_error", e.to_string()))?;
        let s = self.image_size as usize;
        Ok(Example {
            key: sample.key,
            caption: Some(caption),
            index: ctx.index,
            fields: vec![
                Field {
                    name: "pixel_values".into(),
                    shape: vec![3, s, s],
                    data: pixels,
                },
                Field {
                    name: "tokens".into(),
                    shape: vec![tokens.ids.len()],
                    data: tokens.ids.iter().map(|&i| i as f32).collect(),
                },
            ],
        })
    }
}

/// The CLIP stage.
#[derive(Clone)]
pub struct ClipTask {
    pub config: ClipConfig,
    seed: u64,
    max_logit_scale: f64,
    tokenizer: Arc<ClipTokenizer>,
}

impl ClipTask {
    pub fn new(cfg: &RunConfig<ClipModelConfig>) -> Result<Self, TrainError> {
        let image_size = cfg.data.image_size.0 as u32;
        if cfg.data.random_crop || cfg.data.hflip_prob.0 > 0.0 || cfg.data.resize_to.is_some() {
            return Err(TrainError::invalid(
                "data",
                "stage clip uses CLIP's own preprocessing (shorter side to image_size, centre \
                 crop): random_crop, hflip_prob and resize_to do not apply",
            ));
        }
        let tokenizer = ClipTokenizer::bundled().map_err(|e| TrainError::Task(e.to_string()))?;
        Ok(Self {
            config: cfg.model.hf_config(image_size)?,
            seed: cfg.seed,
            max_logit_scale: cfg.model.max_logit_scale.0,
            tokenizer: Arc::new(tokenizer),
        })
    }

    /// Image and text embeddings (L2-normalised) of a batch.
    fn embed<B: Backend>(
        &self,
        model: &Clip<B>,
        batch: &Batch,
        device: &B::Device,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>), TrainError> {
        let pixels = batch.tensor::<B, 4>("pixel_values", device)?;
        let field = batch
            .field("tokens")
            .ok_or_else(|| TrainError::Task("the batch has no `tokens` field".into()))?;
        let len = field.shape[1];
        let ids: Vec<Vec<u32>> = field
            .data
            .chunks(len)
            .map(|row| row.iter().map(|&v| v as u32).collect())
            .collect();
        Ok((model.encode_image(pixels), model.encode_text_embeds(&ids)))
    }

    /// Per-sample symmetric InfoNCE: (CE(image→texts) + CE(text→images)) / 2, [N].
    fn per_sample_loss<B: Backend>(
        &self,
        model: &Clip<B>,
        image: Tensor<B, 2>,
        text: Tensor<B, 2>,
    ) -> Tensor<B, 1> {
        let n = image.dims()[0];
        let device = image.device();
        let scale = model
            .logit_scale
            .val()
            .clamp_max(self.max_logit_scale.ln())
            .exp()
            .unsqueeze::<2>();
        let logits = image.matmul(text.transpose()) * scale;
        let eye = Tensor::<B, 2>::from_data(
            TensorData::new(
                (0..n * n)
                    .map(|i| if i / n == i % n { 1.0f32 } else { 0.0 })
                    .collect(),
                [n, n],
            ),
            &device,
        );
        let i2t = (log_softmax(logits.clone(), 1) * eye.clone()).sum_dim(1);
        let t2i = (log_softmax(logits, 0) * eye).sum_dim(0).transpose();
        ((i2t + t2i) * -0.5).squeeze_dim::<1>(1)
    }
}

impl<B: AutodiffBackend> TrainTask<B> for ClipTask {
    type Model = Clip<B>;

    fn init_model(&self, device: &B::Device) -> Clip<B> {
        unclip_clip::init_random(&self.config, self.seed, device)
    }

    fn init_is_seeded(&self) -> bool {
        true
    }

    fn transform(&self, _split: Split) -> Result<Arc<dyn SampleTransform>, TrainError> {
        Ok(Arc::new(ClipSample {
            image_size: self.config.vision_config.image_size as u32,
            tokenizer: Arc::clone(&self.tokenizer),
        }))
    }

    fn random_batch(&self, batch_size: usize, key: &NoiseKey) -> Batch {
        let s = self.config.vision_config.image_size;
        let ctx = self.config.text_config.max_position_embeddings;
        let mut pixels = vec![0f32; batch_size * 3 * s * s];
        let mut tokens = vec![0f32; batch_size * ctx];
        for row in 0..batch_size {
            key.rng("random_batch", row)
                .fill_normal_f32(&mut pixels[row * 3 * s * s..(row + 1) * 3 * s * s]);
            let mut rng = key.rng("random_tokens", row);
            let len = 2 + rng.below(ctx as u64 - 2) as usize;
            let t = &mut tokens[row * ctx..(row + 1) * ctx];
            t[0] = START_OF_TEXT as f32;
            for v in &mut t[1..len - 1] {
                *v = (1 + rng.below(START_OF_TEXT as u64 - 1)) as f32;
            }
            t[len - 1] = END_OF_TEXT as f32;
        }
        Batch {
            epoch: 0,
            keys: key.indices.iter().map(|i| format!("random-{i}")).collect(),
            captions: key.indices.iter().map(|i| Some(format!("{i}"))).collect(),
            indices: key.indices.clone(),
            fields: vec![
                BatchField {
                    name: "pixel_values".into(),
                    shape: vec![batch_size, 3, s, s],
                    data: pixels,
                },
                BatchField {
                    name: "tokens".into(),
                    shape: vec![batch_size, ctx],
                    data: tokens,
                },
            ],
        }
    }

    fn loss(
        &self,
        model: &Clip<B>,
        batch: &Batch,
        _key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let (image, text) = self.embed(model, batch, device)?;
        Ok(self.per_sample_loss(model, image, text).mean())
    }

    fn validation_sums(
        &self,
        model: &Clip<B>,
        batch: &Batch,
        _key: &NoiseKey,
        device: &B::Device,
    ) -> Result<ValidationSums, TrainError> {
        let model = model.valid();
        let (image, text) = self.embed::<B::InnerBackend>(&model, batch, device)?;
        let loss = self
            .per_sample_loss(&model, image.clone(), text.clone())
            .sum()
            .into_scalar()
            .elem::<f64>();
        let n = batch.len();
        let sims: Vec<f32> = image
            .matmul(text.transpose())
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| TrainError::Task(format!("similarities: {e:?}")))?;
        let captions: Vec<&str> = batch
            .captions
            .iter()
            .map(|c| c.as_deref().unwrap_or(""))
            .collect();
        let mut metrics = Vec::new();
        for k in [1, 5] {
            metrics.push((
                format!("i2t_top{k}"),
                super::retrieval_hits(&sims, n, &captions, k, true) as f64,
            ));
            metrics.push((
                format!("t2i_top{k}"),
                super::retrieval_hits(&sims, n, &captions, k, false) as f64,
            ));
        }
        metrics.push(("chance_top1".into(), super::chance_top1(&captions)));
        Ok(ValidationSums { loss, metrics })
    }

    fn preview(
        &self,
        _model: &Clip<B>,
        _count: usize,
        _key: &NoiseKey,
        _device: &B::Device,
    ) -> Result<Option<RgbImage>, TrainError> {
        Ok(None)
    }

    fn export(
        &self,
        model: &Clip<B>,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, TrainError> {
        if layout == ExportLayout::Diffusers {
            return Err(TrainError::invalid(
                "--layout",
                "a CLIP is always exported in the HF transformers layout (what diffusers' \
                 pipelines load too); drop --layout",
            ));
        }
        let dtype = match meta.dtype {
            ExportDtype::F32 => StoreDtype::F32,
            ExportDtype::F16 => StoreDtype::F16,
            ExportDtype::Bf16 => StoreDtype::Bf16,
        };
        model
            .save_hf(out, dtype, Some(BUNDLED_TOKENIZER_JSON))
            .map_err(|e| TrainError::Task(format!("exporting the CLIP: {e}")))?;
        let info = serde_json::to_string_pretty(meta).unwrap_or_default() + "\n";
        let info_path = out.join("unclip_export.json");
        unclip_fs::write_atomic(&info_path, info.as_bytes())
            .map_err(|e| TrainError::io("cannot write", &info_path, e))?;
        Ok(ExportReport {
            config: out.join("config.json"),
            weights: out.join("model.safetensors"),
            tensors: model.to_hf_weights().len(),
            step: meta.step,
        })
    }
}
