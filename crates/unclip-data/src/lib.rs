//! The shard data pipeline: image–caption tar shards (webdataset / img2dataset layout) streamed
//! into batches.
//!
//! Shard specs name the tars ([`spec`]); [`shard`] groups tar members into samples;
//! [`decode`] turns bytes into pixels and text; [`transform`] holds the standard image transform
//! and the per-task hook; [`loader`] shuffles, partitions across ranks and workers, batches, and
//! saves/restores its position exactly. Every random choice comes from `unclip-rng`, keyed by
//! (seed, epoch, global sample index), so a stream is the same whatever the number of workers
//! and ranks. This crate knows nothing of models or training.

pub mod config;
pub mod decode;
pub mod join;
pub mod loader;
pub mod shard;
pub mod spec;
pub mod store;
pub mod transform;

pub use config::{CaptionSource, LoaderConfig, Partition};
pub use join::WithEmbeddings;
pub use loader::{count_samples, Batch, BatchField, Cursor, DataError, Loader, LoaderSummary};
pub use transform::{ImageTransform, SampleTransform};
