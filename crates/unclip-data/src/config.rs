//! The loader's settings (the `data` section of run configs).

use serde::{Deserialize, Serialize};

fn default_workers() -> usize {
    2
}
fn default_true() -> bool {
    true
}
fn default_shuffle_buffer() -> usize {
    1000
}
fn default_prefetch_batches() -> usize {
    4
}
fn default_max_pixels() -> u64 {
    crate::decode::DEFAULT_MAX_PIXELS
}

/// How a sample's caption is found.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CaptionSource {
    /// The `.txt` member (webdataset / img2dataset convention).
    #[default]
    Txt,
    /// A string field of the `.json` member; a dotted path such as `meta.caption`.
    Json(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    /// Shard spec: paths, directories, globs, brace ranges, `a::b` lists, `@list.txt`.
    pub shards: String,
    /// Samples per batch on each rank.
    pub batch_size: usize,
    /// Decode/transform threads per rank.
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default)]
    pub seed: u64,
    /// Shuffle shard order and samples (through a buffer) every epoch.
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Samples held in the shuffle buffer (webdataset's `shuffle(n)`); from local uncompressed
    /// shards they are references, so a large buffer costs little memory; from remote or gzipped
    /// shards they hold their bytes (buffer × sample size).
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Batches decoded ahead of the consumer, per rank: bounds memory.
    #[serde(default = "default_prefetch_batches")]
    pub prefetch_batches: usize,
    #[serde(default)]
    pub caption: CaptionSource,
    /// Skip samples without a caption (`missing_caption`). Off for caption-free tasks.
    #[serde(default = "default_true")]
    pub require_caption: bool,
    /// Images with more pixels are skipped before decoding (`image_too_large`).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Training mode: every rank yields exactly `samples_per_epoch / (world × batch)` full
    /// batches per epoch (refilling from its own partition when samples turn out bad). Off:
    /// one pass, every good sample once, the last batch possibly short.
    #[serde(default = "default_true")]
    pub drop_last: bool,
    /// Stop after this many epochs; endless when absent.
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Samples per epoch, to skip the counting scan (it must equal the number of samples,
    /// good or bad, in the shards). Required with remote shards in training mode: counting
    /// them would download them.
    #[serde(default)]
    pub samples_per_epoch: Option<u64>,
    /// Retries, timeouts and strictness of remote shards (URLs, `pipe:` commands).
    #[serde(default)]
    pub remote: crate::remote::RemoteConfig,
}

impl LoaderConfig {
    pub fn new(shards: impl Into<String>, batch_size: usize) -> Self {
        Self {
            shards: shards.into(),
            batch_size,
            workers: default_workers(),
            seed: 0,
            shuffle: true,
            shuffle_buffer: default_shuffle_buffer(),
            prefetch_batches: default_prefetch_batches(),
            caption: CaptionSource::Txt,
            require_caption: true,
            max_pixels: default_max_pixels(),
            drop_last: true,
            epochs: None,
            samples_per_epoch: None,
            remote: Default::default(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        if self.prefetch_batches == 0 {
            return Err("prefetch_batches must be at least 1".into());
        }
        if self.epochs == Some(0) {
            return Err("epochs must be at least 1 (or absent for an endless stream)".into());
        }
        Ok(())
    }
}

/// Which slice of the stream a loader yields: rank `rank` of `world_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub rank: usize,
    pub world_size: usize,
}

impl Partition {
    pub const SINGLE: Partition = Partition {
        rank: 0,
        world_size: 1,
    };
}
