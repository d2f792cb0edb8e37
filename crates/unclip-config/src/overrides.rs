//! `--set path=value` overrides.

use std::sync::Arc;

use crate::error::{ConfigError, Loc};
use crate::tree::{self, push_index, push_key, Entry, Kind, Node, Scalar, Source};

/// Most path segments (keys and indices) in one override.
const MAX_SEGMENTS: usize = 32;

#[derive(Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Applies one override (`a.b[2].c=value`) to `root`.
pub(crate) fn apply(root: &mut Node, raw: &str) -> Result<(), ConfigError> {
    let loc = Loc::Override(Arc::from(raw));
    let Some((path_text, value_text)) = raw.split_once('=') else {
        return Err(ConfigError::at(
            &loc,
            "",
            "malformed override: expected `path=value` (e.g. `optim.lr=1e-4`)",
        ));
    };
    let path_text = path_text.trim();
    let segs = parse_path(path_text).map_err(|msg| {
        ConfigError::at(
            &loc,
            "",
            format!("malformed override path `{path_text}`: {msg}"),
        )
    })?;
    let value = parse_value(value_text, &loc, path_text)?;
    set(root, &segs, value, &loc)
}

/// Parses an override value as a YAML flow value: a scalar (typed like in a file), a quoted
/// string or a flow collection (`[a, b]`, `{k: v}`). Text that is not a flow value (`a: b`,
/// `- x`, `@x`) is taken as a literal string; text that starts like a flow collection or a
/// quoted string but does not parse is an error.
fn parse_value(text: &str, loc: &Loc, path: &str) -> Result<Node, ConfigError> {
    let opens_flow = text.trim_start().starts_with(['[', '{', '"', '\'']);
    let literal = || Node {
        kind: Kind::Scalar(Scalar {
            text: text.to_owned(),
            quoted: true,
        }),
        loc: loc.clone(),
    };
    match tree::parse(text, Source::Fixed(loc)) {
        Ok(None) => Ok(Node::plain("", loc.clone())),
        Ok(Some(node)) if matches!(node.kind, Kind::Scalar(_)) || opens_flow => Ok(node),
        Ok(Some(_)) => Ok(literal()),
        Err(_) if !opens_flow => Ok(literal()),
        Err(e) => Err(ConfigError::at(
            loc,
            path,
            format!("invalid YAML value `{text}`: {}", e.message()),
        )),
    }
}

fn parse_path(text: &str) -> Result<Vec<Seg>, String> {
    if text.is_empty() {
        return Err("empty path".to_owned());
    }
    let mut segs = Vec::new();
    for part in text.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if key.is_empty() {
            return Err("empty key (paths look like `a.b.c` or `list[2].c`)".to_owned());
        }
        if key.contains(']') {
            return Err(format!("unexpected `]` in `{part}`"));
        }
        segs.push(Seg::Key(key.to_owned()));
        while !rest.is_empty() {
            let Some(inner) = rest.strip_prefix('[') else {
                return Err(format!("unexpected `{rest}` after an index in `{part}`"));
            };
            let Some(close) = inner.find(']') else {
                return Err(format!("missing `]` in `{part}`"));
            };
            let digits = &inner[..close];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "bad index `[{digits}]` (indices are non-negative integers)"
                ));
            }
            let index = digits
                .parse::<usize>()
                .map_err(|_| format!("index `[{digits}]` is too large"))?;
            segs.push(Seg::Index(index));
            rest = &inner[close + 1..];
        }
    }
    if segs.len() > MAX_SEGMENTS {
        return Err(format!("more than {MAX_SEGMENTS} segments"));
    }
    Ok(segs)
}

fn set(root: &mut Node, segs: &[Seg], value: Node, loc: &Loc) -> Result<(), ConfigError> {
    let mut cur = root;
    let mut path = String::new();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match seg {
            Seg::Key(k) => {
                if cur.is_null() {
                    // A missing (null) intermediate value becomes a mapping.
                    *cur = Node::empty_map(loc.clone());
                }
                let cur_kind = cur.kind_name();
                let Kind::Map(entries) = &mut cur.kind else {
                    return Err(ConfigError::at(
                        loc,
                        path_or_root(&path),
                        format!("cannot set key `{k}`: this is {cur_kind}, not a mapping"),
                    ));
                };
                push_key(&mut path, k);
                let idx = match entries.iter().position(|e| e.key.text == *k) {
                    Some(idx) => {
                        entries[idx].key_loc = loc.clone();
                        idx
                    }
                    None => {
                        entries.push(Entry {
                            key: Scalar {
                                text: k.clone(),
                                quoted: false,
                            },
                            key_loc: loc.clone(),
                            value: Node::empty_map(loc.clone()),
                        });
                        entries.len() - 1
                    }
                };
                cur = &mut entries[idx].value;
            }
            Seg::Index(n) => {
                let cur_kind = cur.kind_name();
                let Kind::Seq(items) = &mut cur.kind else {
                    return Err(ConfigError::at(
                        loc,
                        path_or_root(&path),
                        format!("cannot index `[{n}]`: this is {cur_kind}, not a sequence"),
                    ));
                };
                if *n >= items.len() {
                    return Err(ConfigError::at(
                        loc,
                        path_or_root(&path),
                        format!(
                            "index `[{n}]` out of range: the sequence has {} element(s)",
                            items.len()
                        ),
                    ));
                }
                push_index(&mut path, *n);
                cur = &mut items[*n];
            }
        }
        if last {
            *cur = value;
            return Ok(());
        }
    }
    Ok(())
}

fn path_or_root(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_syntax() {
        assert_eq!(
            parse_path("a.b[2][0].c").unwrap(),
            vec![
                Seg::Key("a".into()),
                Seg::Key("b".into()),
                Seg::Index(2),
                Seg::Index(0),
                Seg::Key("c".into())
            ]
        );
        for bad in [
            "", "a..b", ".a", "a.", "a[", "a[x]", "a[-1]", "a[]", "[0]", "a[0]b", "a]",
        ] {
            assert!(parse_path(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
