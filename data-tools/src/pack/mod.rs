//! `unclip data pack`: a folder (or CSV/TSV table) of images and captions into
//! img2dataset-compatible tar shards.
//!
//! Each sample becomes `<key>.<jpg|png>`, `<key>.txt` (the caption) and `<key>.json`
//! ([`PackedRecord`]). Inputs that cannot be used — no caption, unreadable file, undecodable
//! image — are skipped and counted by reason, in the report and in each shard's stats file.
//! Images are decoded and resized on several threads but written in input order, so the output
//! is the same whatever the thread count.

mod input;
mod resize;

#[cfg(test)]
mod tests;

pub use input::{list_inputs, CaptionSource, InputItem, CAPTION_COLUMNS, PATH_COLUMNS};
pub use resize::{apply as resize_image, ResizeMode, BORDER_RGB};

use crate::encode::{encode_rgb, ImageFormat};
use crate::shard_writer::{prepare_output_dir, ShardWriter, FAILED_TO_DECODE};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use unclip_data::decode::{caption_from_txt, decode_rgb, DEFAULT_MAX_PIXELS};
use unclip_data::parallel::{map_ordered, thread_count};
use unclip_data::progress::progress_bar;

/// Skip reason: no `.txt` beside the image, an empty one, or an empty caption cell.
pub const MISSING_CAPTION: &str = "missing_caption";
/// Skip reason: the image or caption file could not be read.
pub const FAILED_TO_READ: &str = "failed_to_read";
/// Skip reason: the resized image could not be encoded.
pub const FAILED_TO_ENCODE: &str = "failed_to_encode";

/// How many example inputs the report lists per skip reason.
const EXAMPLES_PER_REASON: usize = 5;

/// Options of `unclip data pack`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct PackOptions {
    /// A folder of images with same-stem .txt captions (searched recursively, sorted by path),
    /// or a .csv/.tsv table with a header row naming an image-path and a caption column.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder for the shards ({shard:05}.tar and {shard:05}_stats.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Samples per tar shard.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub samples_per_shard: u64,
    /// Target size in pixels (its meaning depends on --resize-mode).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub image_size: u32,
    /// border: fit inside and pad to a square with white; keep_ratio: shorter side to
    /// --image-size; center_crop: shorter side, then the central square; no: original bytes.
    #[arg(long, value_enum, default_value_t = ResizeMode::Border)]
    pub resize_mode: ResizeMode,
    /// Image encoding inside the shards (ignored with --resize-mode no).
    #[arg(long, value_enum, default_value_t = ImageFormat::Jpg)]
    pub format: ImageFormat,
    /// JPEG quality (1–100).
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// Table column holding image paths, relative to the table's folder
    /// [default: the first of path, image, filepath].
    #[arg(long)]
    pub path_column: Option<String>,
    /// Table column holding captions [default: the first of caption, text].
    #[arg(long)]
    pub caption_column: Option<String>,
    /// Decoding threads (0 = all cores); the output does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Replace shards already in the output folder instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
}

impl PackOptions {
    /// The options with every default, packing `input` into `out`.
    pub fn new(input: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        use clap::{Args, FromArgMatches};
        let cmd = Self::augment_args(clap::Command::new("pack").no_binary_name(true));
        let matches = cmd.get_matches_from(["--input", ".", "--out", "."]);
        let mut opts = Self::from_arg_matches(&matches).expect("defaults parse");
        opts.input = input.into();
        opts.out = out.into();
        opts
    }
}

/// A packed sample's `<key>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedRecord {
    pub key: String,
    pub caption: String,
    pub original_path: String,
    pub original_width: u32,
    pub original_height: u32,
    pub width: u32,
    pub height: u32,
}

/// What `pack` did.
#[derive(Debug, Clone, Serialize)]
pub struct PackReport {
    pub out: PathBuf,
    /// Inputs found (written + skipped).
    pub inputs: u64,
    /// Samples written.
    pub written: u64,
    /// Skipped inputs by reason.
    pub skipped: BTreeMap<String, u64>,
    /// A few skipped inputs per reason, as "path: why".
    pub skipped_examples: BTreeMap<String, Vec<String>>,
    pub shards: Vec<PathBuf>,
}

/// One input ready to write.
struct Packed {
    ext: &'static str,
    image: Vec<u8>,
    caption: String,
    original: (u32, u32),
    size: (u32, u32),
}

struct Skip {
    reason: &'static str,
    detail: String,
}

