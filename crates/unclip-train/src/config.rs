//! The run config: one YAML file per run, strict (unknown keys are errors), every field
//! defaulted except what only the user can know (`stage`, `data.shards`). Every default is
//! documented in docs/config.md and checked against these structs by a test.
//!
//! Range checks live in the field types ([`Positive`], [`Fraction`], [`AtLeastOne`], [`Capacity`], [`SmallCount`]) so that
//! an out-of-range value is reported by the config core with its key path and `file:line`.

use serde::{Deserialize, Serialize};
use unclip_diffusion::DiffusionConfig;

pub use unclip_config::{AtLeastOne, Capacity, Fraction, Positive, SmallCount};

pub use unclip_stages::Stage;

/// What a stage's `model:` section must be.
pub trait ModelSection:
    Serialize + serde::de::DeserializeOwned + Clone + Default + Send + Sync + 'static
{
}
impl<T: Serialize + serde::de::DeserializeOwned + Clone + Default + Send + Sync + 'static>
    ModelSection for T
{
}

/// Only the `stage` key, read first to pick the model section's type.
#[derive(Debug, Deserialize)]
pub struct StageProbe {
    pub stage: Stage,
}

/// A whole run; `M` is the stage's `model:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(bound(deserialize = "M: serde::de::DeserializeOwned + Default"))]
pub struct RunConfig<M> {
    pub stage: Stage,
    /// Seed of every random number of the run (init, data order, noise, dropout).
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub model: M,
    #[serde(default)]
    pub diffusion: DiffusionConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub ema: EmaConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub validation: ValidationConfig,
    #[serde(default)]
    pub preview: PreviewConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Devices to train on: `cpu`, `cuda:N`, `vulkan:N`. Several (all of one kind, e.g.
    /// `[cuda:0, cuda:1]` or `[cpu, cpu]`) train data-parallel: `data.batch_size` is then the
    /// global batch, split evenly (see docs/distributed.md).
    #[serde(default = "default_devices")]
    pub devices: Vec<String>,
    /// Float type of weights and arithmetic: `f32`. `bf16` is recognised and refused (burn
    /// 0.21 has no mixed precision; see docs/distributed.md).
    #[serde(default)]
    pub precision: Precision,
}

/// `precision:` of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

fn default_devices() -> Vec<String> {
    vec!["cpu".into()]
}

/// Where batches come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// Tar shards through the loader.
    #[default]
    Shards,
    /// In-memory random batches of the configured shapes (benchmarks, smoke tests).
    Random,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default)]
    pub source: DataSource,
    /// Training shards (a shard spec, see docs/data.md); needed with `source: shards`.
    #[serde(default)]
    pub shards: Option<String>,
    /// Held-out shards for the validation loss.
    #[serde(default)]
    pub val_shards: Option<String>,
    /// The embedding store (`unclip embed --out`) of `shards`, for stages conditioned on
    /// CLIP embeddings (prior, decoder).
    #[serde(default)]
    pub embeddings: Option<String>,
    /// The embedding store of `val_shards`.
    #[serde(default)]
    pub val_embeddings: Option<String>,
    /// Samples per micro-batch, over all devices together (the global micro-batch): with
    /// several `devices` each trains on `batch_size / devices` of them.
    pub batch_size: AtLeastOne,
    #[serde(default = "default_workers")]
    pub workers: SmallCount,
    #[serde(default = "default_true")]
    pub shuffle: bool,
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: Capacity,
    #[serde(default = "default_prefetch")]
    pub prefetch_batches: SmallCount,
    /// Side of the square training images, in pixels.
    #[serde(default = "default_image_size")]
    pub image_size: AtLeastOne,
    /// Shorter side after resizing, before cropping; defaults to `image_size`.
    #[serde(default)]
    pub resize_to: Option<u32>,
    /// Crop at a random position (augmentation) instead of the centre.
    #[serde(default)]
    pub random_crop: bool,
    /// Probability of a horizontal flip per sample.
    #[serde(default)]
    pub hflip_prob: Fraction,
    /// Samples (good or bad) per epoch of `shards`: skips the counting scan before training;
    /// required when `shards` includes remote ones (URLs, `pipe:`).
    #[serde(default)]
    pub samples_per_epoch: Option<AtLeastOne>,
    /// Retries, timeouts and strictness of remote shards (docs/data.md).
    #[serde(default)]
    pub remote: unclip_data::remote::RemoteConfig,
}

