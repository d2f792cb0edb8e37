//! What a stage plugs into the loop: its model, its loss, its validation metric, its preview.
//! Each stage (clip, prior, decoder, upsampler, and the engine's own `denoise` test task)
//! implements [`TrainTask`], built per backend by its [`TaskFactory`]; the
//! [`Trainer`](crate::Trainer) owns everything else.

use std::path::Path;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use image::RgbImage;
use unclip_data::{Batch, SampleTransform};
use unclip_models::NoiseKey;

use crate::TrainError;
use unclip_stages::export::{write_native, ExportLayout, ExportMeta, ExportReport};

/// Which data stream a transform serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// Per-sample sums of one validation batch: the loss and any stage metrics (retrieval
/// accuracy, cosine similarities…), each divided by the sample count when reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidationSums {
    pub loss: f64,
    pub metrics: Vec<(String, f64)>,
}

/// One stage's part of a run. Every random number it draws (timesteps, noise, CFG drop
/// masks, dropout) must come from the [`NoiseKey`] it is handed.
pub trait TrainTask<B: AutodiffBackend> {
    type Model: AutodiffModule<B> + Clone + 'static;

    /// A freshly constructed model. Burn's initialisers may be used: the trainer then redraws
    /// every random parameter from the run's keyed RNG (`unclip_models::keyed_init`) and
    /// renumbers the parameter ids.
    fn init_model(&self, device: &B::Device) -> Self::Model;

    /// The per-sample transform the shard loader runs in its workers, for the training
    /// (`data.shards`) or the validation (`data.val_shards`) stream.
    fn transform(&self, split: Split) -> Result<Arc<dyn SampleTransform>, TrainError>;

    /// A batch of `batch_size` in-memory random samples of the shapes the task trains on
    /// (`data.source: random`), drawn from `key`.
    fn random_batch(&self, batch_size: usize, key: &NoiseKey) -> Batch;

    /// The scalar training loss of `batch` (mean over samples), dropout on.
    fn loss(
        &self,
        model: &Self::Model,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>, TrainError>;

    /// Sums over the samples of `batch` of the validation loss and of the stage's own
    /// metrics (dropout off); the trainer divides by the number of samples. `key` is the same
    /// at every validation, so each held-out sample always sees the same timestep and noise.
    fn validation_sums(
        &self,
        model: &Self::Model,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<ValidationSums, TrainError>;

    /// True when [`init_model`](Self::init_model) already draws every random weight from the
    /// run's seed with the stage's own scheme (CLIP's, say); the trainer then keeps it as is
    /// instead of redrawing it with `unclip_models::keyed_init`.
    fn init_is_seeded(&self) -> bool {
        false
    }

    /// A grid of `count` samples from `model`, drawn from `key`; `None` when the stage has
    /// nothing to show.
    fn preview(
        &self,
        model: &Self::Model,
        count: usize,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Option<RgbImage>, TrainError>;

    /// Writes `model` (already holding the exported weights) into `out`. The default writes
    /// the native layout (`config.json` + `model.safetensors`); stages with another layout
    /// (CLIP's HF folder, diffusers') override it.
    fn export(
        &self,
        model: &Self::Model,
        meta: &ExportMeta,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, TrainError> {
        match layout {
            ExportLayout::Native => Ok(write_native::<B, _>(model, meta, out)?),
            ExportLayout::Diffusers => Err(TrainError::invalid(
                "--layout",
                format!("stage {:?} has no diffusers layout", meta.stage),
            )),
        }
    }
}

/// Builds a stage's task on any backend (frozen models it needs are loaded on `device`).
/// Shared by the threads of a data-parallel run, each building its own task.
pub trait TaskFactory: Sync {
    type Task<B: AutodiffBackend>: TrainTask<B>;
    fn build<B: AutodiffBackend>(&self, device: &B::Device) -> Result<Self::Task<B>, TrainError>;
}
