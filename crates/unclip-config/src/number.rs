//! Range-checked numbers for config fields: the check runs inside the value's own
//! deserializer call, so the config core reports an out-of-range value with its key path and
//! `file:line` like any other type error. Stage and run configs use them for their fields.

use serde::{Deserialize, Serialize};

/// Implements `Deserialize` for a range-checked number type: the check runs inside the
/// value's own deserializer call, so the config core reports the value's key path and line.
macro_rules! checked_number {
    ($ty:ident, $inner:ty, $deser:ident, $from_i64:expr, $check:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl V {
                    fn check<E: serde::de::Error>(v: $inner) -> Result<$ty, E> {
                        let check: fn($inner) -> Result<(), String> = $check;
                        check(v).map(|()| $ty(v)).map_err(E::custom)
                    }
                }
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str(stringify!($inner))
                    }
                    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<$ty, E> {
                        if (v as $inner) as f64 != v {
                            return Err(E::invalid_type(serde::de::Unexpected::Float(v), &self));
                        }
                        V::check(v as $inner)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        V::check(v as $inner)
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        let from_i64: fn(i64) -> Option<$inner> = $from_i64;
                        match from_i64(v) {
                            Some(x) => V::check(x),
                            None => Err(E::custom(format!("must be at least 1, got {v}"))),
                        }
                    }
                }
                d.$deser(V)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }
    };
}

/// A finite number > 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Positive(pub f64);
checked_number!(Positive, f64, deserialize_f64, |v| Some(v as f64), |v| {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("must be a finite number > 0, got {v}"))
    }
});

/// A number in [0, 1).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fraction(pub f64);
checked_number!(Fraction, f64, deserialize_f64, |v| Some(v as f64), |v| {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("must be in [0, 1), got {v}"))
    }
});

/// An integer ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtLeastOne(pub u64);
checked_number!(
    AtLeastOne,
    u64,
    deserialize_u64,
    |v| u64::try_from(v).ok(),
    |v| {
        if v >= 1 {
            Ok(())
        } else {
            Err(format!("must be at least 1, got {v}"))
        }
    }
);

/// The most a [`Capacity`] may be: 2^24.
pub const MAX_CAPACITY: u64 = 1 << 24;

/// An integer in [0, 2^24]: a count that sizes a buffer held in memory (a shuffle buffer), so a
/// value that would abort on allocation is a config error instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity(pub u64);
checked_number!(
    Capacity,
    u64,
    deserialize_u64,
    |v| u64::try_from(v).ok(),
    |v| {
        if v <= MAX_CAPACITY {
            Ok(())
        } else {
            Err(format!("must be at most {MAX_CAPACITY}, got {v}"))
        }
    }
);

/// The most a [`SmallCount`] may be.
pub const MAX_SMALL_COUNT: u64 = 4096;

/// An integer in [1, 4096]: threads, or batches queued in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallCount(pub u64);
checked_number!(
    SmallCount,
    u64,
    deserialize_u64,
    |v| u64::try_from(v).ok(),
    |v| {
        if (1..=MAX_SMALL_COUNT).contains(&v) {
            Ok(())
        } else {
            Err(format!("must be in [1, {MAX_SMALL_COUNT}], got {v}"))
        }
    }
);
