//! Errors of the training engine. Each says what failed and where (key, file, step).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] unclip_config::ConfigError),
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
    #[error(transparent)]
    Data(#[from] unclip_data::DataError),
    #[error("diffusion: {0}")]
    Diffusion(#[from] unclip_diffusion::DiffusionError),
    #[error("device `{0}` needs the `{1}` cargo feature: rebuild with `--features {1}`")]
    BackendNotCompiled(String, &'static str),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("saving the checkpoint of step {step} into {} failed ({previous}): {source}", dir.display())]
    Save {
        step: u64,
        dir: PathBuf,
        /// What `latest` names now.
        previous: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {}: {why}", path.display())]
    Checkpoint { path: PathBuf, why: String },
    #[error("cannot resume from {}: the config differs from the checkpoint's in:\n{diff}", path.display())]
    IncompatibleResume { path: PathBuf, diff: String },
    #[error("stopping at step {step}: {count} optimizer steps in a row had a non-finite loss or gradient (last loss {loss}); lower optim.lr, enable optim.grad_clip_norm or check the data")]
    NonFinite { step: u64, count: u64, loss: f64 },
    #[error("refusing to save step {step}: the weights are not finite")]
    NonFiniteWeights { step: u64 },
    #[error("the data loader ended after {batches} batches (data.epochs reached?)")]
    DataExhausted { batches: u64 },
    #[error("task: {0}")]
    Task(String),
    #[error("data-parallel training stopped: rank {rank} of {world} failed: {why}")]
    RankFailed {
        rank: usize,
        world: usize,
        why: String,
    },
    /// This rank stopped because another rank failed (that rank's error is the run's).
    #[error("stopped because another rank failed")]
    Aborted,
}

impl TrainError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            what,
            path: path.into(),
            source,
        }
    }
    pub(crate) fn invalid(key: impl Into<String>, why: impl Into<String>) -> Self {
        TrainError::Invalid {
            key: key.into(),
            why: why.into(),
        }
    }
}

impl From<unclip_stages::StageError> for TrainError {
    fn from(e: unclip_stages::StageError) -> Self {
        use unclip_stages::StageError as S;
        match e {
            S::Invalid { key, why } => TrainError::Invalid { key, why },
            S::Diffusion(d) => TrainError::Diffusion(d),
            S::Io { what, path, source } => TrainError::Io { what, path, source },
            other => TrainError::Task(other.to_string()),
        }
    }
}
