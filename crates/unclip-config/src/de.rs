//! A `serde::Deserializer` over the located tree. It tracks the key path and, when a value
//! cannot be deserialized, attaches that path and the node's original location to the error.

use std::fmt;

use serde::de::{self, DeserializeSeed, Unexpected, Visitor};

use crate::error::{ConfigError, Loc};
use crate::tree::{parse_float_as, push_index, push_key, Entry, Kind, Node, Resolved, Scalar};

/// Key path as a linked list on the stack (formatted only when an error happens).
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut segs = Vec::new();
        let mut cur = self;
        loop {
            match cur {
                Path::Root => break,
                Path::Key(parent, _) | Path::Index(parent, _) => {
                    segs.push(cur);
                    cur = parent;
                }
            }
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Path::Key(_, k) => push_key(&mut out, k),
                Path::Index(_, i) => push_index(&mut out, *i),
                Path::Root => {}
            }
        }
        f.write_str(&out)
    }
}

/// Error produced while deserializing; located by the innermost node that sees it.
#[derive(Debug)]
pub(crate) struct DeError {
    msg: String,
    missing_field: Option<&'static str>,
    at: Option<(String, Loc)>,
}

impl DeError {
    fn locate(mut self, path: &Path<'_>, loc: &Loc) -> Self {
        if self.at.is_none() {
            let mut p = path.to_string();
            if let Some(field) = self.missing_field {
                push_key(&mut p, field);
            }
            self.at = Some((p, loc.clone()));
        }
        self
    }

    pub(crate) fn into_config_error(self, root: &Node) -> ConfigError {
        let (path, loc) = self.at.unwrap_or_else(|| (String::new(), root.loc.clone()));
        ConfigError::at(&loc, path, self.msg)
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            msg: msg.to_string(),
            missing_field: None,
            at: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            msg: format!("missing field `{field}`"),
            missing_field: Some(field),
            at: None,
        }
    }
}

/// What the target type asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hint {
    Any,
    Bool,
    Int,
    F32,
    F64,
    Char,
    Str,
    Bytes,
    Option,
    Unit,
    Newtype,
    Seq,
    Map,
    Struct,
    Enum,
    Identifier,
    Ignored,
}

macro_rules! forward_to_dispatch {
    ($($method:ident => $hint:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                self.dispatch(Hint::$hint, visitor)
            }
        )*
        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, DeError> {
            self.dispatch(Hint::Unit, visitor)
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, DeError> {
            self.dispatch(Hint::Newtype, visitor)
        }
        fn deserialize_tuple<V: Visitor<'de>>(
            self,
            _len: usize,
            visitor: V,
        ) -> Result<V::Value, DeError> {
            self.dispatch(Hint::Seq, visitor)
        }
        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _len: usize,
            visitor: V,
        ) -> Result<V::Value, DeError> {
            self.dispatch(Hint::Seq, visitor)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, DeError> {
            self.dispatch(Hint::Struct, visitor)
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, DeError> {
            self.dispatch(Hint::Enum, visitor)
        }
    };
}

macro_rules! deserializer_methods {
    () => {
        forward_to_dispatch! {
            deserialize_any => Any,
            deserialize_bool => Bool,
            deserialize_i8 => Int,
            deserialize_i16 => Int,
            deserialize_i32 => Int,
            deserialize_i64 => Int,
            deserialize_i128 => Int,
            deserialize_u8 => Int,
            deserialize_u16 => Int,
            deserialize_u32 => Int,
            deserialize_u64 => Int,
            deserialize_u128 => Int,
            deserialize_f32 => F32,
            deserialize_f64 => F64,
            deserialize_char => Char,
            deserialize_str => Str,
            deserialize_string => Str,
            deserialize_bytes => Bytes,
            deserialize_byte_buf => Bytes,
            deserialize_option => Option,
            deserialize_unit => Unit,
            deserialize_seq => Seq,
            deserialize_map => Map,
            deserialize_identifier => Identifier,
            deserialize_ignored_any => Ignored,
        }
    };
}

/// Deserializer for any node of the tree.
pub(crate) struct NodeDe<'a> {
    pub node: &'a Node,
    pub path: Path<'a>,
}

/// Deserializer for a scalar: a scalar node, a mapping key or an enum variant name.
struct ScalarDe<'a> {
    scalar: &'a Scalar,
    loc: &'a Loc,
    path: Path<'a>,
}

fn null_unexpected() -> Unexpected<'static> {
    Unexpected::Other("null")
}

fn unexpected(s: &Scalar) -> Unexpected<'_> {
    match s.resolve() {
        Resolved::Null => null_unexpected(),
        Resolved::Bool(b) => Unexpected::Bool(b),
        Resolved::Int(i) => match (i64::try_from(i), u64::try_from(i)) {
            (Ok(v), _) => Unexpected::Signed(v),
            (_, Ok(v)) => Unexpected::Unsigned(v),
            _ => Unexpected::Other("integer"),
        },
        Resolved::BigUint(_) => Unexpected::Other("integer"),
        Resolved::Float(f) => Unexpected::Float(f),
        Resolved::Str(t) => Unexpected::Str(t),
    }
}

