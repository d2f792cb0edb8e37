//! A YAML value tree whose nodes remember where they were written, built from the event
//! stream of serde-saphyr's parser (`serde_saphyr::granit_parser`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_saphyr::granit_parser::{Event, Marker, Options, Parser, ScalarStyle, Tag};

use crate::error::{ConfigError, Loc};

/// Deepest nesting of mappings/sequences accepted in one document.
pub(crate) const MAX_DEPTH: usize = 128;
/// Most nodes one document may expand to (aliases included), against "billion laughs".
pub(crate) const MAX_NODES: usize = 1_000_000;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub kind: Kind,
    pub loc: Loc,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A scalar as written. Plain scalars are typed lazily (by what the target type asks for);
/// quoted and block scalars (and `!!str`) are always strings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Scalar {
    pub text: String,
    pub quoted: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub key: Scalar,
    pub key_loc: Loc,
    pub value: Node,
}

impl Node {
    pub(crate) fn empty_map(loc: Loc) -> Node {
        Node {
            kind: Kind::Map(Vec::new()),
            loc,
        }
    }

    pub(crate) fn plain(text: &str, loc: Loc) -> Node {
        Node {
            kind: Kind::Scalar(Scalar {
                text: text.to_owned(),
                quoted: false,
            }),
            loc,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar(s) if s.is_null())
    }

    pub(crate) fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar(s) if s.is_null() => "null",
            Kind::Scalar(_) => "a scalar",
            Kind::Seq(_) => "a sequence",
            Kind::Map(_) => "a mapping",
        }
    }

    fn height(&self) -> usize {
        match &self.kind {
            Kind::Scalar(_) => 0,
            Kind::Seq(items) => 1 + items.iter().map(Node::height).max().unwrap_or(0),
            Kind::Map(entries) => 1 + entries.iter().map(|e| e.value.height()).max().unwrap_or(0),
        }
    }

    fn count(&self) -> usize {
        1 + match &self.kind {
            Kind::Scalar(_) => 0,
            Kind::Seq(items) => items.iter().map(Node::count).sum(),
            Kind::Map(entries) => entries.iter().map(|e| 1 + e.value.count()).sum(),
        }
    }
}

/// A plain scalar resolved with the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i128),
    /// A decimal integer above `i128::MAX` (up to `u128::MAX`).
    BigUint(u128),
    Float(f64),
    Str(&'a str),
}

impl Scalar {
    pub(crate) fn is_null(&self) -> bool {
        !self.quoted && matches!(self.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }

    pub(crate) fn resolve(&self) -> Resolved<'_> {
        if self.quoted {
            return Resolved::Str(&self.text);
        }
        let t = self.text.as_str();
        match t {
            "" | "~" | "null" | "Null" | "NULL" => Resolved::Null,
            "true" | "True" | "TRUE" => Resolved::Bool(true),
            "false" | "False" | "FALSE" => Resolved::Bool(false),
            _ => {
                if let Some(i) = parse_int(t) {
                    Resolved::Int(i)
                } else if let Some(u) = t
                    .strip_prefix('+')
                    .unwrap_or(t)
                    .parse::<u128>()
                    .ok()
                    .filter(|_| t.bytes().all(|b| b.is_ascii_digit() || b == b'+'))
                {
                    Resolved::BigUint(u)
                } else if let Some(f) = parse_float(t) {
                    Resolved::Float(f)
                } else {
                    Resolved::Str(t)
                }
            }
        }
    }
}

/// Core-schema integer: `[-+]?[0-9]+`, `0o[0-7]+`, `0x[0-9a-fA-F]+`.
pub(crate) fn parse_int(t: &str) -> Option<i128> {
    if let Some(hex) = t.strip_prefix("0x") {
        if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return i128::from_str_radix(hex, 16).ok();
        }
        return None;
    }
    if let Some(oct) = t.strip_prefix("0o") {
        if !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return i128::from_str_radix(oct, 8).ok();
        }
        return None;
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // Out of i128 range: not an int (it still resolves as a float).
        return t.parse::<i128>().ok();
    }
    None
}

fn is_float_syntax(t: &str) -> bool {
    let b = t.strip_prefix(['-', '+']).unwrap_or(t).as_bytes();
    let mut i = 0;
    let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let exp_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exp_digits == 0 {
            return false;
        }
        i += exp_digits;
    }
    i == b.len()
}

/// Core-schema float (also accepts integers), including `.inf`, `-.inf` and `.nan`.
pub(crate) fn parse_float(t: &str) -> Option<f64> {
    parse_float_as::<f64>(t)
}

/// Parses float syntax directly into `F` (so an `f32` target is rounded once, from the text).
pub(crate) fn parse_float_as<F>(t: &str) -> Option<F>
where
    F: std::str::FromStr + std::ops::Neg<Output = F> + FloatConsts,
{
    let unsigned = t.strip_prefix(['-', '+']).unwrap_or(t);
    let negative = t.starts_with('-');
    match unsigned {
        ".inf" | ".Inf" | ".INF" => {
            return Some(if negative { -F::INF } else { F::INF });
        }
        ".nan" | ".NaN" | ".NAN" if unsigned.len() == t.len() => return Some(F::NAN),
        _ => {}
    }
    if is_float_syntax(t) {
        return t.parse::<F>().ok();
    }
    // Hex/octal integers.
    parse_int(t).map(|i| {
        // Goes through the decimal text of the integer, so it is still rounded once.
        i.to_string().parse::<F>().ok().unwrap_or(F::NAN)
    })
}

