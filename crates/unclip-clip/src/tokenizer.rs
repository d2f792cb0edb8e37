//! CLIP's BPE tokenizer: building the HF `tokenizer.json` offline from OpenAI's
//! `bpe_simple_vocab_16e6.txt.gz`, and a wrapper giving fixed-length id rows and their mask.

use std::io::Read;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::clean::clean_caption;
use crate::error::ClipError;

/// CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;
/// `<|startoftext|>`
pub const START_OF_TEXT: u32 = 49406;
/// `<|endoftext|>`
pub const END_OF_TEXT: u32 = 49407;
/// Merges used from the vocabulary file: 49 408 tokens = 2 × 256 bytes + merges + 2 specials.
const NUM_MERGES: usize = 49408 - 256 * 2 - 2;
/// The split pattern of CLIP's original tokenizer (contractions, letter runs, single digits,
/// runs of other non-space characters).
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The tokenizer.json the project ships, built by [`build_tokenizer_json`].
pub const BUNDLED_TOKENIZER_JSON: &str = include_str!("../assets/clip-tokenizer.json");

/// GPT-2's reversible byte → printable-character table, in CLIP's vocabulary order: printable
/// Latin-1 bytes map to themselves, the rest to U+0100 onwards.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let mut chars: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    let mut next = 256u32;
    for b in 0..256u32 {
        if !printable(b) {
            chars.push(char::from_u32(next).expect("U+0100.. are chars"));
            next += 1;
        }
    }
    chars
}

/// Build the HF `tokenizer.json` (as text) from the gzipped CLIP BPE merges file. The result is
/// a pure function of the input: vocabulary = the 256 byte characters, the same with `</w>`,
/// one token per merge, then the two specials; NFC + whitespace collapsing + lower-casing;
/// CLIP's split pattern then byte-level mapping; `<|startoftext|> … <|endoftext|>` around.
pub fn build_tokenizer_json(bpe_vocab_gz: &[u8]) -> Result<String, ClipError> {
    let origin = || "bpe_simple_vocab_16e6.txt.gz".to_string();
    let mut text = String::new();
    flate2::read::GzDecoder::new(bpe_vocab_gz)
        .read_to_string(&mut text)
        .map_err(|e| ClipError::Tokenizer {
            origin: origin(),
            message: format!("not gzipped UTF-8 text: {e}"),
        })?;
    // Line 0 is a version header; the merges follow.
    let lines: Vec<&str> = text.split('\n').skip(1).take(NUM_MERGES).collect();
    if lines.len() != NUM_MERGES {
        return Err(ClipError::Tokenizer {
            origin: origin(),
            message: format!("expected {NUM_MERGES} merges, found {}", lines.len()),
        });
    }
    let bytes = byte_chars();
    let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    tokens.extend(bytes.iter().map(|c| format!("{c}</w>")));
    let mut merges = Vec::with_capacity(NUM_MERGES);
    for (i, line) in lines.iter().enumerate() {
        let Some((a, b)) = line.split_once(' ') else {
            return Err(ClipError::Tokenizer {
                origin: origin(),
                message: format!("line {}: `{line}` is not a merge pair", i + 2),
            });
        };
        tokens.push(format!("{a}{b}"));
        merges.push(Value::String(format!("{a} {b}")));
    }
    tokens.push("<|startoftext|>".into());
    tokens.push("<|endoftext|>".into());
    let vocab: Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": true, "special": true})
    };
    let value = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(START_OF_TEXT, "<|startoftext|>"), special(END_OF_TEXT, "<|endoftext|>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
            {"type": "Lowercase"},
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", END_OF_TEXT],
                           "cls": ["<|startoftext|>", START_OF_TEXT], "trim_offsets": false,
                           "add_prefix_space": false},
        // Word ends become the byte-level space before bytes are restored; the last is stripped.
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "</w>"}, "content": "\u{120}"},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            {"type": "Strip", "content": " ", "start": 0, "stop": 1},
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
                  "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
                  "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let mut out = serde_json::to_string(&value).expect("a JSON value always serializes");
    out.push('\n');
    Ok(out)
}