fn visit_int<'de, V: Visitor<'de>>(i: i128, visitor: V) -> Result<V::Value, DeError> {
    if let Ok(v) = i64::try_from(i) {
        visitor.visit_i64(v)
    } else if let Ok(v) = u64::try_from(i) {
        visitor.visit_u64(v)
    } else if let Ok(v) = u128::try_from(i) {
        visitor.visit_u128(v)
    } else {
        visitor.visit_i128(i)
    }
}

impl<'a> ScalarDe<'a> {
    fn dispatch<'de, V: Visitor<'de>>(self, hint: Hint, visitor: V) -> Result<V::Value, DeError> {
        let (path, loc) = (self.path, self.loc);
        self.dispatch_inner(hint, visitor)
            .map_err(|e| e.locate(&path, loc))
    }

    fn dispatch_inner<'de, V: Visitor<'de>>(
        self,
        hint: Hint,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let s = self.scalar;
        let invalid = |visitor: &V| Err(de::Error::invalid_type(unexpected(s), visitor));
        match hint {
            Hint::Any => match s.resolve() {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => visit_int(i, visitor),
                Resolved::BigUint(u) => visitor.visit_u128(u),
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str(t) => visitor.visit_str(t),
            },
            Hint::Bool => match s.resolve() {
                Resolved::Bool(b) => visitor.visit_bool(b),
                _ => invalid(&visitor),
            },
            Hint::Int => match s.resolve() {
                Resolved::Int(i) => visit_int(i, visitor),
                Resolved::BigUint(u) => visitor.visit_u128(u),
                _ => invalid(&visitor),
            },
            Hint::F64 => match s.resolve() {
                Resolved::Int(_) | Resolved::BigUint(_) | Resolved::Float(_) => {
                    match parse_float_as::<f64>(&s.text) {
                        Some(f) => visitor.visit_f64(f),
                        None => invalid(&visitor),
                    }
                }
                _ => invalid(&visitor),
            },
            Hint::F32 => match s.resolve() {
                Resolved::Int(_) | Resolved::BigUint(_) | Resolved::Float(_) => {
                    match parse_float_as::<f32>(&s.text) {
                        Some(f) => visitor.visit_f32(f),
                        None => invalid(&visitor),
                    }
                }
                _ => invalid(&visitor),
            },
            Hint::Char => {
                let mut chars = s.text.chars();
                match (s.is_null(), chars.next(), chars.next()) {
                    (false, Some(c), None) => visitor.visit_char(c),
                    _ => invalid(&visitor),
                }
            }
            Hint::Str | Hint::Bytes => {
                if s.is_null() {
                    Err(de::Error::invalid_type(null_unexpected(), &visitor))
                } else {
                    visitor.visit_str(&s.text)
                }
            }
            Hint::Identifier => visitor.visit_str(&s.text),
            Hint::Option => {
                if s.is_null() {
                    visitor.visit_none()
                } else {
                    visitor.visit_some(self)
                }
            }
            Hint::Unit => {
                if s.is_null() {
                    visitor.visit_unit()
                } else {
                    invalid(&visitor)
                }
            }
            Hint::Newtype => visitor.visit_newtype_struct(self),
            Hint::Enum => {
                if s.is_null() {
                    invalid(&visitor)
                } else {
                    visitor.visit_enum(ScalarEnum(self))
                }
            }
            Hint::Seq | Hint::Map | Hint::Struct => invalid(&visitor),
            Hint::Ignored => visitor.visit_unit(),
        }
    }
}

impl<'a> NodeDe<'a> {
    fn dispatch<'de, V: Visitor<'de>>(self, hint: Hint, visitor: V) -> Result<V::Value, DeError> {
        let (path, node) = (self.path, self.node);
        self.dispatch_inner(hint, visitor)
            .map_err(|e| e.locate(&path, &node.loc))
    }

