//! What a stage plugs into the loop: its model, its loss, its validation metric, its preview.
//! Each stage (the engine's own `denoise` test task today; prior, decoder and upsamplers as
//! they land) implements [`TrainTask`]; the [`Trainer`](crate::Trainer) owns everything else.

use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use image::RgbImage;
use unclip_data::{Batch, SampleTransform};
use unclip_models::NoiseKey;

use crate::TrainError;

/// One stage's part of a run. Every random number it draws (timesteps, noise, CFG drop
/// masks, dropout) must come from the [`NoiseKey`] it is handed.
pub trait TrainTask<B: AutodiffBackend> {
    type Model: AutodiffModule<B> + Clone + 'static;

    /// A freshly constructed model. Burn's initialisers may be used: the trainer then redraws
    /// every random parameter from the run's keyed RNG (`unclip_models::keyed_init`) and
    /// renumbers the parameter ids.
    fn init_model(&self, device: &B::Device) -> Self::Model;

    /// The per-sample transform the shard loader runs in its workers.
    fn transform(&self) -> Arc<dyn SampleTransform>;

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

    /// Sum of per-sample validation losses of `batch` (dropout off); `key` is the same at
    /// every validation, so each held-out sample always sees the same timestep and noise.
    fn validation_loss_sum(
        &self,
        model: &Self::Model,
        batch: &Batch,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<f64, TrainError>;

    /// A grid of `count` samples from `model`, drawn from `key`; `None` when the stage has
    /// nothing to show.
    fn preview(
        &self,
        model: &Self::Model,
        count: usize,
        key: &NoiseKey,
        device: &B::Device,
    ) -> Result<Option<RgbImage>, TrainError>;
}
