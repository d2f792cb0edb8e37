use thiserror::Error;

/// What can be wrong with a schedule, a respacing string or a diffusion config.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DiffusionError {
    #[error("a diffusion schedule needs at least 2 timesteps, got {0}")]
    TooFewTimesteps(usize),
    #[error("beta {index} is {value}; every beta must lie in (0, 1)")]
    InvalidBeta { index: usize, value: f64 },
    #[error("timestep {t} is outside the {len}-step training schedule")]
    TimestepOutOfRange { t: usize, len: usize },
    #[error("respace the full training schedule, not an already respaced one")]
    AlreadyRespaced,
    #[error("invalid respacing {spec:?}: {why}")]
    Respacing { spec: String, why: String },
    #[error("invalid diffusion config: `{key}` {why}")]
    Config { key: &'static str, why: String },
}
