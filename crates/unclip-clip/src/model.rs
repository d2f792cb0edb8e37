//! The two-tower CLIP model: loading (HF and open_clip layouts), the embedding outputs, and
//! writing it back in the HF layout.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use crate::config::ClipConfig;
use crate::error::ClipError;
use crate::layers::{linear_from, linear_into, to_burn, to_host};
use crate::layout::{check_hf, open_clip_to_hf, take};
use crate::text::TextTransformer;
use crate::vision::VisionTransformer;
use crate::weights::{read_safetensors, safetensors_bytes, HostTensor, StoreDtype, WeightMap};

/// A HF transformers `CLIPModel` in burn (field names = checkpoint keys).
#[derive(Module, Debug)]
pub struct Clip<B: Backend> {
    pub text_model: TextTransformer<B>,
    pub vision_model: VisionTransformer<B>,
    /// [text width → projection_dim], no bias.
    pub text_projection: Linear<B>,
    /// [vision width → projection_dim], no bias.
    pub visual_projection: Linear<B>,
    /// log of the contrastive temperature's inverse, shape [1] (a scalar on disk).
    pub logit_scale: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub config: ClipConfig,
}

/// Text-side outputs for a batch of token rows.
#[derive(Debug, Clone)]
pub struct TextEmbedding<B: Backend> {
    /// L2-normalised projected embeddings: [batch, projection_dim].
    pub text_embeds: Tensor<B, 2>,
    /// Last hidden states after the final LayerNorm: [batch, len, width].
    pub text_encodings: Tensor<B, 3>,
    /// True up to and including each row's end-of-text token: [batch, len].
    pub text_mask: Tensor<B, 2, Bool>,
}

fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt();
    x / norm
}

impl<B: Backend> Clip<B> {
    /// Build from a HF-layout weight map; `origin` names the source in errors.
    pub fn from_hf_weights(
        config: &ClipConfig,
        mut map: WeightMap,
        origin: &str,
        device: &B::Device,
    ) -> Result<Self, ClipError> {
        check_hf(origin, config, &mut map)?;
        let text_model = TextTransformer::from_weights(&mut map, &config.text_config, device);
        let vision_model = VisionTransformer::from_weights(&mut map, &config.vision_config, device);
        let scale = take(&mut map, "logit_scale");
        Ok(Self {
            text_model,
            vision_model,
            text_projection: linear_from(&mut map, "text_projection", false, device),
            visual_projection: linear_from(&mut map, "visual_projection", false, device),
            logit_scale: Param::from_tensor(to_burn(HostTensor::new(vec![1], scale.data), device)),
            config: config.clone(),
        })
    }

    /// Load a HF transformers `CLIPModel` safetensors file (f32/f16/bf16) for `config`.
    pub fn load_hf(
        config: &ClipConfig,
        weights: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<Self, ClipError> {
        let origin = weights.as_ref().display().to_string();
        Self::from_hf_weights(config, read_safetensors(weights)?, &origin, device)
    }

    /// Load a HF folder: `config.json` + `model.safetensors`.
    pub fn load_hf_dir(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, ClipError> {
        let dir = dir.as_ref();
        let config = ClipConfig::from_file(dir.join("config.json"))?;
        Self::load_hf(&config, dir.join("model.safetensors"), device)
    }

    /// Load an open_clip `CLIP` state dict saved as safetensors (its own key layout), described
    /// by a HF-style `config`.
    pub fn load_open_clip(
        config: &ClipConfig,
        weights: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<Self, ClipError> {
        let origin = weights.as_ref().display().to_string();
        let map = open_clip_to_hf(&origin, config, read_safetensors(weights)?)?;
        Self::from_hf_weights(config, map, &origin, device)
    }

    /// L2-normalised image embeddings from CLIP-normalised `pixel_values` [batch, 3, size, size].
    pub fn encode_image(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 2> {
        l2_normalize(
            self.visual_projection
                .forward(self.vision_model.forward(pixel_values)),
        )
    }

    /// Text embeddings, encodings and mask from equally long rows of token ids (e.g.
    /// [`crate::Tokens::ids`]); pooling is at each row's first end-of-text id, so both padding
    /// conventions (0, or the end id) give the same result.
    ///
    /// # Panics
    /// If the rows differ in length or are longer than `max_position_embeddings`.
    pub fn encode_text(&self, ids: &[Vec<u32>]) -> TextEmbedding<B> {
        let features = self.text_model.forward(ids);
        TextEmbedding {
            text_embeds: l2_normalize(self.text_projection.forward(features.pooled)),
            text_encodings: features.encodings,
            text_mask: features.mask,
        }
    }

    /// The L2-normalised text embeddings of `ids` alone, computed over each batch's rows cut
    /// after the last end-of-text token of any row. The text tower is causal, so a row's pooled
    /// encoding never sees the tokens after its pool position: the result equals
    /// `encode_text(ids).text_embeds` (up to float rounding) at a fraction of the cost when the
    /// captions are much shorter than the context (77).
    pub fn encode_text_embeds(&self, ids: &[Vec<u32>]) -> Tensor<B, 2> {
        let eos = self.text_model.eos_token_id;
        let keep = ids
            .iter()
            .map(|r| crate::text::pool_position(r, eos) + 1)
            .max()
            .unwrap_or(0);
        let cut: Vec<Vec<u32>> = ids
            .iter()
            .map(|r| r[..keep.min(r.len())].to_vec())
            .collect();
        self.encode_text(&cut).text_embeds
    }

    /// The weights under HF `CLIPModel` names, PyTorch layouts.
    pub fn to_hf_weights(&self) -> WeightMap {
        let mut out = WeightMap::new();
        self.text_model.to_weights(&mut out);
        self.vision_model.to_weights(&mut out);
        linear_into(&self.text_projection, "text_projection", &mut out);
        linear_into(&self.visual_projection, "visual_projection", &mut out);
        let scale = to_host(self.logit_scale.val());
        out.insert("logit_scale".into(), HostTensor::new(vec![], scale.data));
        out
    }

    /// Write a HF folder transformers' `CLIPModel.from_pretrained` loads: `config.json`,
    /// `model.safetensors` (in `dtype`) and, when given, `tokenizer.json`. Each file is written
    /// atomically; identical models give byte-identical files.
    pub fn save_hf(
        &self,
        dir: impl AsRef<Path>,
        dtype: StoreDtype,
        tokenizer_json: Option<&str>,
    ) -> Result<(), ClipError> {
        let dir = dir.as_ref();
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| ClipError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let bytes = safetensors_bytes(&self.to_hf_weights(), dtype)?;
        let config = self.config.to_hf_json();
        let mut files: Vec<(&str, &[u8])> = vec![
            ("model.safetensors", &bytes),
            ("config.json", config.as_bytes()),
        ];
        if let Some(tok) = tokenizer_json {
            files.push(("tokenizer.json", tok.as_bytes()));
        }
        for (name, content) in files {
            let path = dir.join(name);
            unclip_fs::write_atomic(&path, content).map_err(io(&path))?;
        }
        Ok(())
    }
}
