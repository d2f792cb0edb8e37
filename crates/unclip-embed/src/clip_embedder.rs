//! Frozen CLIP (`unclip-clip`) as the encoder of the embedding job, on the CPU backend.

use crate::embed::{Embedder, TextBatch};
use anyhow::Context;
use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use unclip_clip::{Clip, ClipConfig, ClipTokenizer};
use unclip_data::store::{ClipInfo, TextEncodings};

type B = Flex;

/// A HF CLIP folder (`config.json`, `model.safetensors`, `tokenizer.json`) loaded for inference.
pub struct ClipEmbedder {
    model: Clip<B>,
    tokenizer: ClipTokenizer,
    device: burn::tensor::Device<B>,
    info: ClipInfo,
    image_size: u32,
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

impl ClipEmbedder {
    /// Load `dir`; without a `tokenizer.json` there, the tokenizer shipped with unclip is used.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let device = Default::default();
        let config_path = dir.join("config.json");
        let config = ClipConfig::from_file(&config_path)?;
        let weights = dir.join("model.safetensors");
        let model = Clip::<B>::load_hf(&config, &weights, &device)?;
        let tokenizer_path: PathBuf = dir.join("tokenizer.json");
        let (tokenizer, tokenizer_sha256) = if tokenizer_path.exists() {
            (
                ClipTokenizer::from_file(&tokenizer_path)?,
                sha256_file(&tokenizer_path)?,
            )
        } else {
            tracing::warn!(
                "{} has no tokenizer.json: using the CLIP tokenizer shipped with unclip",
                dir.display()
            );
            let mut h = Sha256::new();
            h.update(unclip_clip::BUNDLED_TOKENIZER_JSON.as_bytes());
            (ClipTokenizer::bundled()?, format!("{:x}", h.finalize()))
        };
        let context_length = unclip_clip::CONTEXT_LENGTH;
        let tokenizer = tokenizer.with_context_length(context_length);
        let info = ClipInfo {
            source: dir.display().to_string(),
            weights_sha256: sha256_file(&weights)?,
            tokenizer_sha256,
            embed_dim: config.projection_dim,
            text_width: config.text_config.hidden_size,
            context_length,
        };
        Ok(Self {
            image_size: config.vision_config.image_size as u32,
            model,
            tokenizer,
            device,
            info,
        })
    }

    pub fn image_size(&self) -> u32 {
        self.image_size
    }
}

fn to_vec<const D: usize>(t: Tensor<B, D>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a tensor back: {e:?}"))
}

impl Embedder for ClipEmbedder {
    fn info(&self) -> ClipInfo {
        self.info.clone()
    }

    fn preprocess(&self, img: &RgbImage) -> Result<Vec<f32>, String> {
        unclip_clip::preprocess(img, self.image_size).map_err(|e| e.to_string())
    }

    fn embed_images(&self, pixels: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>> {
        let s = self.image_size as usize;
        let x = Tensor::<B, 4>::from_data(TensorData::new(pixels, [n, 3, s, s]), &self.device);
        to_vec(self.model.encode_image(x))
    }

    fn embed_texts(&self, captions: &[String], encodings: bool) -> anyhow::Result<TextBatch> {
        let mut ids = Vec::with_capacity(captions.len());
        let mut mask = Vec::with_capacity(captions.len() * self.info.context_length);
        for c in captions {
            let t = self.tokenizer.encode(c)?;
            mask.extend(t.mask.iter().map(|&m| m as u8));
            ids.push(t.ids);
        }
        let out = self.model.encode_text(&ids);
        let embeds = to_vec(out.text_embeds)?;
        let encodings = if encodings {
            Some(TextEncodings {
                context: self.info.context_length,
                width: self.info.text_width,
                values: to_vec(out.text_encodings)?,
                mask,
            })
        } else {
            None
        };
        Ok(TextBatch { embeds, encodings })
    }
}

/// CLIP's preprocessing as a loader transform (field `pixel_values` [3, S, S]), so decoding and
/// preprocessing run in the loader's workers.
pub struct ClipPreprocess {
    pub image_size: u32,
}

impl unclip_data::SampleTransform for ClipPreprocess {
    fn apply(
        &self,
        sample: unclip_data::transform::DecodedSample,
        ctx: unclip_data::transform::SampleContext,
    ) -> Result<unclip_data::transform::Example, unclip_data::transform::TransformError> {
        let img = sample.decode()?;
        let data = unclip_clip::preprocess(&img, self.image_size).map_err(|e| {
            unclip_data::transform::TransformError::Other {
                reason: "transform_error",
                detail: e.to_string(),
            }
        })?;
        let s = self.image_size as usize;
        Ok(unclip_data::transform::Example {
            key: sample.key,
            caption: sample.caption,
            index: ctx.index,
            fields: vec![unclip_data::transform::Field {
                name: "pixel_values".into(),
                shape: vec![3, s, s],
                data,
            }],
        })
    }
}
