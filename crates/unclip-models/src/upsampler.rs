//! The unCLIP super-resolution network (64→256, 256→1024): the ADM [`UNet`] without attention
//! or context, fed `x_t` concatenated with the low-resolution image upsampled to the target
//! size (6 input channels), and, with Imagen-style noise augmentation, the augmentation
//! timestep through a second timestep MLP added to the time embedding (the UNet's
//! `class_embed` path; diffusers' `UNet2DModel` with `class_embed_type = "timestep"`).
//!
//! The corruption of the conditioning, the noise augmentation itself and the sampling loop
//! live in the stage layer and the data crate; this file is the network and its diffusers
//! layout.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde_json::Value;
use unclip_layout::{Tensors, TorchReader, TorchWriter};

use crate::{unet_from_diffusers, unet_to_diffusers, NoiseKey, TimestepMlp, TimestepMlpConfig};
use crate::{UNet, UNetConfig};

/// Shape of an [`Upsampler`].
#[derive(Debug, Clone, PartialEq)]
pub struct UpsamplerConfig {
    pub unet: UNetConfig,
    /// With the noise-level MLP of noise augmentation.
    pub noise_aug: bool,
}

impl UpsamplerConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Upsampler<B> {
        Upsampler {
            unet: self.unet.init(device),
            noise_level_embed: self
                .noise_aug
                .then(|| TimestepMlpConfig::new(self.unet.model_channels).init(device)),
        }
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

/// `model` as a diffusers `UNet2DModel` (config and state dict, PyTorch layouts): the UNet and,
/// with noise augmentation, `class_embed_type = "timestep"` with the noise-level MLP as
/// `class_embedding.linear_{1,2}` (the augmentation timestep goes through the UNet's sinusoid,
/// then this MLP).
pub fn upsampler_to_diffusers<B: Backend>(
    model: &Upsampler<B>,
    unet: &UNetConfig,
) -> Result<(Value, Tensors), String> {
    let (mut config, mut tensors) = unet_to_diffusers(&model.unet, unet)?;
    if let Some(mlp) = &model.noise_level_embed {
        config["class_embed_type"] = serde_json::json!("timestep");
        let mut w = TorchWriter::new();
        w.linear("class_embedding.linear_1", &mlp.linear_1);
        w.linear("class_embedding.linear_2", &mlp.linear_2);
        tensors.extend(w.into_tensors());
    }
    Ok((config, tensors))
}

/// Reads a diffusers `UNet2DModel` (as [`upsampler_to_diffusers`] writes it, or diffusers'
/// `save_pretrained`): `class_embed_type` null, or `"timestep"` for an upsampler with noise
/// augmentation, whose `class_embedding.linear_{1,2}` become the noise-level MLP. Returns the
/// model and its UNet's config.
pub fn upsampler_from_diffusers<B: Backend>(
    config: &Value,
    tensors: &Tensors,
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
    let (mlp_tensors, unet_tensors): (Tensors, Tensors) = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| k.starts_with("class_embedding."));
    let (unet, cfg) = unet_from_diffusers(&unet_config, &unet_tensors, device)?;
    let mut mlp = TimestepMlpConfig::new(cfg.model_channels).init::<B>(device);
    let mut r = TorchReader::<B>::new(&mlp_tensors, device);
    mlp.linear_1 = r.linear("class_embedding.linear_1", mlp.linear_1);
    mlp.linear_2 = r.linear("class_embedding.linear_2", mlp.linear_2);
    r.finish()?;
    let model = Upsampler {
        unet,
        noise_level_embed: Some(mlp),
    };
    Ok((model, cfg))
}
