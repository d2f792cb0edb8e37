//! Reading files, resolving `include:` and merging trees.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{ConfigError, Loc};
use crate::tree::{self, push_index, Entry, Kind, Node, Source};

/// Deepest chain of includes accepted.
const MAX_INCLUDE_DEPTH: usize = 32;
/// Most included files read for one config, counting a file each time it is included: a config
/// whose includes fan out (each file including the next several times) stops here instead of
/// loading exponentially many files.
const MAX_INCLUDE_LOADS: usize = 256;
/// Most bytes of YAML read for one config, over all its files.
const MAX_TOTAL_BYTES: usize = 16 << 20;

/// Merges `overlay` on top of `base`: mappings merge key by key (recursively), anything else
/// in the overlay (scalar, sequence, explicit null) replaces the base value.
pub(crate) fn merge(base: Node, overlay: Node) -> Node {
    match (base.kind, overlay.kind) {
        (Kind::Map(mut entries), Kind::Map(over)) => {
            let mut index: HashMap<String, usize> = entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.key.text.clone(), i))
                .collect();
            for o in over {
                match index.get(&o.key.text).map(|&i| &mut entries[i]) {
                    Some(e) => {
                        let old =
                            std::mem::replace(&mut e.value, Node::plain("", o.key_loc.clone()));
                        e.value = merge(old, o.value);
                        e.key = o.key;
                        e.key_loc = o.key_loc;
                    }
                    None => {
                        index.insert(o.key.text.clone(), entries.len());
                        entries.push(o);
                    }
                }
            }
            Node {
                kind: Kind::Map(entries),
                loc: overlay.loc,
            }
        }
        (_, kind) => Node {
            kind,
            loc: overlay.loc,
        },
    }
}

/// Loads config files, following includes and detecting cycles.
#[derive(Default)]
pub(crate) struct Loader {
    /// Canonical paths and display names of the files being loaded (the include chain).
    chain: Vec<(PathBuf, String)>,
    /// Included files read so far, and bytes of YAML over all files.
    loads: usize,
    bytes: usize,
}

impl Loader {
    /// Loads the top-level file `path`.
    pub(crate) fn load_file(&mut self, path: &Path) -> Result<Node, ConfigError> {
        let display = path.display().to_string();
        let text = read_text(path, &display)
            .map_err(|msg| ConfigError::plain(&display, format!("cannot read config file: {msg}")))?
            .map_err(|(loc, msg)| ConfigError::at(&loc, "", msg))?;
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        self.load_text(&text, display, Some(canonical), dir_of(path))
    }

    /// Parses `text` (named `name` in messages) and merges its includes (relative to `dir`).
    pub(crate) fn load_text(
        &mut self,
        text: &str,
        name: String,
        canonical: Option<PathBuf>,
        dir: &Path,
    ) -> Result<Node, ConfigError> {
        self.bytes += text.len();
        if self.bytes > MAX_TOTAL_BYTES {
            return Err(ConfigError::plain(
                &name,
                format!(
                    "the config and its includes hold more than {} MiB of YAML",
                    MAX_TOTAL_BYTES >> 20
                ),
            ));
        }
        let name: Arc<str> = name.into();
        let root = tree::parse(text, Source::File(&name))?;
        let root_loc = Loc::file(&name, 1, 1);
        let mut root = match root {
            None => Node::empty_map(root_loc),
            // An empty document (`---` alone) or an explicit top-level null.
            Some(n) if n.is_null() => Node::empty_map(n.loc),
            Some(n) => n,
        };
        let Kind::Map(entries) = &mut root.kind else {
            return Ok(root);
        };
        let Some(pos) = entries
            .iter()
            .position(|e| !e.key.quoted && e.key.text == "include")
        else {
            return Ok(root);
        };
        let include = entries.remove(pos);
        let requests = include_requests(&include)?;
        if requests.is_empty() {
            return Ok(root);
        }
        self.chain
            .push((canonical.unwrap_or_default(), name.to_string()));
        let result = self.merge_includes(root, &requests, dir);
        self.chain.pop();
        result
    }