fn skip(reason: &'static str, detail: impl ToString) -> Skip {
    Skip {
        reason,
        detail: detail.to_string(),
    }
}

fn read_caption(source: &CaptionSource) -> Result<String, Skip> {
    let text = match source {
        CaptionSource::Missing => return Err(skip(MISSING_CAPTION, "no caption")),
        CaptionSource::Text(text) => text.trim().to_string(),
        CaptionSource::File(path) => {
            let bytes = std::fs::read(path).map_err(|e| skip(FAILED_TO_READ, e))?;
            let (text, lossy) = caption_from_txt(&bytes);
            if lossy {
                tracing::warn!(path = %path.display(), "caption is not valid UTF-8; kept lossily");
            }
            text
        }
    };
    if text.is_empty() {
        return Err(skip(MISSING_CAPTION, "empty caption"));
    }
    Ok(text)
}

fn pack_one(item: &InputItem, opts: &PackOptions) -> Result<Packed, Skip> {
    let caption = read_caption(&item.caption)?;
    let bytes = std::fs::read(&item.image).map_err(|e| skip(FAILED_TO_READ, e))?;
    let ext = input::lower_ext(&item.image).unwrap_or_default();
    let img =
        decode_rgb(&bytes, &ext, DEFAULT_MAX_PIXELS).map_err(|e| skip(FAILED_TO_DECODE, e))?;
    let original = img.dimensions();
    let (ext, image, size) = match resize::apply(&img, opts.resize_mode, opts.image_size) {
        None => {
            let ext = match ext.as_str() {
                "png" => "png",
                "webp" => "webp",
                _ => "jpg",
            };
            (ext, bytes, original)
        }
        Some(resized) => {
            let encoded = encode_rgb(&resized, opts.format, opts.quality)
                .map_err(|e| skip(FAILED_TO_ENCODE, e))?;
            (opts.format.ext(), encoded, resized.dimensions())
        }
    };
    Ok(Packed {
        ext,
        image,
        caption,
        original,
        size,
    })
}

/// Pack `opts.input` into shards under `opts.out`.
pub fn pack(opts: &PackOptions) -> anyhow::Result<PackReport> {
    let items = list_inputs(
        &opts.input,
        opts.path_column.as_deref(),
        opts.caption_column.as_deref(),
    )?;
    // One writer per output folder, for the whole command.
    let _lock = unclip_fs::FolderLock::acquire(&opts.out, "unclip data pack")?;
    prepare_output_dir(&opts.out, opts.overwrite)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let mut writer = ShardWriter::new(&opts.out, opts.samples_per_shard)?;
    let bar = progress_bar(items.len() as u64, "pack");
    let mut report = PackReport {
        out: opts.out.clone(),
        inputs: items.len() as u64,
        written: 0,
        skipped: BTreeMap::new(),
        skipped_examples: BTreeMap::new(),
        shards: Vec::new(),
    };
    map_ordered(
        items.len(),
        thread_count(opts.threads),
        |i| pack_one(&items[i], opts),
        |i, result| -> anyhow::Result<()> {
            bar.inc(1);
            let item = &items[i];
            let packed = match result {
                Ok(packed) => packed,
                Err(Skip { reason, detail }) => {
                    tracing::debug!(path = %item.image.display(), reason, %detail, "skipped");
                    writer.record_skip(reason);
                    *report.skipped.entry(reason.to_string()).or_default() += 1;
                    let examples = report
                        .skipped_examples
                        .entry(reason.to_string())
                        .or_default();
                    if examples.len() < EXAMPLES_PER_REASON {
                        examples.push(format!("{}: {detail}", item.original_path));
                    }
                    return Ok(());
                }
            };
            let record = PackedRecord {
                key: writer.next_key(),
                caption: packed.caption,
                original_path: item.original_path.clone(),
                original_width: packed.original.0,
                original_height: packed.original.1,
                width: packed.size.0,
                height: packed.size.1,
            };
            let json = serde_json::to_vec(&record)?;
            writer
                .write_sample(&[
                    (packed.ext, &packed.image),
                    ("txt", record.caption.as_bytes()),
                    ("json", &json),
                ])
                .with_context(|| format!("cannot write shards under {}", opts.out.display()))?;
            report.written += 1;
            Ok(())
        },
    )?;
    bar.finish();
    report.shards = writer.finish()?.into_iter().map(|s| s.path).collect();
    tracing::info!(
        written = report.written,
        skipped = report.inputs - report.written,
        shards = report.shards.len(),
        out = %opts.out.display(),
        "pack done"
    );
    Ok(report)
}