/// [`build_tokenizer_json`] from a file path.
pub fn build_tokenizer_json_from_file(path: impl AsRef<Path>) -> Result<String, ClipError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ClipError::Io {
        path: path.display().to_string(),
        source,
    })?;
    build_tokenizer_json(&bytes)
}

/// One caption as CLIP input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// `CONTEXT_LENGTH` ids: start, caption, end, padding.
    pub ids: Vec<u32>,
    /// True from the start token through the end token.
    pub mask: Vec<bool>,
}

/// CLIP tokenization through a HF `tokenizer.json`: open_clip's caption cleaning, start/end
/// tokens, truncation that keeps the end token, and padding (0 as OpenAI, or a chosen id).
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    context_length: usize,
    pad_id: u32,
}

impl ClipTokenizer {
    /// Parse a `tokenizer.json` text; `origin` names it in errors.
    pub fn from_json(json: &str, origin: &str) -> Result<Self, ClipError> {
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| ClipError::Tokenizer {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self {
            inner,
            context_length: CONTEXT_LENGTH,
            pad_id: 0,
        })
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ClipError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ClipError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// The tokenizer shipped with this crate ([`BUNDLED_TOKENIZER_JSON`]).
    pub fn bundled() -> Result<Self, ClipError> {
        Self::from_json(BUNDLED_TOKENIZER_JSON, "<bundled clip-tokenizer.json>")
    }

    /// Pad with `pad_id` instead of OpenAI's 0 (transformers pads CLIP with the end id).
    pub fn with_pad_id(mut self, pad_id: u32) -> Self {
        self.pad_id = pad_id;
        self
    }

    /// Use a context other than 77 (must be at least 2).
    pub fn with_context_length(mut self, context_length: usize) -> Self {
        self.context_length = context_length.max(2);
        self
    }

    /// Token ids of the cleaned caption, without start/end tokens.
    pub fn encode_content(&self, text: &str) -> Result<Vec<u32>, ClipError> {
        let cleaned = clean_caption(text);
        let encoding =
            self.inner
                .encode(cleaned.as_str(), false)
                .map_err(|e| ClipError::Tokenizer {
                    origin: format!("encoding {text:?}"),
                    message: e.to_string(),
                })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// One caption as `context_length` ids and mask.
    pub fn encode(&self, text: &str) -> Result<Tokens, ClipError> {
        let content = self.encode_content(text)?;
        let keep = content.len().min(self.context_length - 2);
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(START_OF_TEXT);
        ids.extend_from_slice(&content[..keep]);
        ids.push(END_OF_TEXT);
        let used = ids.len();
        ids.resize(self.context_length, self.pad_id);
        let mask = (0..self.context_length).map(|i| i < used).collect();
        Ok(Tokens { ids, mask })
    }

    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Tokens>, ClipError> {
        texts.iter().map(|t| self.encode(t)).collect()
    }

    /// Text of `ids` without the special tokens (and padding), as open_clip's decode gives it.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ClipError> {
        let content: Vec<u32> = ids
            .iter()
            .copied()
            .skip_while(|&t| t == START_OF_TEXT)
            .take_while(|&t| t != END_OF_TEXT)
            .collect();
        self.inner
            .decode(&content, true)
            .map_err(|e| ClipError::Tokenizer {
                origin: "decoding ids".into(),
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let chars = byte_chars();
        let distinct: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        // Printable bytes first, in order; then bytes 0.. mapped from U+0100 (space → 'Ġ').
        assert_eq!((chars[0], chars[93], chars[94]), ('!', '~', '¡'));
        assert_eq!(chars[188 + 32], 'Ġ');
    }

    #[test]
    fn rejects_a_file_that_is_not_the_merges() {
        let err = build_tokenizer_json(b"not gzip").expect_err("rejected");
        assert!(err.to_string().contains("bpe_simple_vocab_16e6.txt.gz"));
    }
}