fn default_workers() -> SmallCount {
    SmallCount(2)
}
fn default_true() -> bool {
    true
}
fn default_shuffle_buffer() -> Capacity {
    Capacity(1000)
}
fn default_prefetch() -> SmallCount {
    SmallCount(4)
}
fn default_image_size() -> AtLeastOne {
    AtLeastOne(64)
}

/// How the learning rate moves after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrDecay {
    /// Half-cosine from `lr` to `min_lr` at `max_steps`.
    #[default]
    Cosine,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrSchedule {
    pub decay: LrDecay,
    /// Linear warm-up from 0 over this many optimizer steps.
    pub warmup_steps: u64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
}

impl Default for LrSchedule {
    fn default() -> Self {
        Self {
            decay: LrDecay::Cosine,
            warmup_steps: 0,
            min_lr: 0.0,
        }
    }
}

/// AdamW (PyTorch's defaults), schedule, clipping, accumulation, run length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: Positive,
    pub beta1: Fraction,
    pub beta2: Fraction,
    pub eps: Positive,
    /// Decoupled weight decay; never applied to norms, biases and embeddings.
    pub weight_decay: f64,
    pub lr_schedule: LrSchedule,
    /// Clip the global L2 norm of all gradients to this; absent = no clipping.
    pub grad_clip_norm: Option<Positive>,
    /// Micro-batches per optimizer step; their gradients are averaged.
    pub accumulation_steps: AtLeastOne,
    /// Optimizer steps of the run.
    pub max_steps: AtLeastOne,
    /// Stop after this many non-finite steps in a row (each is skipped).
    pub max_consecutive_nonfinite: AtLeastOne,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: Positive(1e-4),
            beta1: Fraction(0.9),
            beta2: Fraction(0.999),
            eps: Positive(1e-8),
            weight_decay: 1e-2,
            lr_schedule: LrSchedule::default(),
            grad_clip_norm: Some(Positive(1.0)),
            accumulation_steps: AtLeastOne(1),
            max_steps: AtLeastOne(10_000),
            max_consecutive_nonfinite: AtLeastOne(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmaConfig {
    pub enabled: bool,
    pub decay: Fraction,
    /// The EMA copies the weights until this step, then averages.
    pub update_after_step: u64,
    /// Update the EMA every this many optimizer steps.
    pub update_every: AtLeastOne,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            decay: Fraction(0.9999),
            update_after_step: 0,
            update_every: AtLeastOne(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Save every this many optimizer steps (and at the end of the run).
    pub every_steps: AtLeastOne,
    /// Also save when this many minutes passed since the last save.
    pub every_minutes: Option<Positive>,
    /// Keep the last K step folders (plus the best by validation loss).
    pub keep_last: AtLeastOne,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_steps: AtLeastOne(1000),
            every_minutes: Some(Positive(30.0)),
            keep_last: AtLeastOne(3),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Validation loss every this many steps; 0 = never.
    pub every_steps: u64,
    /// Batches of `data.val_shards` per validation.
    pub batches: AtLeastOne,
    /// Samples per validation batch; defaults to `data.batch_size`. Retrieval metrics rank
    /// each sample among the others of its batch, so this sets their difficulty.
    pub batch_size: Option<AtLeastOne>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            every_steps: 1000,
            batches: AtLeastOne(4),
            batch_size: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreviewConfig {
    /// A preview grid every this many steps; 0 = never.
    pub every_steps: u64,
    /// Samples in the grid.
    pub count: AtLeastOne,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        Self {
            every_steps: 0,
            count: AtLeastOne(8),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// A `metrics.jsonl` line every this many steps.
    pub every_steps: AtLeastOne,
    /// Show the progress bar (on a terminal).
    pub progress: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            every_steps: AtLeastOne(10),
            progress: true,
        }
    }
}