pub(crate) trait FloatConsts {
    const INF: Self;
    const NAN: Self;
}
impl FloatConsts for f64 {
    const INF: Self = f64::INFINITY;
    const NAN: Self = f64::NAN;
}
impl FloatConsts for f32 {
    const INF: Self = f32::INFINITY;
    const NAN: Self = f32::NAN;
}

/// How to turn a parser position into a [`Loc`].
pub(crate) enum Source<'a> {
    /// Text of a file (or `from_str` input) with this display name.
    File(&'a Arc<str>),
    /// Every node gets this location (values of `--set` overrides).
    Fixed(&'a Loc),
}

impl Source<'_> {
    fn loc(&self, m: &Marker) -> Loc {
        match self {
            Source::File(name) => Loc::file(name, m.line().max(1), m.col() + 1),
            Source::Fixed(loc) => (*loc).clone(),
        }
    }
}

enum Frame {
    Seq {
        loc: Loc,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        loc: Loc,
        anchor: usize,
        entries: Vec<Entry>,
        key: Option<(Scalar, Loc)>,
        /// Key text -> index in `entries` (duplicate detection without quadratic cost).
        index: HashMap<String, usize>,
    },
}

struct Builder<'s> {
    source: Source<'s>,
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, (Node, usize, usize)>,
    nodes: usize,
}

/// Parses one YAML document. `Ok(None)` for an input without any document (empty or only
/// comments). Never panics; all problems are `ConfigError`s naming location and path.
pub(crate) fn parse(src: &str, source: Source<'_>) -> Result<Option<Node>, ConfigError> {
    let mut options = Options::default();
    options.emit_comments = false;
    let mut parser = Parser::new_from_str_with_options(src, options);
    let mut b = Builder {
        source,
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        nodes: 0,
    };
    let mut documents = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(ev) => ev,
            Err(e) => {
                let loc = b.source.loc(e.marker());
                return Err(ConfigError::at(&loc, b.path(), e.info()));
            }
        };
        let loc = b.source.loc(&span.start);
        let tag_loc = span
            .tag_start
            .map_or_else(|| loc.clone(), |m| b.source.loc(&m));
        match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(ConfigError::at(
                        &loc,
                        "",
                        "a config must be a single YAML document (found a second `---` document)",
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let mut quoted = style != ScalarStyle::Plain;
                if let Some(tag) = tag.as_deref() {
                    if tag.is_yaml_core_schema_tag("str") {
                        quoted = true;
                    } else if !["null", "bool", "int", "float"]
                        .iter()
                        .any(|s| tag.is_yaml_core_schema_tag(s))
                    {
                        return Err(b.tag_error(&tag_loc, tag));
                    }
                }
                let node = Node {
                    kind: Kind::Scalar(Scalar {
                        text: text.into_owned(),
                        quoted,
                    }),
                    loc,
                };
                b.complete(node, anchor)?;
            }
            Event::SequenceStart(_, anchor, tag) => {
                if let Some(tag) = tag.as_deref() {
                    if !tag.is_yaml_core_schema_tag("seq") {
                        return Err(b.tag_error(&tag_loc, tag));
                    }
                }
                b.open(
                    Frame::Seq {
                        loc: loc.clone(),
                        anchor,
                        items: Vec::new(),
                    },
                    &loc,
                )?;
            }
            Event::MappingStart(_, anchor, tag) => {
                if let Some(tag) = tag.as_deref() {
                    if !tag.is_yaml_core_schema_tag("map") {
                        return Err(b.tag_error(&tag_loc, tag));
                    }
                }
                b.open(
                    Frame::Map {
                        loc: loc.clone(),
                        anchor,
                        entries: Vec::new(),
                        key: None,
                        index: HashMap::new(),
                    },
                    &loc,
                )?;
            }
            Event::SequenceEnd | Event::MappingEnd => b.close()?,
            Event::Alias(id) => b.alias(id, &loc)?,
            _ => {}
        }
    }
    Ok(b.root)
}

