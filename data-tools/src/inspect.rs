//! `unclip data inspect SPEC`: what is in a set of shards, read through the real loader.
//!
//! Counts good samples and bad ones by reason (exactly as training would skip them), gathers
//! caption-length and image-size statistics, and, when asked (`--contact-sheet PATH`), draws a
//! contact sheet of the first K samples with their captions. It writes no other file. `--json`
//! prints one machine-readable object.

use anyhow::Context;
use image::{Rgb, RgbImage};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use unclip_data::pixels::to_chw_unit;
use unclip_data::progress::progress_bar;
use unclip_data::transform::{DecodedSample, Example, Field, SampleContext, TransformError};
use unclip_data::{CaptionSource, Loader, LoaderConfig, LoaderSummary, Partition, SampleTransform};

#[derive(Debug, Clone, clap::Args)]
pub struct InspectOptions {
    /// Shard spec: files, directories, globs, `{000..009}` ranges, `a::b` lists, `@list.txt`.
    pub shards: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Samples shown on the contact sheet.
    #[arg(short = 'k', long = "contact-sheet-samples", default_value_t = 32)]
    pub k: usize,
    /// Draw a contact sheet of the first `-k` samples into this PNG (nothing is written
    /// without it).
    #[arg(long)]
    pub contact_sheet: Option<PathBuf>,
    /// Decode threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Read captions from this `.json` field instead of the `.txt` member.
    #[arg(long)]
    pub caption_json_field: Option<String>,
}

/// min / mean / max of a quantity.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stat {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

