//! Re-emits a merged tree as block-style YAML. Plain scalars are written verbatim (so `1e-4`
//! stays `1e-4` and typing on re-load is unchanged); quoted scalars stay quoted.

use crate::tree::{Entry, Kind, Node, Scalar};

pub(crate) fn emit(root: &Node) -> String {
    let mut out = String::new();
    match &root.kind {
        Kind::Map(entries) if !entries.is_empty() => emit_map(entries, 0, false, &mut out),
        Kind::Seq(items) if !items.is_empty() => emit_seq(items, 0, false, &mut out),
        _ => {
            out.push_str(&inline(root).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

/// Text of a node that fits on the line after `key:` / `- `: scalars and empty collections.
fn inline(node: &Node) -> Option<String> {
    match &node.kind {
        Kind::Scalar(s) => Some(scalar(s, false)),
        Kind::Seq(items) if items.is_empty() => Some("[]".to_owned()),
        Kind::Map(entries) if entries.is_empty() => Some("{}".to_owned()),
        _ => None,
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// `first_inline`: the first entry follows a `- ` already written (mapping inside a sequence).
fn emit_map(entries: &[Entry], ind: usize, first_inline: bool, out: &mut String) {
    for (i, e) in entries.iter().enumerate() {
        if i > 0 || !first_inline {
            indent(out, ind);
        }
        out.push_str(&scalar(&e.key, true));
        out.push(':');
        emit_value(&e.value, ind + 2, out);
    }
}

fn emit_seq(items: &[Node], ind: usize, first_inline: bool, out: &mut String) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !first_inline {
            indent(out, ind);
        }
        out.push('-');
        match &item.kind {
            Kind::Map(entries) if !entries.is_empty() => {
                out.push(' ');
                emit_map(entries, ind + 2, true, out);
            }
            Kind::Seq(inner) if !inner.is_empty() => {
                out.push(' ');
                emit_seq(inner, ind + 2, true, out);
            }
            _ => emit_value(item, ind + 2, out),
        }
    }
}

/// Writes what follows `key:` or `-`, including the line break(s).
fn emit_value(node: &Node, ind: usize, out: &mut String) {
    if let Some(text) = inline(node) {
        if !text.is_empty() {
            out.push(' ');
            out.push_str(&text);
        }
        out.push('\n');
        return;
    }
    out.push('\n');
    match &node.kind {
        Kind::Map(entries) => emit_map(entries, ind, false, out),
        Kind::Seq(items) => emit_seq(items, ind, false, out),
        Kind::Scalar(_) => {}
    }
}

fn scalar(s: &Scalar, is_key: bool) -> String {
    if !s.quoted {
        if s.text.is_empty() && !is_key {
            // An empty plain value: `key:` re-parses to the same empty plain scalar.
            return String::new();
        }
        if plain_safe(&s.text) {
            return s.text.clone();
        }
    }
    double_quoted(&s.text)
}

/// Whether `t` can be written as a plain scalar in block context and re-parse to itself.
fn plain_safe(t: &str) -> bool {
    let Some(first) = t.chars().next() else {
        return false;
    };
    let second = t.chars().nth(1);
    if t.len() > 1000
        || t.starts_with(' ')
        || t.ends_with(' ')
        || t.ends_with(':')
        || t.contains(": ")
        || t.contains(" #")
        || t.starts_with("---")
        || t.starts_with("...")
        || t.chars()
            .any(|c| c.is_control() || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}'))
    {
        return false;
    }
    match first {
        '-' | '?' | ':' => second.is_some_and(|c| c != ' '),
        ',' | '[' | ']' | '{' | '}' | '#' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%'
        | '@' | '`' => false,
        _ => true,
    }
}

fn double_quoted(t: &str) -> String {
    let mut out = String::with_capacity(t.len() + 2);
    out.push('"');
    for c in t.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}') => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
