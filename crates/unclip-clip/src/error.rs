//! The crate's error type: every variant names the file (and keys) it is about.

/// Everything loading, saving, tokenizing or preprocessing can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid CLIP config: {message}")]
    Config { path: String, message: String },
    #[error("{path}: not a readable safetensors file: {message}")]
    Safetensors { path: String, message: String },
    #[error("{path}: tensor `{key}` has dtype {dtype}; only F32, F16 and BF16 are supported")]
    Dtype {
        path: String,
        key: String,
        dtype: String,
    },
    #[error(
        "{path}: weights do not match the {layout} layout of this config\n  missing ({n_missing}): {missing}\n  unexpected ({n_unexpected}): {unexpected}\n  wrong shape ({n_shape}): {shapes}",
        n_missing = missing.len(),
        missing = list(missing),
        n_unexpected = unexpected.len(),
        unexpected = list(unexpected),
        n_shape = wrong_shape.len(),
        shapes = list(wrong_shape)
    )]
    Keys {
        path: String,
        layout: &'static str,
        missing: Vec<String>,
        unexpected: Vec<String>,
        wrong_shape: Vec<String>,
    },
    #[error("tokenizer {origin}: {message}")]
    Tokenizer { origin: String, message: String },
    #[error("image preprocessing: {0}")]
    Preprocess(String),
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(", ")
    }
}