#[derive(Default)]
struct Acc {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Acc {
    fn add(&mut self, x: f64) {
        if self.n == 0 || x < self.min {
            self.min = x;
        }
        if self.n == 0 || x > self.max {
            self.max = x;
        }
        self.n += 1;
        self.sum += x;
    }
    fn stat(&self) -> Stat {
        Stat {
            min: self.min,
            mean: if self.n == 0 {
                0.0
            } else {
                self.sum / self.n as f64
            },
            max: self.max,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub shards: usize,
    /// Good samples (decodable image and, unless captions come from elsewhere, a caption).
    pub samples: u64,
    /// Skipped samples and shard problems by reason.
    pub bad: BTreeMap<String, u64>,
    /// Samples kept despite a problem (e.g. captions that were not valid UTF-8).
    pub warnings: BTreeMap<String, u64>,
    pub caption_chars: Stat,
    pub caption_words: Stat,
    pub image_width: Stat,
    pub image_height: Stat,
    /// The most frequent image sizes, `"WxH": count`, at most ten.
    pub image_sizes: BTreeMap<String, u64>,
    pub contact_sheet: Option<PathBuf>,
}

const THUMB: u32 = 96;
const CAPTION_LINES: u32 = 3;
const GLYPH: u32 = 8;
const COLUMNS: u32 = 8;

/// Decodes each sample once: its size always, a thumbnail for the first `k`.
struct InspectTransform {
    k: u64,
}

impl SampleTransform for InspectTransform {
    fn apply(&self, sample: DecodedSample, ctx: SampleContext) -> Result<Example, TransformError> {
        let img = sample.decode()?;
        let (w, h) = img.dimensions();
        let mut fields = vec![Field {
            name: "size".into(),
            shape: vec![2],
            data: vec![w as f32, h as f32],
        }];
        if ctx.index < self.k {
            let side = w.min(h);
            let square =
                image::imageops::crop_imm(&img, (w - side) / 2, (h - side) / 2, side, side)
                    .to_image();
            let thumb = unclip_data::transform::resize_rgb(&square, THUMB, THUMB);
            let mut data = Vec::new();
            to_chw_unit(&thumb, &mut data);
            fields.push(Field {
                name: "thumb".into(),
                shape: vec![3, THUMB as usize, THUMB as usize],
                data,
            });
        }
        Ok(Example {
            key: sample.key,
            caption: sample.caption,
            index: ctx.index,
            fields,
        })
    }
}

pub fn inspect(opts: &InspectOptions) -> anyhow::Result<InspectReport> {
    let shards = unclip_data::spec::resolve(&opts.shards)?;
    let mut config = LoaderConfig::new(opts.shards.clone(), 1);
    config.workers = opts.workers.max(1);
    config.shuffle = false;
    config.drop_last = false;
    config.epochs = Some(1);
    config.prefetch_batches = 64;
    if let Some(field) = &opts.caption_json_field {
        config.caption = CaptionSource::Json(field.clone());
    }
    if let Some(sheet) = &opts.contact_sheet {
        let same = |s: &PathBuf| {
            std::fs::canonicalize(s).ok() == std::fs::canonicalize(sheet).ok() && sheet.exists()
        };
        if shards.iter().any(same) {
            anyhow::bail!(
                "--contact-sheet {} names one of the shards being inspected: choose another file",
                sheet.display()
            );
        }
        // Replacing an earlier contact sheet is fine; replacing any other file is not.
        let mut head = [0u8; 8];
        let is_png = std::fs::File::open(sheet)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok()
            && head == *b"\x89PNG\r\n\x1a\n";
        if sheet.exists() && !is_png {
            anyhow::bail!(
                "--contact-sheet {} exists and is not a PNG image: choose another file (only an \
                 earlier contact sheet is replaced)",
                sheet.display()
            );
        }
    }
    let k = if opts.contact_sheet.is_some() {
        opts.k
    } else {
        0
    };
    let total = unclip_data::count_for_progress(&shards, config.workers).unwrap_or(0);
    let transform = Arc::new(InspectTransform { k: k as u64 });
    let mut loader = Loader::new(config, Partition::SINGLE, transform, None)?;
    let bar = progress_bar(total, "inspecting");
    let (mut chars, mut words, mut width, mut height) = (
        Acc::default(),
        Acc::default(),
        Acc::default(),
        Acc::default(),
    );
    let mut sizes: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let mut thumbs: Vec<(RgbImage, String)> = Vec::new();
    let mut last_seen = 0u64;
    while let Some(batch) = loader.next_batch()? {
        let caption = batch.captions[0].clone().unwrap_or_default();
        chars.add(caption.chars().count() as f64);
        words.add(caption.split_whitespace().count() as f64);
        let size = &batch
            .field("size")
            .expect("inspect transform emits size")
            .data;
        width.add(size[0] as f64);
        height.add(size[1] as f64);
        *sizes.entry((size[0] as u32, size[1] as u32)).or_default() += 1;
        if let Some(t) = batch.field("thumb") {
            if thumbs.len() < k {
                let side = THUMB as usize;
                thumbs.push((
                    unclip_data::pixels::chw_to_rgb(&t.data, side, side),
                    caption,
                ));
            }
        }
        let seen = loader.summary().samples + loader.summary().skipped_total();
        bar.inc(seen - last_seen);
        last_seen = seen;
    }
    bar.finish_and_clear();
    let summary: LoaderSummary = loader.summary().clone();
    let contact_sheet = match &opts.contact_sheet {
        Some(path) if !thumbs.is_empty() => {
            unclip_fs::write_png(path, &contact_sheet(&thumbs))
                .with_context(|| format!("writing {}", path.display()))?;
            Some(path.clone())
        }
        _ => None,
    };
    let mut by_count: Vec<((u32, u32), u64)> = sizes.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(InspectReport {
        shards: shards.len(),
        samples: summary.samples,
        bad: summary.skipped,
        warnings: summary.warnings,
        caption_chars: chars.stat(),
        caption_words: words.stat(),
        image_width: width.stat(),
        image_height: height.stat(),
        image_sizes: by_count
            .into_iter()
            .take(10)
            .map(|((w, h), n)| (format!("{w}x{h}"), n))
            .collect(),
        contact_sheet,
    })
}

/// The human-readable form of a report.
pub fn render_text(r: &InspectReport) -> String {
    let mut s = String::new();
    let stat = |st: &Stat| format!("min {:.0}  mean {:.1}  max {:.0}", st.min, st.mean, st.max);
    s += &format!("shards           {}\n", r.shards);
    s += &format!("good samples     {}\n", r.samples);
    let bad: u64 = r.bad.values().sum();
    s += &format!("bad              {bad}\n");
    for (reason, n) in &r.bad {
        s += &format!("  {reason:<22} {n}\n");
    }
    for (reason, n) in &r.warnings {
        s += &format!("warning {reason:<16} {n}\n");
    }
    s += &format!("caption chars    {}\n", stat(&r.caption_chars));
    s += &format!("caption words    {}\n", stat(&r.caption_words));
    s += &format!("image width      {}\n", stat(&r.image_width));
    s += &format!("image height     {}\n", stat(&r.image_height));
    for (size, n) in &r.image_sizes {
        s += &format!("  {size:<14} {n}\n");
    }
    if let Some(p) = &r.contact_sheet {
        s += &format!("contact sheet    {}\n", p.display());
    }
    s
}

/// Thumbnails in a grid, each with up to three lines of its caption beneath (8×8 bitmap font).
fn contact_sheet(items: &[(RgbImage, String)]) -> RgbImage {
    let cols = COLUMNS.min(items.len() as u32);
    let rows = (items.len() as u32).div_ceil(cols);
    let pad = 4;
    let cell_w = THUMB + pad;
    let cell_h = THUMB + CAPTION_LINES * (GLYPH + 2) + pad * 2;
    let mut sheet = RgbImage::from_pixel(cols * cell_w + pad, rows * cell_h + pad, Rgb([255; 3]));
    let per_line = (THUMB / GLYPH) as usize;
    for (i, (thumb, caption)) in items.iter().enumerate() {
        let (cx, cy) = (
            (i as u32 % cols) * cell_w + pad,
            (i as u32 / cols) * cell_h + pad,
        );
        image::imageops::replace(&mut sheet, thumb, cx as i64, cy as i64);
        let chars: Vec<char> = caption.chars().collect();
        for (line, chunk) in chars
            .chunks(per_line)
            .take(CAPTION_LINES as usize)
            .enumerate()
        {
            let y = cy + THUMB + 3 + line as u32 * (GLYPH + 2);
            for (j, ch) in chunk.iter().enumerate() {
                draw_glyph(&mut sheet, cx + j as u32 * GLYPH, y, *ch);
            }
        }
    }
    sheet
}

fn draw_glyph(img: &mut RgbImage, x: u32, y: u32, ch: char) {
    let code = if ch.is_ascii() {
        ch as usize
    } else {
        b'?' as usize
    };
    let glyph = font8x8::legacy::BASIC_LEGACY[code];
    for (row, bits) in glyph.iter().enumerate() {
        for col in 0..8u32 {
            if bits & (1 << col) != 0 {
                let (px, py) = (x + col, y + row as u32);
                if px < img.width() && py < img.height() {
                    img.put_pixel(px, py, Rgb([0, 0, 0]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_draw_ink_only_for_visible_characters() {
        let mut img = RgbImage::from_pixel(16, 8, Rgb([255; 3]));
        draw_glyph(&mut img, 0, 0, ' ');
        assert!(img.pixels().all(|p| p.0 == [255; 3]));
        draw_glyph(&mut img, 8, 0, 'A');
        assert!(img.pixels().any(|p| p.0 == [0; 3]));
    }

    #[test]
    fn stats_accumulate() {
        let mut a = Acc::default();
        for x in [3.0, 1.0, 2.0] {
            a.add(x);
        }
        assert_eq!(
            a.stat(),
            Stat {
                min: 1.0,
                mean: 2.0,
                max: 3.0
            }
        );
    }
}
