//! Frozen CLIP for unclip: the text and vision towers in burn, configured from a HF
//! `config.json`, loading transformers (`CLIPModel`) and open_clip safetensors and writing the HF
//! layout; CLIP's BPE tokenizer (built offline from OpenAI's merges, run through `tokenizers`);
//! CLIP's image preprocessing.
//!
//! Boundaries: a leaf crate. It knows tensors, weight files and `RgbImage`s, not shards, configs
//! of runs, or the CLI; the embedding store and `unclip embed` live elsewhere and call
//! [`Clip::encode_image`] / [`Clip::encode_text`]. Randomness (seeded init) comes from
//! `unclip_rng`, never burn's global RNG.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): the frozen model
//! of **embed** (and the text encoder of inference).

mod clean;
mod config;
mod error;
mod html_entities;
mod init;
mod layers;
mod layout;
mod model;
mod preprocess;
mod text;
mod tokenizer;
mod vision;
mod weights;

pub use clean::{clean_caption, html_unescape};
pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use error::ClipError;
pub use init::{init_random, init_random_weights};
pub use layers::{Attention, Encoder, EncoderLayer, Mlp};
pub use layout::{hf_expected, open_clip_to_hf};
pub use model::{Clip, TextEmbedding};
pub use preprocess::{preprocess, preprocess_batch, resize_center_crop, CLIP_MEAN, CLIP_STD};
pub use text::{pool_position, TextFeatures, TextTransformer};
pub use tokenizer::{
    build_tokenizer_json, build_tokenizer_json_from_file, ClipTokenizer, Tokens,
    BUNDLED_TOKENIZER_JSON, CONTEXT_LENGTH, END_OF_TEXT, START_OF_TEXT,
};
pub use vision::VisionTransformer;
pub use weights::{read_safetensors, safetensors_bytes, HostTensor, StoreDtype, WeightMap};
