//! The public error type and the source locations it reports.

use std::fmt;
use std::sync::Arc;

/// Where a node of the merged configuration tree was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// A position in a file (or in the text given to `from_str`); 1-based line and column.
    File {
        name: Arc<str>,
        line: usize,
        col: usize,
    },
    /// A `--set` override; holds the override text (`a.b=value`).
    Override(Arc<str>),
}

impl Loc {
    pub(crate) fn file(name: &Arc<str>, line: usize, col: usize) -> Self {
        Loc::File {
            name: Arc::clone(name),
            line,
            col,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::File { name, line, col } => write!(f, "{name}:{line}:{col}"),
            Loc::Override(raw) => write!(f, "--set {raw}"),
        }
    }
}

/// An error while loading, merging, overriding, deserializing or serializing a config.
///
/// Its `Display` is one line: `<location>: <path>: <what is wrong>`, e.g.
/// `configs/run.yaml:12:5: optim.lr: invalid type: string "fast", expected f64`.
/// The location is `file:line:column` (1-based) of the place where the offending key or
/// value was written, or `--set <override>` when the value came from an override. The path
/// is dot-separated map keys with `[i]` for sequence indices (`data.shards[0]`); it is left
/// out when the error concerns the document root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.location, .path, .message))]
pub struct ConfigError {
    location: String,
    path: String,
    message: String,
}

fn render(location: &str, path: &str, message: &str) -> String {
    let mut out = String::new();
    for part in [location, path] {
        if !part.is_empty() {
            out.push_str(part);
            out.push_str(": ");
        }
    }
    out.push_str(message);
    out
}

impl ConfigError {
    pub(crate) fn at(loc: &Loc, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            location: loc.to_string(),
            path: path.into(),
            message: message.into(),
        }
    }

    /// An error without a line, e.g. an unreadable top-level file (`location` is its name).
    pub(crate) fn plain(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            path: String::new(),
            message: message.into(),
        }
    }

    /// `file:line:column` of the offending key or value, `--set <override>` for a value that
    /// came from an override, the file name alone when no line applies (unreadable file), or
    /// empty (serialization errors).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Key path of the offending value, e.g. `optim.lr` or `data.shards[0]`; empty for the root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, without location and path.
    pub fn message(&self) -> &str {
        &self.message
    }
}
