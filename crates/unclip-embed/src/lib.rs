//! The embed job behind `unclip embed`: frozen CLIP image and text embeddings computed once
//! per shard and stored beside the shards (`unclip_data::store`), so the trainers never run
//! CLIP on the data again.
//!
//! [`embed`] streams shards through an [`Embedder`] (samples read by the loader's own
//! `unclip_data::sample` path, so a sample the loader would skip is recorded missing under the
//! same reason), writes each shard's file atomically and marks it complete in the manifest, so a
//! killed job resumes where it stopped. [`clip_embedder`] is the production encoder (a HF CLIP
//! folder through `unclip-clip`); [`import`] turns clip-retrieval output (`.npy` embeddings
//! read by `npy`, parquet metadata) into the same store format. Training reads stores through
//! `unclip-data`; this crate only writes them.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): **embed**,
//! between the shards and the trainers.

pub mod clip_embedder;
pub mod embed;
pub mod import;
mod npy;

pub use clip_embedder::ClipEmbedder;
pub use embed::{embed, EmbedJob, EmbedReport, Embedder, TextBatch};
pub use import::{import_clip_retrieval, ImportOptions, ImportReport};
