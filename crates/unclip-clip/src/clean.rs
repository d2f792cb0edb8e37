//! Caption cleaning before tokenization, mirroring open_clip's `basic_clean`: a subset of
//! `ftfy.fix_text`, then `html.unescape` twice. NFC, whitespace collapsing and lower-casing are
//! the tokenizer's normalizer's job (they are inside `tokenizer.json`).
//!
//! Implemented from ftfy: HTML unescaping when the text has no `<`, removal of the control
//! characters ftfy strips, Latin ligatures, fullwidth ASCII and the ideographic space, curly
//! quotes. Not implemented: ftfy's mojibake repair (`fix_encoding` and its helpers), which needs
//! its statistical codec detector; halfwidth katakana/hangul width folding; terminal escapes.

use crate::html_entities::ENTITIES;

/// Clean a caption the way open_clip does before tokenizing (see the module docs for scope).
pub fn clean_caption(text: &str) -> String {
    let mut s = fix_text_subset(text);
    s = html_unescape(&html_unescape(&s));
    s.trim().to_string()
}

fn fix_text_subset(text: &str) -> String {
    // ftfy unescapes HTML itself (repeatedly, as it loops to a fixed point) unless the text
    // looks like it contains markup.
    let mut s = text.to_string();
    if !s.contains('<') {
        for _ in 0..16 {
            let next = html_unescape(&s);
            if next == s {
                break;
            }
            s = next;
        }
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let u = c as u32;
        match u {
            0x00..=0x08
            | 0x0B
            | 0x0E..=0x1F
            | 0x7F
            | 0x206A..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFC => {}
            0x02BC | 0x2018..=0x201B => out.push('\''),
            0x201C..=0x201F => out.push('"'),
            0x3000 => out.push(' '),
            0xFF01..=0xFF5E => out.push(char::from_u32(u - 0xFEE0).unwrap_or(c)),
            _ => match ligature(c) {
                Some(rep) => out.push_str(rep),
                None => out.push(c),
            },
        }
    }
    out
}

fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// Windows-1252 meanings HTML5 gives numeric references 0x80–0x9F (and 0x00, 0x0D).
fn invalid_charref(n: u32) -> Option<char> {
    const C1: [u32; 32] = [
        0x20AC, 0x81, 0x201A, 0x192, 0x201E, 0x2026, 0x2020, 0x2021, 0x2C6, 0x2030, 0x160, 0x2039,
        0x152, 0x8D, 0x17D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
        0x2DC, 0x2122, 0x161, 0x203A, 0x153, 0x9D, 0x17E, 0x178,
    ];
    match n {
        0 => Some('\u{FFFD}'),
        0x0D => Some('\r'),
        0x80..=0x9F => char::from_u32(C1[(n - 0x80) as usize]),
        _ => None,
    }
}

/// Code points HTML5 drops when referenced numerically.
fn is_dropped_codepoint(n: u32) -> bool {
    matches!(n, 0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF)
        || (n & 0xFFFE) == 0xFFFE
}

fn entity(name: &str) -> Option<(char, bool)> {
    ENTITIES
        .binary_search_by(|(n, _, _)| n.cmp(&name))
        .ok()
        .map(|i| (ENTITIES[i].1, ENTITIES[i].2))
}

/// Python's `html.unescape` semantics: numeric references (`;` optional, HTML5 fix-ups), named
/// references from our table (`;` optional only for the legacy names, longest prefix wins).
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let (replacement, used) = reference(after);
        match replacement {
            Some(r) => {
                out.push_str(&r);
                rest = &after[used..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decode the reference at the start of `s` (just after `&`): the text it stands for and how
/// many bytes of `s` it consumed; `None` when it is not a reference.
fn reference(s: &str) -> (Option<String>, usize) {
    let semi = |n: usize| usize::from(s[n..].starts_with(';'));
    if let Some(num) = s.strip_prefix('#') {
        let (hex, digits) = match num.strip_prefix(['x', 'X']) {
            Some(h) => (true, h),
            None => (false, num),
        };
        let len = digits
            .bytes()
            .take_while(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        if len == 0 {
            return (None, 0);
        }
        let prefix = 1 + usize::from(hex);
        let used = prefix + len + semi(prefix + len);
        let n = u32::from_str_radix(&digits[..len], if hex { 16 } else { 10 }).unwrap_or(u32::MAX);
        let text = if let Some(c) = invalid_charref(n) {
            c.to_string()
        } else if (0xD800..=0xDFFF).contains(&n) || n > 0x10FFFF {
            '\u{FFFD}'.to_string()
        } else if is_dropped_codepoint(n) {
            String::new()
        } else {
            char::from_u32(n).map(String::from).unwrap_or_default()
        };
        return (Some(text), used);
    }
    // Python's pattern: up to 32 chars that are not whitespace, `<`, `&`, `#` or `;`.
    let name_len: usize = s
        .char_indices()
        .take_while(|&(_, c)| !matches!(c, '\t' | '\n' | '\x0C' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .last()
        .map_or(0, |(i, c)| i + c.len_utf8());
    if name_len == 0 {
        return (None, 0);
    }
    let name = &s[..name_len];
    if semi(name_len) == 1 {
        if let Some((c, _)) = entity(name) {
            return (Some(c.to_string()), name_len + 1);
        }
    } else if let Some((c, true)) = entity(name) {
        return (Some(c.to_string()), name_len);
    }
    // Longest legacy (no-semicolon) name that prefixes the run.
    let ends: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    for &end in ends.iter().rev() {
        if let Some((c, true)) = entity(&name[..end]) {
            return (Some(c.to_string()), end);
        }
    }
    (None, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_matches_python_html_unescape() {
        // Expected values from CPython's html.unescape.
        for (input, expected) in [
            ("Tom &amp; Jerry", "Tom & Jerry"),
            ("&lt;b&gt;", "<b>"),
            ("&#39;x&#x27;", "'x'"),
            ("&#169 &#xA9x", "© ©x"),
            ("&#128;", "€"),
            ("&#0;", "\u{FFFD}"),
            ("&#1;a", "a"),
            ("&copyright", "©right"),
            ("&amp", "&"),
            ("&foo; & &", "&foo; & &"),
            ("caf&eacute; na&iuml;ve", "café naïve"),
            ("&rang;", "⟩"),
        ] {
            assert_eq!(html_unescape(input), expected, "{input}");
        }
    }

    #[test]
    fn ftfy_subset() {
        assert_eq!(
            clean_caption("  “a” ‘b’ ﬁsh ＡＢＣ\u{0007}  "),
            "\"a\" 'b' fish ABC"
        );
        assert_eq!(clean_caption("&amp;amp;amp;"), "&");
    }
}
