//! Shard specifications: which tar files make a dataset.
//!
//! A spec is one or more parts joined by `::`. Each part is a file, a directory (its `.tar`,
//! `.tar.gz` and `.tgz` files, sorted), a glob (`data/*.tar`), a brace expansion
//! (`data/{00000..00099}.tar`, zero padding kept; `{a,b}` alternatives), `@list.txt` (one part
//! per line, relative to the list's folder; blank lines and `#` comments ignored), an
//! `http://` or `https://` URL or a `pipe:COMMAND` (both brace-expanded; see `crate::remote`).
//! A local part that matches nothing is an error naming it, so a typo never silently shrinks a
//! dataset; remote parts are not fetched until they are read.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("shard spec `{0}` matches no file")]
    NoMatch(String),
    #[error("shard spec `{spec}`: {what}")]
    Invalid { spec: String, what: String },
    #[error("cannot read shard list `{path}`: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// True for the file names a directory part picks up.
pub fn is_shard_file(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase());
    matches!(name, Some(n) if n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz"))
}

/// Resolve a spec into the ordered list of shard files it names.
pub fn resolve(spec: &str) -> Result<Vec<PathBuf>, SpecError> {
    resolve_in(spec, Path::new(""), 0)
}

fn resolve_in(spec: &str, base: &Path, depth: usize) -> Result<Vec<PathBuf>, SpecError> {
    if depth > 8 {
        return Err(SpecError::Invalid {
            spec: spec.into(),
            what: "shard lists nest more than 8 deep (a list including itself?)".into(),
        });
    }
    let mut out = Vec::new();
    let parts: Vec<&str> = split_parts(spec).into_iter().map(str::trim).collect();
    if parts.iter().all(|p| p.is_empty()) {
        return Err(SpecError::Invalid {
            spec: spec.into(),
            what: "empty shard spec".into(),
        });
    }
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        if let Some(list) = part.strip_prefix('@') {
            let path = base.join(list);
            let text = std::fs::read_to_string(&path).map_err(|source| SpecError::List {
                path: path.clone(),
                source,
            })?;
            let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
            let mut any = false;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                any = true;
                out.extend(resolve_in(line, &dir, depth + 1)?);
            }
            if !any {
                return Err(SpecError::NoMatch(part.into()));
            }
            continue;
        }
        if crate::remote::is_remote_spec(part) {
            // URLs and commands are not looked up here: a shard that is not there fails when
            // it is read, as a counted (or, `strict`, fatal) `unreadable_shard`.
            out.extend(expand_braces(part)?.into_iter().map(PathBuf::from));
            continue;
        }
        for expanded in expand_braces(part)? {
            out.extend(resolve_one(&expanded, base, part)?);
        }
    }
    Ok(out)
}

/// `spec` split at `::`, except inside `[…]` (an IPv6 host such as `http://[::1]:8000/`).
fn split_parts(spec: &str) -> Vec<&str> {
    let (mut parts, mut start, mut depth) = (Vec::new(), 0, 0usize);
    let b = spec.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'[' => depth += 1,
            b']' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && b.get(i + 1) == Some(&b':') => {
                parts.push(&spec[start..i]);
                i += 2;
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&spec[start..]);
    parts
}

fn resolve_one(item: &str, base: &Path, part: &str) -> Result<Vec<PathBuf>, SpecError> {
    let path = base.join(item);
    if item.contains(['*', '?', '[']) {
        let pattern = path.to_string_lossy().into_owned();
        let paths = glob::glob(&pattern).map_err(|e| SpecError::Invalid {
            spec: part.into(),
            what: e.to_string(),
        })?;
        let mut found: Vec<PathBuf> = paths
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(SpecError::NoMatch(item.into()));
        }
        return Ok(found);
    }
    if path.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&path)
            .map_err(|e| SpecError::Invalid {
                spec: part.into(),
                what: e.to_string(),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_shard_file(p))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(SpecError::NoMatch(item.into()));
        }
        return Ok(found);
    }
    if path.is_file() {
        return Ok(vec![path]);
    }
    Err(SpecError::NoMatch(item.into()))
}

