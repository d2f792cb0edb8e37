//! `unclip bench …`: throughput measurements, one JSON line each, compared with peers in
//! docs/benchmarks.md.

use clap::{Args, Subcommand};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use unclip_data::{ImageTransform, Loader, LoaderConfig, Partition};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Decode + resize (shorter side, antialiased) + center crop + normalise + batch, over a
    /// whole shard spec.
    Data(DataBench),
    /// Frozen-CLIP embedding throughput: shard bytes → image embeddings, and captions → text
    /// embeddings.
    Embed(EmbedBench),
    /// Training-step throughput of a run config: median s/step, samples/s and parameters.
    Train(crate::train::TrainBench),
}

#[derive(Debug, Args)]
pub struct EmbedBench {
    /// A HF CLIP folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    clip: std::path::PathBuf,
    /// Shard spec.
    #[arg(long)]
    shards: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Decode/preprocess threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[derive(Debug, Serialize)]
struct EmbedBenchResult {
    bench: &'static str,
    #[serde(rename = "impl")]
    implementation: &'static str,
    images: u64,
    images_seconds: f64,
    images_per_s: f64,
    captions: u64,
    captions_seconds: f64,
    captions_per_s: f64,
    batch_size: usize,
    workers: usize,
    cores: usize,
    image_size: u32,
    embed_dim: usize,
}

#[derive(Debug, Args)]
pub struct DataBench {
    /// Shard spec (files, directories, globs, `{000..009}` ranges, `a::b`, `@list.txt`).
    #[arg(long)]
    shards: String,
    #[arg(long, default_value_t = 64)]
    image_size: u32,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Decode threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Full passes over the data; the rate is over all of them.
    #[arg(long, default_value_t = 1)]
    passes: u64,
}

#[derive(Debug, Serialize)]
struct DataBenchResult {
    bench: &'static str,
    #[serde(rename = "impl")]
    implementation: &'static str,
    images: u64,
    batches: u64,
    seconds: f64,
    images_per_s: f64,
    images_per_s_per_core: f64,
    cores: usize,
    workers: usize,
    batch_size: usize,
    image_size: u32,
    skipped: u64,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Data(b) => data(b),
        BenchCommand::Embed(b) => embed(b),
        BenchCommand::Train(b) => crate::train::bench_train(b),
    }
}

fn data(b: DataBench) -> anyhow::Result<()> {
    use burn::backend::Flex;
    let mut config = LoaderConfig::new(b.shards.clone(), b.batch_size);
    config.workers = b.workers;
    config.shuffle = false;
    config.drop_last = false;
    config.epochs = Some(b.passes);
    let transform = Arc::new(ImageTransform::new(b.image_size));
    let device = Default::default();
    // The count only sizes the progress bar (a header scan); it is not timed.
    let total = unclip_data::count_for_progress(&unclip_data::spec::resolve(&b.shards)?, b.workers)
        .unwrap_or(0);
    let bar = unclip_data::progress::progress_bar(total * b.passes, "bench data");
    let start = Instant::now();
    let mut loader = Loader::new(config, Partition::SINGLE, transform, None)?;
    let mut checksum = 0f64;
    while let Some(batch) = loader.next_batch()? {
        // Batches end as tensors on the device, as in training.
        let t = batch.tensor::<Flex, 4>("image", &device)?;
        checksum += t.slice([0..1, 0..1, 0..1, 0..1]).into_scalar() as f64;
        bar.inc(batch.len() as u64);
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let summary = loader.summary();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let images_per_s = summary.samples as f64 / seconds;
    tracing::debug!(checksum, "bench data done");
    crate::print_json(&DataBenchResult {
        bench: "data",
        implementation: "unclip",
        images: summary.samples,
        batches: summary.batches,
        seconds,
        images_per_s,
        images_per_s_per_core: images_per_s / cores as f64,
        cores,
        workers: b.workers,
        batch_size: b.batch_size,
        image_size: b.image_size,
        skipped: summary.skipped_total(),
    })
}

fn embed(b: EmbedBench) -> anyhow::Result<()> {
    use unclip_embed::clip_embedder::{ClipEmbedder, ClipPreprocess};
    use unclip_embed::Embedder;
    // Model loading is not timed (as on the peer's side).
    let embedder = ClipEmbedder::load(&b.clip)?;
    let image_size = embedder.image_size();
    let mut config = LoaderConfig::new(b.shards.clone(), b.batch_size);
    config.workers = b.workers;
    config.shuffle = false;
    config.drop_last = false;
    config.epochs = Some(1);
    config.require_caption = true;
    let total = unclip_data::count_for_progress(&unclip_data::spec::resolve(&b.shards)?, b.workers)
        .unwrap_or(0);
    let bar = unclip_data::progress::progress_bar(total, "bench embed (images)");
    let start = Instant::now();
    let mut loader = Loader::new(
        config,
        Partition::SINGLE,
        Arc::new(ClipPreprocess { image_size }),
        None,
    )?;
    let mut captions = Vec::new();
    let mut images = 0u64;
    while let Some(batch) = loader.next_batch()? {
        let pixels = batch
            .field("pixel_values")
            .expect("the transform emits pixel_values")
            .data
            .clone();
        let out = embedder.embed_images(pixels, batch.len())?;
        std::hint::black_box(out);
        images += batch.len() as u64;
        captions.extend(batch.captions.into_iter().flatten());
        bar.inc(batch.keys.len() as u64);
    }
    let images_seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let start = Instant::now();
    for chunk in captions.chunks(b.batch_size) {
        std::hint::black_box(embedder.embed_texts(chunk, false)?);
    }
    let captions_seconds = start.elapsed().as_secs_f64();
    crate::print_json(&EmbedBenchResult {
        bench: "embed",
        implementation: "unclip",
        images,
        images_seconds,
        images_per_s: images as f64 / images_seconds,
        captions: captions.len() as u64,
        captions_seconds,
        captions_per_s: captions.len() as f64 / captions_seconds,
        batch_size: b.batch_size,
        workers: b.workers,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        image_size,
        embed_dim: embedder.info().embed_dim,
    })
}
