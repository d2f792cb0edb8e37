//! `unclip embed`: precompute frozen-CLIP embeddings beside the shards.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Deserialize;
use std::path::PathBuf;
use unclip_embed::{embed, EmbedJob};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EmbedCommand {
    #[command(subcommand)]
    sub: Option<EmbedSub>,
    #[command(flatten)]
    run: EmbedArgs,
}

#[derive(Debug, Subcommand)]
enum EmbedSub {
    /// Import clip-retrieval output (img_emb/, text_emb/, metadata/) as an embedding store,
    /// without re-embedding; with --shards, rows are joined to the shards by key.
    ImportClipRetrieval(unclip_embed::ImportOptions),
}

/// Flags of `unclip embed`; each may instead come from `--config FILE` (same names, YAML).
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// A YAML file with any of the keys below (`clip`, `shards`, `out`, `batch_size`,
    /// `workers`, `text_encodings`, `caption_json_field`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key: `--set batch_size=128` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// A HF CLIP folder: config.json, model.safetensors, tokenizer.json.
    #[arg(long)]
    clip: Option<PathBuf>,
    /// Shard spec (files, directories, globs, `{000..009}` ranges, `a::b`, `@list.txt`).
    #[arg(long)]
    shards: Option<String>,
    /// The embedding store folder (created; re-running resumes it).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Decode/preprocess threads (0 = all cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Also store per-token text encodings [N, 77, W] and masks (large).
    #[arg(long)]
    text_encodings: bool,
    /// Read captions from this `.json` field instead of `.txt`.
    #[arg(long)]
    caption_json_field: Option<String>,
}

fn default_batch_size() -> usize {
    64
}

/// The `--config` file of `unclip embed`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedConfig {
    clip: Option<PathBuf>,
    shards: Option<String>,
    out: Option<PathBuf>,
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    #[serde(default)]
    workers: usize,
    #[serde(default)]
    text_encodings: bool,
    #[serde(default)]
    caption_json_field: Option<String>,
}

pub fn run(cmd: EmbedCommand) -> anyhow::Result<()> {
    match cmd.sub {
        Some(EmbedSub::ImportClipRetrieval(o)) => {
            crate::print_json(&unclip_embed::import_clip_retrieval(&o)?)
        }
        None => run_embed(cmd.run),
    }
}

fn run_embed(a: EmbedArgs) -> anyhow::Result<()> {
    let mut c = match &a.config {
        Some(path) => unclip_config::load::<EmbedConfig>(path, &a.overrides)?.value,
        None if !a.overrides.is_empty() => anyhow::bail!("--set needs --config"),
        None => EmbedConfig {
            batch_size: default_batch_size(),
            ..Default::default()
        },
    };
    c.clip = a.clip.or(c.clip);
    c.shards = a.shards.or(c.shards);
    c.out = a.out.or(c.out);
    c.batch_size = a.batch_size.unwrap_or(c.batch_size);
    c.workers = a.workers.unwrap_or(c.workers);
    c.text_encodings |= a.text_encodings;
    c.caption_json_field = a.caption_json_field.or(c.caption_json_field);
    let missing = |what: &str| anyhow::anyhow!("missing --{what} (or `{what}:` in --config)");
    let clip = c.clip.ok_or_else(|| missing("clip"))?;
    let job = EmbedJob {
        shards: c.shards.ok_or_else(|| missing("shards"))?,
        out: c.out.ok_or_else(|| missing("out"))?,
        batch_size: c.batch_size,
        workers: c.workers,
        text_encodings: c.text_encodings,
        caption_json_field: c.caption_json_field,
        max_pixels: unclip_data::decode::DEFAULT_MAX_PIXELS,
    };
    let embedder = unclip_embed::ClipEmbedder::load(&clip)
        .with_context(|| format!("loading CLIP from {}", clip.display()))?;
    let report = embed(&job, &embedder)?;
    crate::print_json(&report)
}
