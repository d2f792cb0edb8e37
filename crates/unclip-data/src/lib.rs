//! The shard data pipeline: image–caption tar shards (webdataset / img2dataset layout) streamed
//! into batches, and the embedding stores read beside them.
//!
//! Shard specs name the tars ([`spec`]); [`shard`] groups tar members into samples; [`sample`]
//! reads a sample's members and checks them; [`decode`] turns bytes into pixels and text;
//! [`transform`] holds the standard image transform and the per-task hook, with the
//! upsamplers' training pairs in [`superres`] and their corruptions in [`degrade`]; [`pixels`]
//! converts between images and CHW tensors; [`loader`] shuffles, partitions across ranks and
//! workers, batches ([`batch`]), and saves/restores its position exactly; [`store`] and
//! [`join`] read the embedding stores `unclip embed` writes and join them to samples by key;
//! [`parallel`] and [`progress`] run and show the jobs that walk whole shards (pack, synth,
//! inspect, embed).
//! Every random choice comes from `unclip-rng`, keyed by (seed, epoch, global sample index), so
//! a stream is the same whatever the number of workers and ranks. This crate knows nothing of
//! models or training.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): **data**, the
//! first step; everything after reads shards and stores through it.

pub mod batch;
pub mod config;
pub mod decode;
pub mod degrade;
mod error;
pub mod fingerprint;
pub mod join;
mod jpeg;
pub mod loader;
pub mod parallel;
pub mod pixels;
pub mod progress;
pub mod remote;
pub mod sample;
pub mod shard;
pub mod spec;
pub mod store;
pub mod superres;
mod tarstream;
pub mod transform;

pub use batch::{Batch, BatchField};
pub use config::{CaptionSource, LoaderConfig, Partition};
pub use error::DataError;
pub use join::WithEmbeddings;
pub use loader::{count_for_progress, count_samples, Cursor, Loader, LoaderSummary};
pub use transform::{ImageTransform, SampleTransform};
