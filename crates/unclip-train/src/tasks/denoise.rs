//! `stage: denoise` — a tiny convolutional ε-model on small shapes-world images, trained with
//! the diffusion core. It exists so the engine can be tested end to end on real shards in
//! seconds: it has dropout, a timestep MLP, a norm and biases, like the real stages.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use unclip_data::transform::Crop;
use unclip_data::{Batch, BatchField, ImageTransform, SampleTransform};
use unclip_diffusion::{DiffusionConfig, GaussianDiffusion, LossOptions, Sampler};
use unclip_models::{KeyedDropout, NoiseKey, TimestepMlp, TimestepMlpConfig};

use super::Noised;
use crate::config::{AtLeastOne, DataConfig, Fraction};
use crate::{Split, TrainError, TrainTask, ValidationSums};

/// The `model:` section of `stage: denoise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenoiseModelConfig {
    /// Feature channels of the hidden convolutions (a multiple of 4).
    pub channels: AtLeastOne,
    /// Dropout probability after the norm.
    pub dropout: Fraction,
}

impl Default for DenoiseModelConfig {
    fn default() -> Self {
        Self {
            channels: AtLeastOne(16),
            dropout: Fraction(0.1),
        }
    }
}

#[derive(Module, Debug)]
pub struct Denoiser<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub time_embed: TimestepMlp<B>,
    pub time_proj: Linear<B>,
    pub norm: GroupNorm<B>,
    pub dropout: KeyedDropout,
    pub conv_mid: Conv2d<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Denoiser<B> {
    pub fn new(cfg: &DenoiseModelConfig, device: &B::Device) -> Self {
        let c = cfg.channels.0 as usize;
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device)
        };
        Denoiser {
            conv_in: conv(3, c),
            time_embed: TimestepMlpConfig::new(c).init(device),
            time_proj: LinearConfig::new(4 * c, c).init(device),
            norm: GroupNormConfig::new(4.min(c), c).init(device),
            dropout: KeyedDropout::new(cfg.dropout.0),
            conv_mid: conv(c, c),
            conv_out: conv(c, 3),
        }
    }

    /// ε̂ for `x_t` `[N, 3, S, S]` at timesteps `t`; dropout only with a key.
    pub fn forward(&self, x_t: Tensor<B, 4>, t: &[usize], key: Option<&NoiseKey>) -> Tensor<B, 4> {
        let device = x_t.device();
        let t: Vec<f64> = t.iter().map(|&s| s as f64).collect();
        let emb = self
            .time_proj
            .forward(silu(self.time_embed.forward(&t, &device)));
        let [n, c] = emb.dims();
        let h = self.conv_in.forward(x_t) + emb.reshape([n, c, 1, 1]);
        let h = silu(self.norm.forward(h));
        let h = self.dropout.forward(h, key, "mid");
        self.conv_out.forward(silu(self.conv_mid.forward(h)))
    }
}

/// The denoise task: model config, image transform and diffusion process.
#[derive(Clone)]
pub struct DenoiseTask {
    pub model: DenoiseModelConfig,
    pub image_size: usize,
    transform: ImageTransform,
    diffusion: GaussianDiffusion,
    sampler: Sampler,
    loss: LossOptions,
}

impl DenoiseTask {
    pub fn new(
        model: DenoiseModelConfig,
        data: &DataConfig,
        diffusion: &DiffusionConfig,
    ) -> Result<Self, TrainError> {
        if model.channels.0.checked_rem(4) != Some(0) {
            return Err(TrainError::invalid(
                "model.channels",
                format!("must be a multiple of 4, got {}", model.channels.0),
            ));
        }
        let image_size = data.image_size.0 as u32;
        let transform = ImageTransform {
            image_size,
            resize_to: data.resize_to,
            crop: if data.random_crop {
                Crop::Random
            } else {
                Crop::Center
            },
            hflip_prob: data.hflip_prob.0,
        };
        transform
            .validate()
            .map_err(|why| TrainError::invalid("data", why))?;
        Ok(Self {
            model,
            image_size: image_size as usize,
            transform,
            diffusion: diffusion.diffusion()?,
            sampler: diffusion.sampler()?,
            loss: diffusion.loss_options(),
        })
    }

    fn noised<B: Backend>(
        &self,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Noised<B, 4>, TrainError> {
        // The loader gives images in [-1, 1] already.
        let x0 = batch.tensor::<B, 4>("image", device)?;
        Ok(super::noise_keyed(&self.diffusion, x0, key))
    }
}

impl<B: AutodiffBackend> TrainTask<B> for DenoiseTask {
    type Model = Denoiser<B>;

    fn init_model(&self, device: &B::Device) -> Denoiser<B> {
        Denoiser::new(&self.model, device)
    }

    fn transform(&self, _split: Split) -> Result<Arc<dyn SampleTransform>, TrainError> {
        Ok(Arc::new(self.transform.clone()))
    }

    fn random_batch(&self, batch_size: usize, key: &NoiseKey) -> Batch {
        let s = self.image_size;
        let mut data = vec![0f32; batch_size * 3 * s * s];
        for (row, chunk) in data.chunks_mut(3 * s * s).enumerate() {
            let mut rng = key.rng("random_batch", row);
            chunk
                .iter_mut()
                .for_each(|v| *v = rng.uniform_f32() * 2.0 - 1.0);
        }
        Batch {
            epoch: 0,
            keys: key.indices.iter().map(|i| format!("random-{i}")).collect(),
            captions: vec![None; batch_size],
            indices: key.indices.clone(),
            fields: vec![BatchField {
                name: "image".into(),
                shape: vec![batch_size, 3, s, s],
                data,
            }],
        }
    }

    fn loss(
        &self,
        model: &Denoiser<B>,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let (x0, x_t, noise, idx) = self.noised::<B>(batch, key, device)?;
        let out = model.forward(x_t.clone(), &idx, Some(key));
        let losses = self
            .diffusion
            .training_losses(&self.loss, out, x0, x_t, noise, &idx);
        Ok(losses.loss.mean())
    }

    fn validation_sums(
        &self,
        model: &Denoiser<B>,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<ValidationSums, TrainError> {
        let (x0, x_t, noise, idx) = self.noised::<B>(batch, key, device)?;
        let out = model.forward(x_t.clone(), &idx, None);
        Ok(super::diffusion_loss_sums(
            &self.diffusion,
            &self.loss,
            (out, x0, x_t, noise),
            &idx,
        ))
    }

    fn preview(
        &self,
        model: &Denoiser<B>,
        count: usize,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Option<RgbImage>, TrainError> {
        let s = self.image_size;
        let shape = [count, 3, s, s];
        let normal = |purpose: &str, step: u64| {
            unclip_stages::keyed_normal::<B, 4>(key.seed, purpose, step, shape, device)
        };
        let x0 = self.sampler.sample(
            normal("preview_start", key.step),
            |x, t| model.forward(x, t, None),
            |step| normal("preview_step", key.step.wrapping_add(step as u64 + 1)),
            |_| {},
        );
        let pixels: Vec<f32> = super::to_vec(x0)?;
        Ok(Some(unclip_data::pixels::chw_grid(&pixels, count, s, None)))
    }
}
