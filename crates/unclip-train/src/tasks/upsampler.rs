//! `stage: upsampler` in training: the super-resolution diffusion models
//! (`unclip_stages::upsampler`) trained as ε-models (or x0 on the residual) on random crops of
//! the target.
//!
//! The low-resolution conditioning is made in the loader's workers by
//! [`SuperResTransform`] (`unclip_data::superres`): in training a random crop of
//! `model.crop_fraction` of the target side, downsampled and corrupted (`model.degradation`),
//! upsampled back. Validation and previews run at full size. Noise augmentation of the
//! conditioning (`model.noise_aug`) is the stage's.
//!
//! Previews: one row per held-out image — low-res (nearest) | bicubic | sample | ground
//! truth, sampled with `diffusion.sampling` (e.g. `ddim` with `respacing: ddim27`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use image::RgbImage;
use unclip_data::superres::SuperResTransform;
use unclip_data::transform::Crop;
use unclip_data::SampleTransform;
use unclip_data::{Batch, BatchField, ImageTransform};
use unclip_models::{NoiseKey, Upsampler};
use unclip_stages::export::{ExportLayout, ExportMeta, ExportReport};
use unclip_stages::upsampler::{UpsamplerModelConfig, UpsamplerStage};

use super::{image_metrics, to_vec};
use crate::config::{DataSource, RunConfig};
use crate::{Split, TaskFactory, TrainError, TrainTask, ValidationSums};

/// The upsampler stage's configuration, validated, with its data; the [`TaskFactory`] of
/// `stage: upsampler`.
#[derive(Clone)]
pub struct UpsamplerSpec {
    pub stage: UpsamplerStage,
    /// The training transform (crops); validation uses it with `crop = image_size`.
    pub transform: SuperResTransform,
    seed: u64,
    source: DataSource,
    preview_shards: Option<String>,
}

impl UpsamplerSpec {
    pub fn new(cfg: &RunConfig<UpsamplerModelConfig>) -> Result<Self, TrainError> {
        let d = &cfg.data;
        let stage = UpsamplerStage::new(&cfg.model, d.image_size.0 as usize, &cfg.diffusion)?;
        let base = ImageTransform {
            image_size: stage.image_size as u32,
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
        Ok(Self {
            transform: SuperResTransform {
                base,
                low_res: stage.low_res.clone(),
                factor: stage.factor() as u32,
                crop: stage.crop_size as u32,
            },
            stage,
            seed: cfg.seed,
            source: d.source,
            preview_shards: d.val_shards.clone().or_else(|| d.shards.clone()),
        })
    }

    /// The transform of `split`: training crops, full-size validation.
    pub fn transform_for(&self, split: Split) -> SuperResTransform {
        let mut t = self.transform.clone();
        if split == Split::Val {
            t.crop = self.stage.image_size as u32;
        }
        t
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
        let x0 = self.spec.stage.to_diffusion_space(image, low.clone());
        let (cond, aug_t) = self.spec.stage.augment(low.clone(), key, train);
        Ok((x0, low, cond, aug_t))
    }

    fn random_batch_sized(&self, n: usize, key: &NoiseKey, side: usize) -> Batch {
        let small = side / self.spec.stage.factor();
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
                self.random_batch_sized(count, &k, self.spec.stage.image_size)
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
        Ok(self
            .spec
            .stage
            .sample_images(&self.spec.stage.sampler, model, low, key))
    }
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
        self.spec.stage.init(device)
    }

    fn transform(&self, split: Split) -> Result<Arc<dyn SampleTransform>, TrainError> {
        Ok(Arc::new(self.spec.transform_for(split)))
    }

    fn random_batch(&self, batch_size: usize, key: &NoiseKey) -> Batch {
        self.random_batch_sized(batch_size, key, self.spec.stage.crop_size)
    }

    fn loss(
        &self,
        model: &Upsampler<B>,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let (x0, _, cond, aug_t) = self.inputs::<B>(batch, key, true, device)?;
        let (x0, x_t, noise, idx) = super::noise_keyed(&self.spec.stage.diffusion, x0, key);
        let out = model.forward(x_t.clone(), cond, &idx, aug_t.as_deref(), Some(key));
        let losses = self.spec.stage.diffusion.training_losses(
            &self.spec.stage.loss,
            out,
            x0,
            x_t,
            noise,
            &idx,
        );
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
        let diffusion = &self.spec.stage.diffusion;
        let (x0, low, cond, aug_t) = self.inputs::<I<B>>(batch, key, false, device)?;
        let (x0, x_t, noise, idx) = super::noise_keyed(diffusion, x0, key);
        let out = model.forward(x_t.clone(), cond.clone(), &idx, aug_t.as_deref(), None);
        let mut sums = super::diffusion_loss_sums(
            diffusion,
            &self.spec.stage.loss,
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
            to_vec(self.spec.stage.from_diffusion_space(x0, low.clone()))
        };
        let x0_hat = x0_mid(&model)?;
        let field = |name: &str| {
            batch
                .field(name)
                .map(|f| f.data.clone())
                .ok_or_else(|| TrainError::Task(format!("validation: no `{name}` in the batch")))
        };
        let (truth, bicubic) = (field("image")?, field("low_res")?);
        let s = self.spec.stage.image_size;
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
        if self.spec.stage.model.sample_metrics {
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
        let s = self.spec.stage.image_size;
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
        let l = self.spec.stage.low_res_size;
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
        Ok(Some(unclip_data::pixels::chw_grid(
            &pixels,
            n * columns.len(),
            s,
            Some(columns.len()),
        )))
    }

    fn export(
        &self,
        model: &Upsampler<B>,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, TrainError> {
        Ok(self.spec.stage.export(model, meta, out, layout)?)
    }
}
