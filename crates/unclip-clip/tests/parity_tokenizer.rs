//! The bundled tokenizer against open_clip's `SimpleTokenizer` on the fixture captions
//! (`tokenizer_captions.json`): identical [77] ids, except captions with mojibake, which
//! open_clip repairs through ftfy's `fix_encoding` and we do not (see `clean.rs`).

mod common;

use common::fixture;
use unclip_clip::{ClipTokenizer, CONTEXT_LENGTH, END_OF_TEXT, START_OF_TEXT};

#[derive(serde::Deserialize)]
struct Caption {
    text: String,
    ids: Vec<u32>,
}

fn captions() -> Vec<Caption> {
    let text = std::fs::read_to_string(fixture("tokenizer_captions.json")).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture parses")
}

/// Captions whose mojibake ftfy repairs (UTF-8 read as Windows-1252); we tokenize them as written.
const MOJIBAKE: [&str; 3] = [
    "caf\u{c3}\u{a9} mojibake",
    "The Mona Lisa\u{e2}\u{20ac}\u{2122}s smile",
    "\u{e2}\u{20ac}\u{153}quoted mojibake\u{e2}\u{20ac}\u{9d}",
];

#[test]
fn ids_match_open_clip() {
    let tokenizer = ClipTokenizer::bundled().expect("bundled tokenizer parses");
    let captions = captions();
    let mut matched = 0;
    let mut mismatches = Vec::new();
    for c in &captions {
        let tokens = tokenizer.encode(&c.text).expect("encodes");
        if tokens.ids == c.ids {
            matched += 1;
        } else if !MOJIBAKE.contains(&c.text.as_str()) {
            mismatches.push(format!(
                "{:?}\n  ours {:?}\n  open_clip {:?}",
                c.text, tokens.ids, c.ids
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(matched, captions.len() - MOJIBAKE.len());
    assert!(matched >= 50, "only {matched} captions compared equal");
}

#[test]
fn layout_mask_truncation_and_padding() {
    let openai = ClipTokenizer::bundled().expect("bundled tokenizer parses");
    let hf = ClipTokenizer::bundled()
        .expect("bundled tokenizer parses")
        .with_pad_id(END_OF_TEXT);
    for c in captions() {
        let a = openai.encode(&c.text).expect("encodes");
        let b = hf.encode(&c.text).expect("encodes");
        assert_eq!(a.ids.len(), CONTEXT_LENGTH);
        assert_eq!(a.ids[0], START_OF_TEXT);
        let end = a
            .ids
            .iter()
            .position(|&t| t == END_OF_TEXT)
            .expect("every row has an end token");
        assert!(a.mask.iter().enumerate().all(|(i, &m)| m == (i <= end)));
        assert!(a.ids[end + 1..].iter().all(|&t| t == 0));
        // Same content, other padding; pooling at the first end token sees the same row.
        assert_eq!(a.ids[..=end], b.ids[..=end]);
        assert!(b.ids[end + 1..].iter().all(|&t| t == END_OF_TEXT));
        assert_eq!(a.mask, b.mask);
    }
    let long = openai.encode(&"word ".repeat(200)).expect("encodes");
    assert_eq!(
        long.ids[CONTEXT_LENGTH - 1],
        END_OF_TEXT,
        "truncation keeps the end token"
    );
    assert!(long.mask.iter().all(|&m| m));
}

#[test]
fn decode_restores_words() {
    let tokenizer = ClipTokenizer::bundled().expect("bundled tokenizer parses");
    let tokens = tokenizer.encode("A photo of a café!").expect("encodes");
    assert_eq!(
        tokenizer.decode(&tokens.ids).expect("decodes"),
        "a photo of a café !"
    );
}