    fn merge_includes(
        &mut self,
        root: Node,
        requests: &[(String, String, Loc)],
        dir: &Path,
    ) -> Result<Node, ConfigError> {
        let mut merged: Option<Node> = None;
        for (file, path, loc) in requests {
            let base = self.load_include(file, path, loc, dir)?;
            merged = Some(match merged {
                None => base,
                Some(acc) => merge(acc, base),
            });
        }
        Ok(match merged {
            None => root,
            Some(acc) => merge(acc, root),
        })
    }

    fn load_include(
        &mut self,
        file: &str,
        key_path: &str,
        loc: &Loc,
        dir: &Path,
    ) -> Result<Node, ConfigError> {
        let target = dir.join(file);
        let display = target.display().to_string();
        if self.chain.len() >= MAX_INCLUDE_DEPTH {
            return Err(ConfigError::at(
                loc,
                key_path,
                format!("includes nested deeper than {MAX_INCLUDE_DEPTH} files"),
            ));
        }
        self.loads += 1;
        if self.loads > MAX_INCLUDE_LOADS {
            return Err(ConfigError::at(
                loc,
                key_path,
                format!(
                    "more than {MAX_INCLUDE_LOADS} included files in all (a file counts each time \
                     it is included): do the includes fan out?"
                ),
            ));
        }
        let text = match read_text(&target, &display) {
            Ok(Ok(text)) => text,
            Ok(Err((bad_loc, msg))) => return Err(ConfigError::at(&bad_loc, "", msg)),
            Err(msg) => {
                return Err(ConfigError::at(
                    loc,
                    key_path,
                    format!("cannot read included file `{display}`: {msg}"),
                ))
            }
        };
        let canonical = target.canonicalize().unwrap_or_else(|_| target.clone());
        if let Some(start) = self.chain.iter().position(|(c, _)| *c == canonical) {
            let mut names: Vec<&str> = self.chain[start..]
                .iter()
                .map(|(_, n)| n.as_str())
                .collect();
            names.push(&display);
            return Err(ConfigError::at(
                loc,
                key_path,
                format!("include cycle: {}", names.join(" -> ")),
            ));
        }
        let node = self.load_text(&text, display, Some(canonical), dir_of(&target))?;
        if !matches!(node.kind, Kind::Map(_)) {
            return Err(ConfigError::at(
                &node.loc,
                "",
                format!(
                    "an included file must hold a mapping at the top level, found {}",
                    node.kind_name()
                ),
            ));
        }
        Ok(node)
    }
}

/// The files named by an `include` entry: (file, key path for messages, location).
fn include_requests(include: &Entry) -> Result<Vec<(String, String, Loc)>, ConfigError> {
    let bad = |loc: &Loc, path: String| {
        ConfigError::at(
            loc,
            path,
            "`include` must be a file name or a list of file names",
        )
    };
    match &include.value.kind {
        Kind::Scalar(s) if s.is_null() => Ok(Vec::new()),
        Kind::Scalar(s) => Ok(vec![(
            s.text.clone(),
            "include".to_owned(),
            include.value.loc.clone(),
        )]),
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let mut p = "include".to_owned();
                push_index(&mut p, i);
                match &item.kind {
                    Kind::Scalar(s) if !s.is_null() => Ok((s.text.clone(), p, item.loc.clone())),
                    _ => Err(bad(&item.loc, p)),
                }
            })
            .collect(),
        Kind::Map(_) => Err(bad(&include.value.loc, "include".to_owned())),
    }
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// Reads a UTF-8 file. Outer error: I/O problem (message); inner error: invalid UTF-8 (location).
#[allow(clippy::type_complexity)]
fn read_text(path: &Path, display: &str) -> Result<Result<String, (Loc, String)>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            // `good` is valid UTF-8 by construction.
            let good = std::str::from_utf8(good).unwrap_or_default();
            let line = good.matches('\n').count() + 1;
            let col = good.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            let name: Arc<str> = display.into();
            Err((
                Loc::file(&name, line, col),
                "file is not valid UTF-8 text".to_owned(),
            ))
        }
    })
}