impl Builder<'_> {
    /// Key path of the position currently being built.
    fn path(&self) -> String {
        let mut p = String::new();
        let last = self.stack.len().saturating_sub(1);
        for (i, frame) in self.stack.iter().enumerate() {
            match frame {
                // The index inside the innermost sequence is not known yet for most errors.
                Frame::Seq { .. } if i == last => {}
                Frame::Seq { items, .. } => push_index(&mut p, items.len()),
                Frame::Map {
                    key: Some((k, _)), ..
                } => push_key(&mut p, &k.text),
                Frame::Map { key: None, .. } => {}
            }
        }
        p
    }

    fn tag_error(&self, loc: &Loc, tag: &Tag) -> ConfigError {
        ConfigError::at(
            loc,
            self.path(),
            format!(
                "unsupported YAML tag `{}` (only the core tags !!str, !!int, !!float, !!bool, \
                 !!null, !!seq and !!map are accepted)",
                tag.original()
            ),
        )
    }

    fn count_nodes(&mut self, n: usize, loc: &Loc) -> Result<(), ConfigError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(ConfigError::at(
                loc,
                self.path(),
                format!(
                    "document too large: more than {MAX_NODES} nodes (after expanding aliases)"
                ),
            ));
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, loc: &Loc) -> Result<(), ConfigError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(ConfigError::at(
                loc,
                self.path(),
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.count_nodes(1, loc)?;
        self.stack.push(frame);
        Ok(())
    }

    fn close(&mut self) -> Result<(), ConfigError> {
        let (node, anchor) = match self.stack.pop() {
            Some(Frame::Seq { loc, anchor, items }) => (
                Node {
                    kind: Kind::Seq(items),
                    loc,
                },
                anchor,
            ),
            Some(Frame::Map {
                loc,
                anchor,
                entries,
                ..
            }) => {
                let entries = self.apply_merge_keys(entries)?;
                (
                    Node {
                        kind: Kind::Map(entries),
                        loc,
                    },
                    anchor,
                )
            }
            None => return Ok(()),
        };
        self.complete(node, anchor)
    }

    /// YAML merge keys: `<<: *base` or `<<: [*a, *b]`; explicit keys win, then earlier merges.
    fn apply_merge_keys(&self, entries: Vec<Entry>) -> Result<Vec<Entry>, ConfigError> {
        if !entries.iter().any(is_merge_entry) {
            return Ok(entries);
        }
        let (merges, mut out): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().partition(is_merge_entry);
        let mut present: HashSet<String> = out.iter().map(|e| e.key.text.clone()).collect();
        for merge in merges {
            let sources = match merge.value.kind {
                Kind::Map(m) => vec![m],
                Kind::Seq(items) => {
                    let mut v = Vec::new();
                    for item in items {
                        match item.kind {
                            Kind::Map(m) => v.push(m),
                            _ => return Err(self.merge_error(&item.loc)),
                        }
                    }
                    v
                }
                Kind::Scalar(_) => return Err(self.merge_error(&merge.value.loc)),
            };
            for src in sources {
                for e in src {
                    if present.insert(e.key.text.clone()) {
                        out.push(e);
                    }
                }
            }
        }
        Ok(out)
    }

    fn merge_error(&self, loc: &Loc) -> ConfigError {
        let mut p = self.path();
        push_key(&mut p, "<<");
        ConfigError::at(
            loc,
            p,
            "merge key `<<` needs a mapping or a list of mappings",
        )
    }

    fn alias(&mut self, id: usize, loc: &Loc) -> Result<(), ConfigError> {
        let Some((node, height, count)) = self.anchors.get(&id).cloned() else {
            return Err(ConfigError::at(
                loc,
                self.path(),
                "alias refers to an anchor that is not complete here (recursive alias?)",
            ));
        };
        if self.stack.len() + height > MAX_DEPTH {
            return Err(ConfigError::at(
                loc,
                self.path(),
                format!("nesting deeper than {MAX_DEPTH} levels (after expanding alias)"),
            ));
        }
        self.count_nodes(count, loc)?;
        self.complete(node, 0)
    }

    /// Hands a finished node to its parent (or makes it the root).
    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), ConfigError> {
        if matches!(node.kind, Kind::Scalar(_)) {
            self.count_nodes(1, &node.loc)?;
        }
        if anchor != 0 {
            let (h, c) = (node.height(), node.count());
            self.anchors.insert(anchor, (node.clone(), h, c));
        }
        let path_here = self.path();
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                key,
                index,
                ..
            }) => match key.take() {
                Some((k, key_loc)) => entries.push(Entry {
                    key: k,
                    key_loc,
                    value: node,
                }),
                None => {
                    let Kind::Scalar(k) = node.kind else {
                        return Err(ConfigError::at(
                            &node.loc,
                            path_here,
                            "mapping keys must be scalars (found a sequence or mapping as key)",
                        ));
                    };
                    if let Some(first) = index.get(&k.text).map(|&i| &entries[i]) {
                        let mut p = path_here;
                        push_key(&mut p, &k.text);
                        return Err(ConfigError::at(
                            &node.loc,
                            p,
                            format!(
                                "duplicate key `{}` in mapping (first defined at {})",
                                k.text, first.key_loc
                            ),
                        ));
                    }
                    index.insert(k.text.clone(), entries.len());
                    *key = Some((k, node.loc));
                }
            },
        }
        Ok(())
    }
}

fn is_merge_entry(e: &Entry) -> bool {
    !e.key.quoted && e.key.text == "<<"
}

pub(crate) fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

pub(crate) fn push_index(path: &mut String, i: usize) {
    use std::fmt::Write;
    let _ = write!(path, "[{i}]");
}
