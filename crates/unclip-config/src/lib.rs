//! Strict YAML configuration loading shared by every `unclip` command that takes `--config`.
//!
//! This crate turns a YAML file (plus its `include:` bases and `--set` overrides) into the
//! caller's typed config struct, and reports every problem as one line naming the original
//! `file:line:column` and the key path (`optim.lr`, `data.shards[0]`). It knows nothing about
//! the config structs themselves: callers own those (with `#[serde(deny_unknown_fields)]` so
//! unknown keys are errors) and their validation beyond types. It does no I/O besides reading
//! the config files; writing `config.resolved.yaml` is up to the caller.
//!
//! Pipeline: each file is parsed with serde-saphyr's parser (`serde_saphyr::granit_parser`)
//! into a tree whose nodes remember where they were written; `include:` bases are merged
//! under the including file (mappings merge key by key, anything else replaces); overrides
//! are applied in order; the merged tree is deserialized into `T` by a deserializer that
//! tracks the key path and attaches the node's original location to any error.
//!
//! ```
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Optim { lr: f64 }
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config { optim: Optim }
//!
//! let ok = unclip_config::from_str::<Config>("optim:\n  lr: 1e-4\n", "run.yaml", &[]).unwrap();
//! assert_eq!(ok.value.optim.lr, 1e-4);
//!
//! let err = unclip_config::from_str::<Config>("optim:\n  lr: fast\n", "run.yaml", &[])
//!     .err()
//!     .unwrap();
//! assert_eq!(
//!     err.to_string(),
//!     "run.yaml:2:7: optim.lr: invalid type: string \"fast\", expected f64"
//! );
//! ```
//!
//! YAML details: one document per file (an empty file is an empty mapping); plain scalars
//! are typed by what the target asks for, with the YAML 1.2 core schema (`yes` is a string,
//! not a bool; `name: 123` is the string `"123"` for a `String` field; `~`/empty is null);
//! quoted and block scalars are always strings; anchors, aliases and `<<` merge keys work;
//! duplicate keys, custom tags, non-scalar keys and nesting deeper than 128 are errors.
//!
//! Limitations: a top-level key named `include` is reserved; `--set` cannot address keys
//! containing `.`, `[` or `]`; values reached through an alias report the anchor's
//! location; errors raised inside `#[serde(flatten)]` or untagged/internally tagged enums
//! (which serde buffers) point at the enclosing mapping.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): a leaf under
//! every step that reads a config.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

mod de;
mod emit;
mod error;
mod load;
mod number;
mod overrides;
mod tree;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use number::{AtLeastOne, Capacity, Fraction, Positive, SmallCount};

/// A loaded config: the typed value and the merged config as YAML text.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    /// The deserialized config.
    pub value: T,
    /// The merged config (includes and overrides applied, `include` key removed) re-emitted
    /// as YAML; write it as `config.resolved.yaml`. [`from_str`] on it gives the same `T`.
    pub resolved: String,
}

/// Loads the config file `path`, merges its `include:` bases (relative to its directory),
/// applies `overrides` (`"a.b[2].c=value"`, value parsed as YAML) in order and deserializes
/// the result into `T`.
///
/// # Errors
/// Any unreadable file, YAML syntax error, duplicate key, include problem, malformed or
/// inapplicable override, or value that does not fit `T`; see [`ConfigError`].
pub fn load<T: DeserializeOwned>(
    path: &Path,
    overrides: &[String],
) -> Result<Loaded<T>, ConfigError> {
    let root = load::Loader::default().load_file(path)?;
    finish(root, overrides)
}

/// Like [`load`], for YAML text. `origin` names the text in messages; includes resolve
/// relative to the current directory.
///
/// # Errors
/// As for [`load`].
pub fn from_str<T: DeserializeOwned>(
    yaml: &str,
    origin: &str,
    overrides: &[String],
) -> Result<Loaded<T>, ConfigError> {
    let root = load::Loader::default().load_text(yaml, origin.to_owned(), None, Path::new(""))?;
    finish(root, overrides)
}

/// Serializes `value` as YAML with serde-saphyr (for default or resolved configs).
///
/// # Errors
/// When serde-saphyr cannot serialize the value (e.g. a map with non-string keys it rejects).
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, ConfigError> {
    serde_saphyr::to_string(value)
        .map_err(|e| ConfigError::plain("", format!("cannot serialize config to YAML: {e}")))
}

fn finish<T: DeserializeOwned>(
    mut root: tree::Node,
    overrides: &[String],
) -> Result<Loaded<T>, ConfigError> {
    for raw in overrides {
        overrides::apply(&mut root, raw)?;
    }
    let value = T::deserialize(de::NodeDe {
        node: &root,
        path: de::Path::Root,
    })
    .map_err(|e| e.into_config_error(&root))?;
    Ok(Loaded {
        value,
        resolved: emit::emit(&root),
    })
}
