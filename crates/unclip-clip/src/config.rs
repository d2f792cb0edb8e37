//! The HF transformers CLIP `config.json`, reduced to the fields that shape the network.
//!
//! Unknown keys are ignored (HF configs carry many unrelated ones); missing keys take
//! transformers' defaults, so an old or hand-written config reads the way transformers reads it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ClipError;

/// The activation inside the transformer MLPs (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// x·σ(1.702x), as in OpenAI's CLIP.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact (erf) GELU, as in many open_clip models.
    #[serde(rename = "gelu")]
    Gelu,
}

/// `text_config` of a HF `CLIPConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub bos_token_id: u32,
    /// The end-of-text id pooling looks for. transformers' legacy value 2 means "pool at the
    /// largest id", which for CLIP vocabularies is the same position.
    pub eos_token_id: u32,
    pub pad_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
        }
    }
}

/// `vision_config` of a HF `CLIPConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// A HF `CLIPConfig` (`model_type: "clip"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: usize,
    pub logit_scale_init_value: f64,
    pub initializer_factor: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
            initializer_factor: 1.0,
        }
    }
}

impl ClipConfig {
    /// Parse a `config.json` text; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, ClipError> {
        let config: Self = serde_json::from_str(text).map_err(|source| ClipError::Config {
            path: origin.to_string(),
            message: source.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Read and parse a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ClipError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ClipError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// The `config.json` transformers' `CLIPModel.from_pretrained` reads.
    pub fn to_hf_json(&self) -> String {
        let t = &self.text_config;
        let v = &self.vision_config;
        let value = serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "initializer_factor": self.initializer_factor,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "max_position_embeddings": t.max_position_embeddings,
                "hidden_act": t.hidden_act,
                "layer_norm_eps": t.layer_norm_eps,
                "projection_dim": self.projection_dim,
                "bos_token_id": t.bos_token_id,
                "eos_token_id": t.eos_token_id,
                "pad_token_id": t.pad_token_id,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_hidden_layers,
                "num_attention_heads": v.num_attention_heads,
                "num_channels": v.num_channels,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "hidden_act": v.hidden_act,
                "layer_norm_eps": v.layer_norm_eps,
                "projection_dim": self.projection_dim,
            },
        });
        // serde_json's map is ordered by key, so the file is byte-stable.
        let mut text =
            serde_json::to_string_pretty(&value).expect("a JSON value always serializes");
        text.push('\n');
        text
    }

    /// Patches per image side.
    pub fn grid_size(&self) -> usize {
        self.vision_config.image_size / self.vision_config.patch_size
    }

    fn validate(&self, origin: &str) -> Result<(), ClipError> {
        let bad = |message: String| ClipError::Config {
            path: origin.to_string(),
            message,
        };
        let t = &self.text_config;
        let v = &self.vision_config;
        for (tower, width, heads) in [
            ("text_config", t.hidden_size, t.num_attention_heads),
            ("vision_config", v.hidden_size, v.num_attention_heads),
        ] {
            if heads == 0 || width % heads != 0 {
                return Err(bad(format!(
                    "{tower}.hidden_size {width} is not divisible by num_attention_heads {heads}"
                )));
            }
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(bad(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            )));
        }
        if t.eos_token_id as usize >= t.vocab_size && t.eos_token_id != 2 {
            return Err(bad(format!(
                "text_config.eos_token_id {} is outside the vocabulary ({})",
                t.eos_token_id, t.vocab_size
            )));
        }
        Ok(())
    }
}
