//! Errors of the stage layer: a config value that cannot build the stage (with its key), an
//! export that cannot be read or written (with its file), a diffusion setting.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A config value (`model.channel_mult`, `--layout diffusers`, …) that cannot work.
    #[error("{key}: {why}")]
    Invalid { key: String, why: String },
    #[error("diffusion: {0}")]
    Diffusion(#[from] unclip_diffusion::DiffusionError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An export folder that is not what it should be (format, stage, weights).
    #[error("{}: {why}", path.display())]
    Export { path: PathBuf, why: String },
    /// Inputs that do not fit the network (shapes, missing fields).
    #[error("{0}")]
    Input(String),
}

impl StageError {
    pub(crate) fn invalid(key: impl Into<String>, why: impl Into<String>) -> Self {
        StageError::Invalid {
            key: key.into(),
            why: why.into(),
        }
    }
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