    fn dispatch_inner<'de, V: Visitor<'de>>(
        self,
        hint: Hint,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let node = self.node;
        match &node.kind {
            Kind::Scalar(scalar) => ScalarDe {
                scalar,
                loc: &node.loc,
                path: self.path,
            }
            .dispatch(hint, visitor),
            Kind::Seq(items) => match hint {
                Hint::Any | Hint::Seq | Hint::Bytes => {
                    let mut access = SeqDe {
                        items,
                        path: self.path,
                        next: 0,
                    };
                    let value = visitor.visit_seq(&mut access)?;
                    access.end()?;
                    Ok(value)
                }
                Hint::Option => visitor.visit_some(self),
                Hint::Newtype => visitor.visit_newtype_struct(self),
                Hint::Ignored => visitor.visit_unit(),
                _ => Err(de::Error::invalid_type(Unexpected::Seq, &visitor)),
            },
            Kind::Map(entries) => match hint {
                Hint::Any | Hint::Map | Hint::Struct => visitor.visit_map(MapDe {
                    entries,
                    path: self.path,
                    next: 0,
                }),
                Hint::Enum => match entries.as_slice() {
                    [entry] => visitor.visit_enum(MapEnum {
                        entry,
                        path: self.path,
                    }),
                    _ => Err(de::Error::invalid_type(
                        Unexpected::Other(&format!(
                            "mapping with {} keys (an enum variant is a string or a mapping \
                             with exactly one key)",
                            entries.len()
                        )),
                        &visitor,
                    )),
                },
                Hint::Option => visitor.visit_some(self),
                Hint::Newtype => visitor.visit_newtype_struct(self),
                Hint::Ignored => visitor.visit_unit(),
                _ => Err(de::Error::invalid_type(Unexpected::Map, &visitor)),
            },
        }
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;
    deserializer_methods!();
}

impl<'de> de::Deserializer<'de> for ScalarDe<'_> {
    type Error = DeError;
    deserializer_methods!();
}

struct SeqDe<'a> {
    items: &'a [Node],
    path: Path<'a>,
    next: usize,
}

impl SeqDe<'_> {
    fn end(&self) -> Result<(), DeError> {
        if self.next < self.items.len() {
            return Err(de::Error::invalid_length(
                self.items.len(),
                &format!("{} elements", self.next).as_str(),
            ));
        }
        Ok(())
    }
}

impl<'de> de::SeqAccess<'de> for SeqDe<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.items.get(self.next) else {
            return Ok(None);
        };
        let path = Path::Index(&self.path, self.next);
        self.next += 1;
        seed.deserialize(NodeDe { node, path }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.next)
    }
}

struct MapDe<'a> {
    entries: &'a [Entry],
    path: Path<'a>,
    next: usize,
}

impl<'de> de::MapAccess<'de> for MapDe<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(ScalarDe {
            scalar: &entry.key,
            loc: &entry.key_loc,
            path: Path::Key(&self.path, &entry.key.text),
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some(entry) = self.entries.get(self.next) else {
            return Err(de::Error::custom("value requested before key"));
        };
        self.next += 1;
        seed.deserialize(NodeDe {
            node: &entry.value,
            path: Path::Key(&self.path, &entry.key.text),
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.next)
    }
}

/// Enum written as a plain string: a unit variant.
struct ScalarEnum<'a>(ScalarDe<'a>);

impl<'de, 'a> de::EnumAccess<'de> for ScalarEnum<'a> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let inner = &self.0;
        let name = seed.deserialize(ScalarDe {
            scalar: inner.scalar,
            loc: inner.loc,
            path: inner.path,
        })?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for ScalarEnum<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value, DeError> {
        Err(self.needs_value("newtype variant"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, DeError> {
        Err(self.needs_value("tuple variant"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, DeError> {
        Err(self.needs_value("struct variant"))
    }
}

impl ScalarEnum<'_> {
    fn needs_value(&self, what: &str) -> DeError {
        let inner = &self.0;
        <DeError as de::Error>::invalid_type(
            Unexpected::UnitVariant,
            &format!(
                "{what} (write it as a mapping `{}: <value>`)",
                inner.scalar.text
            )
            .as_str(),
        )
        .locate(&inner.path, inner.loc)
    }
}

/// Enum written as a single-key mapping `{variant: value}`.
struct MapEnum<'a> {
    entry: &'a Entry,
    path: Path<'a>,
}

impl<'de, 'a> de::EnumAccess<'de> for MapEnum<'a> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let name = seed.deserialize(ScalarDe {
            scalar: &self.entry.key,
            loc: &self.entry.key_loc,
            path: Path::Key(&self.path, &self.entry.key.text),
        })?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for MapEnum<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        let path = Path::Key(&self.path, &self.entry.key.text);
        let value = &self.entry.value;
        if value.is_null() {
            Ok(())
        } else {
            Err(<DeError as de::Error>::invalid_type(
                match &value.kind {
                    Kind::Scalar(s) => unexpected(s),
                    Kind::Seq(_) => Unexpected::Seq,
                    Kind::Map(_) => Unexpected::Map,
                },
                &"unit variant (no value)",
            )
            .locate(&path, &value.loc))
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(NodeDe {
            node: &self.entry.value,
            path: Path::Key(&self.path, &self.entry.key.text),
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        NodeDe {
            node: &self.entry.value,
            path: Path::Key(&self.path, &self.entry.key.text),
        }
        .dispatch(Hint::Seq, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        NodeDe {
            node: &self.entry.value,
            path: Path::Key(&self.path, &self.entry.key.text),
        }
        .dispatch(Hint::Struct, visitor)
    }
}
