//! The errors of the data pipeline that stop a stream (bad samples never do: they are skipped
//! and counted).

use std::collections::BTreeMap;

use crate::spec::SpecError;

/// Errors that stop a loader (bad samples never do: they are skipped and counted).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("invalid data config: {0}")]
    Config(String),
    #[error("the shards hold {samples} samples, fewer than one global batch ({world_size} ranks × {batch_size}); lower batch_size or add data")]
    TooFewSamples {
        samples: u64,
        world_size: usize,
        batch_size: usize,
    },
    #[error("rank {rank} found no usable sample in epoch {epoch} (skips so far: {skips:?}); check the shards with `unclip data inspect`")]
    NoUsableSamples {
        rank: usize,
        epoch: u64,
        skips: BTreeMap<String, u64>,
    },
    #[error("cannot resume: {0}")]
    Cursor(String),
    #[error("a shard cannot be read (data.remote.strict): {0}")]
    Shard(String),
    #[error("a loader thread stopped unexpectedly")]
    Disconnected,
    #[error("batch field `{name}`: {what}")]
    Field { name: String, what: String },
}
