//! `unclip clip …`: CLIP model folders.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ClipCommand {
    /// Write a seeded random-init CLIP as a HF folder (config.json, model.safetensors,
    /// tokenizer.json): for tests, benchmarks and demos before a trained CLIP exists.
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// A HF CLIP `config.json` (sizes, layers, heads, patch and image size, projection dim,
    /// hidden_act); see configs/clip/.
    #[arg(long)]
    config: PathBuf,
    /// The same seed gives byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: ClipCommand) -> anyhow::Result<()> {
    match cmd {
        ClipCommand::Init(a) => {
            let config = unclip_clip::ClipConfig::from_file(&a.config)?;
            let device = Default::default();
            let model = unclip_clip::init_random::<burn::backend::Flex>(&config, a.seed, &device);
            model
                .save_hf(
                    &a.out,
                    unclip_clip::StoreDtype::F32,
                    Some(unclip_clip::BUNDLED_TOKENIZER_JSON),
                )
                .with_context(|| format!("writing {}", a.out.display()))?;
            crate::print_json(&serde_json::json!({
                "out": a.out,
                "seed": a.seed,
                "projection_dim": config.projection_dim,
                "image_size": config.vision_config.image_size,
            }))
        }
    }
}

/// `unclip data build-tokenizer`.
#[derive(Debug, Args)]
pub struct BuildTokenizerArgs {
    /// CLIP's BPE vocabulary, `bpe_simple_vocab_16e6.txt.gz` (in the open-clip-torch wheel).
    #[arg(long)]
    bpe: PathBuf,
    /// Where to write the HF `tokenizer.json`.
    #[arg(long)]
    out: PathBuf,
}

pub fn build_tokenizer(a: BuildTokenizerArgs) -> anyhow::Result<()> {
    let json = unclip_clip::build_tokenizer_json_from_file(&a.bpe)?;
    unclip_fs::write_atomic(&a.out, json.as_bytes())
        .with_context(|| format!("writing {}", a.out.display()))?;
    crate::print_json(&serde_json::json!({ "out": a.out, "bytes": json.len() }))
}