/// Expand every `{a..b}` range and `{x,y}` alternative, left to right (cartesian product).
pub fn expand_braces(s: &str) -> Result<Vec<String>, SpecError> {
    let invalid = |what: &str| SpecError::Invalid {
        spec: s.into(),
        what: what.into(),
    };
    let Some(open) = s.find('{') else {
        if s.contains('}') {
            return Err(invalid("unmatched `}`"));
        }
        return Ok(vec![s.to_string()]);
    };
    let close = s[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| invalid("unmatched `{`"))?;
    let (head, body, tail) = (&s[..open], &s[open + 1..close], &s[close + 1..]);
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (start, end): (u64, u64) = match (a.parse(), b.parse()) {
            (Ok(x), Ok(y)) => (x, y),
            _ => {
                return Err(invalid(
                    "a brace range needs two integers, as in {000..099}",
                ))
            }
        };
        if end < start {
            return Err(invalid("brace range runs backwards"));
        }
        if end - start > 10_000_000 {
            return Err(invalid("brace range is larger than ten million"));
        }
        let width = if a.len() > 1 && a.starts_with('0') {
            a.len()
        } else {
            0
        };
        (start..=end).map(|i| format!("{i:0width$}")).collect()
    } else if body.contains(',') {
        body.split(',').map(str::to_string).collect()
    } else {
        return Err(invalid("braces need a range {a..b} or alternatives {x,y}"));
    };
    let tails = expand_braces(tail)?;
    let mut out = Vec::with_capacity(choices.len() * tails.len());
    for c in &choices {
        for rest in &tails {
            out.push(format!("{head}{c}{rest}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_keep_padding_and_order() {
        assert_eq!(
            expand_braces("d/{008..011}.tar").unwrap(),
            ["d/008.tar", "d/009.tar", "d/010.tar", "d/011.tar"]
        );
        assert_eq!(
            expand_braces("{a,b}-{1..2}").unwrap(),
            ["a-1", "a-2", "b-1", "b-2"]
        );
        assert_eq!(expand_braces("{9..10}").unwrap(), ["9", "10"]);
        for bad in ["{1..x}", "{3..1}", "a{", "a}", "{plain}"] {
            assert!(expand_braces(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolves_files_dirs_globs_lists_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["00000.tar", "00001.tar", "00002.tar.gz", "notes.txt"] {
            std::fs::write(d.join(name), b"").unwrap();
        }
        let s = |p: &str| d.join(p).to_string_lossy().into_owned();
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(resolve(&s("")).unwrap()),
            ["00000.tar", "00001.tar", "00002.tar.gz"]
        );
        assert_eq!(
            names(resolve(&s("*.tar")).unwrap()),
            ["00000.tar", "00001.tar"]
        );
        assert_eq!(
            names(resolve(&s("{00000..00001}.tar")).unwrap()),
            ["00000.tar", "00001.tar"]
        );
        assert_eq!(
            names(resolve(&format!("{}::{}", s("00001.tar"), s("00000.tar"))).unwrap()),
            ["00001.tar", "00000.tar"]
        );
        std::fs::write(d.join("list.txt"), "# shards\n00001.tar\n\n00002.tar.gz\n").unwrap();
        assert_eq!(
            names(resolve(&format!("@{}", s("list.txt"))).unwrap()),
            ["00001.tar", "00002.tar.gz"]
        );
        let err = resolve(&s("{00000..00003}.tar")).unwrap_err().to_string();
        assert!(
            err.contains("00002.tar") && err.contains("matches no file"),
            "{err}"
        );
        let err = resolve(&s("*.zip")).unwrap_err().to_string();
        assert!(err.contains("*.zip"), "{err}");
        assert!(resolve("  ").is_err());
        std::fs::write(d.join("self.txt"), "@self.txt\n").unwrap();
        assert!(resolve(&format!("@{}", s("self.txt"))).is_err());
    }

    #[test]
    fn urls_and_pipes_mix_with_local_parts() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("00000.tar");
        std::fs::write(&local, b"").unwrap();
        let spec = format!(
            "http://[::1]:8000/s/{{00..01}}.tar::{}::pipe:aws s3 cp s3://b/x-{{7,9}}.tar -",
            local.display()
        );
        let got: Vec<String> = resolve(&spec)
            .unwrap()
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "http://[::1]:8000/s/00.tar".to_string(),
                "http://[::1]:8000/s/01.tar".into(),
                local.display().to_string(),
                "pipe:aws s3 cp s3://b/x-7.tar -".into(),
                "pipe:aws s3 cp s3://b/x-9.tar -".into(),
            ]
        );
    }
}
