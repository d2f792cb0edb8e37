//! `unclip data synth`: the shapes world, rendered into train / val / holdout shards.
//!
//! Sample `i` is a pure function of `(seed, i)` and the world's options: its scene, caption,
//! texture and split each come from their own `KeyedRng` stream keyed by the index, so the
//! output is the same whatever `--count`, `--threads` or the order of rendering. Samples with
//! a held-out (colour, shape) combination go to `holdout/` (compositional generalisation
//! tests); of the rest, each goes to `val/` with probability `--val-fraction`.

mod world;

#[cfg(test)]
mod tests;

pub use world::{parse_holdout, HoldoutError, SampleRecord, Split, SynthSample, World};

use crate::encode::{encode_rgb, ImageFormat};
use crate::shapes::{self, scene, Shape, SizeClass};
use crate::shard_writer::{prepare_output_dir, ShardWriter};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use unclip_data::parallel::{map_ordered, thread_count};
use unclip_data::progress::progress_bar;

/// Options of `unclip data synth`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SynthOptions {
    /// Output folder: receives train/, val/, holdout/ (tar shards) and synth.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of samples to generate (over all splits).
    #[arg(long, default_value_t = 2000)]
    pub count: u64,
    /// Image side in pixels (square images; at least 16).
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Seed of the world: the same seed gives the same samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples per tar shard.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub samples_per_shard: u64,
    /// Image encoding inside the shards.
    #[arg(long, value_enum, default_value_t = ImageFormat::Png)]
    pub format: ImageFormat,
    /// JPEG quality (1–100); ignored for png.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,
    /// Fraction of images holding two objects in a spatial relation.
    #[arg(long, default_value_t = 0.3)]
    pub two_object_fraction: f64,
    /// Fraction of the non-holdout samples that go to val/.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Comma-separated "color shape" combinations kept out of train and val, e.g.
    /// "purple triangle,red circle"; samples containing one go to holdout/.
    #[arg(long, default_value = "")]
    pub holdout: String,
    /// A faint noise texture on the background (on/off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub texture: bool,
    /// Rendering threads (0 = all cores); the output does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Replace shards already in the output folder instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
}

impl SynthOptions {
    /// The options with every default, writing to `out` (what the CLI gives with only `--out`).
    pub fn new(out: impl Into<PathBuf>) -> Self {
        use clap::{Args, FromArgMatches};
        let cmd = Self::augment_args(clap::Command::new("synth").no_binary_name(true));
        let matches = cmd.get_matches_from(["--out", "."]);
        let mut opts = Self::from_arg_matches(&matches).expect("defaults parse");
        opts.out = out.into();
        opts
    }
}

/// Samples per split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: u64,
    pub val: u64,
    pub holdout: u64,
}

impl SplitCounts {
    fn add(&mut self, split: Split) {
        match split {
            Split::Train => self.train += 1,
            Split::Val => self.val += 1,
            Split::Holdout => self.holdout += 1,
        }
    }
}

/// What `synth` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SynthReport {
    pub out: PathBuf,
    pub counts: SplitCounts,
    /// Shard paths per split name.
    pub shards: BTreeMap<String, Vec<PathBuf>>,
    /// The `synth.json` describing the dataset.
    pub manifest: PathBuf,
}

/// `synth.json`: how the data was made and what the vocabulary means, for scorers and people.
#[derive(Serialize)]
struct Manifest<'a> {
    generator: &'static str,
    version: &'static str,
    options: &'a SynthOptions,
    holdout_combos: Vec<String>,
    palette: BTreeMap<&'static str, [u8; 3]>,
    shapes: Vec<&'static str>,
    size_classes: BTreeMap<&'static str, [f64; 2]>,
    positions: Vec<&'static str>,
    relations: Vec<&'static str>,
    background_channel_range: [u8; 2],
    texture_amplitude: f64,
    counts: SplitCounts,
    shards: BTreeMap<String, Vec<String>>,
}

/// Render the shapes world described by `opts` into shards under `opts.out`.
pub fn synth(opts: &SynthOptions) -> anyhow::Result<SynthReport> {
    let world = World::from_options(opts)?;
    let split_dir = |s: Split| opts.out.join(s.name());
    // One writer per output folder, for the whole command.
    let _lock = unclip_fs::FolderLock::acquire(&opts.out, "unclip data synth")?;
    for split in Split::ALL {
        prepare_output_dir(&split_dir(split), opts.overwrite)?;
    }
    let mut writers = BTreeMap::new();
    for split in Split::ALL {
        if split != Split::Holdout || !world.holdout.is_empty() {
            std::fs::create_dir_all(split_dir(split))
                .with_context(|| format!("cannot create {}", split_dir(split).display()))?;
            writers.insert(
                split,
                ShardWriter::new(split_dir(split), opts.samples_per_shard)?,
            );
        }
    }

    let count = usize::try_from(opts.count).context("--count is too large")?;
    let bar = progress_bar(opts.count, "synth");
    let mut counts = SplitCounts::default();
    let ext = opts.format.ext();
    map_ordered(
        count,
        thread_count(opts.threads),
        |i| {
            let sample = world.sample(i as u64);
            let image = world.render(&sample);
            let bytes = encode_rgb(&image, opts.format, opts.quality);
            (sample, bytes)
        },
        |i, (sample, bytes)| -> anyhow::Result<()> {
            let bytes = bytes.with_context(|| format!("cannot encode sample {i}"))?;
            let writer = writers
                .get_mut(&sample.split)
                .expect("a writer exists for every split a sample can take");
            let record = SampleRecord::new(writer.next_key(), i as u64, &sample);
            let json = serde_json::to_vec(&record)?;
            writer
                .write_sample(&[
                    (ext, &bytes),
                    ("txt", sample.caption.as_bytes()),
                    ("json", &json),
                ])
                .with_context(|| format!("cannot write shards under {}", opts.out.display()))?;
            counts.add(sample.split);
            bar.inc(1);
            Ok(())
        },
    )?;
    bar.finish();

    let mut shards = BTreeMap::new();
    for (split, writer) in writers {
        let written = writer.finish()?;
        shards.insert(
            split.name().to_string(),
            written.into_iter().map(|s| s.path).collect::<Vec<_>>(),
        );
    }
    let manifest_path = opts.out.join("synth.json");
    let manifest = Manifest {
        generator: "unclip data synth",
        version: env!("CARGO_PKG_VERSION"),
        options: opts,
        holdout_combos: world
            .holdout
            .iter()
            .map(|(c, s)| format!("{} {}", c.name(), s.name()))
            .collect(),
        palette: shapes::PALETTE.into_iter().collect(),
        shapes: Shape::ALL.iter().map(|s| s.name()).collect(),
        size_classes: SizeClass::ALL
            .iter()
            .map(|s| (s.name(), s.diameter_range()))
            .collect(),
        positions: shapes::Position::ALL.iter().map(|p| p.name()).collect(),
        relations: shapes::Relation::ALL.iter().map(|r| r.name()).collect(),
        background_channel_range: scene::BACKGROUND_CHANNEL_RANGE,
        texture_amplitude: shapes::render::TEXTURE_AMPLITUDE,
        counts,
        shards: shards
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|p| file_name(p)).collect()))
            .collect(),
    };
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    unclip_fs::write_atomic(&manifest_path, &json)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    tracing::info!(
        train = counts.train,
        val = counts.val,
        holdout = counts.holdout,
        out = %opts.out.display(),
        "synth done"
    );
    Ok(SynthReport {
        out: opts.out.clone(),
        counts,
        shards,
        manifest: manifest_path,
    })
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
