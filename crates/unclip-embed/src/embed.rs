//! The embedding job behind `unclip embed`: stream shards through a frozen encoder and write the
//! embedding store (`unclip_data::store`) beside them.
//!
//! Shards are processed one at a time in spec order; inside a shard, image decoding and
//! preprocessing run on worker threads while the encoder runs batches on the caller's thread.
//! A shard's file is written atomically and only then marked complete in the manifest, so a
//! killed job leaves no partial file visible and a re-run skips what is done and finishes the
//! rest. Samples that cannot be embedded (no image, undecodable image, no caption) are recorded
//! in the shard's file as missing, with the reason, so loaders know exactly which keys have
//! embeddings. The encoder is abstract ([`Embedder`]): frozen CLIP in production, a fake in tests.

use anyhow::{bail, Context};
use image::RgbImage;

/// Samples prepared at a time while a shard streams by.
const CHUNK: usize = 1024;
use serde::Serialize;
use std::path::{Path, PathBuf};
use unclip_data::parallel::{map_ordered, thread_count};
use unclip_data::progress::progress_bar;
use unclip_data::remote::{is_remote, shard_name};
use unclip_data::sample::{read_sample, ReadOptions};
use unclip_data::shard::{read_shard, MemberReader, RawSample, ShardItem};
use unclip_data::store::{
    embedding_file_name, write_shard, ClipInfo, Manifest, ShardEmbeddings, ShardEntry,
    TextEncodings, EMPTY_CAPTION_FILE,
};
use unclip_data::CaptionSource;

/// Text-side outputs for a batch of captions.
pub struct TextBatch {
    /// `[n, D]`, L2-normalised.
    pub embeds: Vec<f32>,
    /// Per-token encodings and mask, when asked for.
    pub encodings: Option<TextEncodings>,
}

/// A frozen image/text encoder. Methods run on the job's thread; preprocessing (which must be
/// `Sync`) runs on workers.
pub trait Embedder {
    /// Identity, dims and hashes recorded in the manifest.
    fn info(&self) -> ClipInfo;
    /// Image → model input (CHW f32), on a worker thread.
    fn preprocess(&self, img: &RgbImage) -> Result<Vec<f32>, String>;
    /// `[n, D]` L2-normalised embeddings of `n` preprocessed images laid end to end.
    fn embed_images(&self, pixels: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>>;
    fn embed_texts(&self, captions: &[String], encodings: bool) -> anyhow::Result<TextBatch>;
}

/// What the job reads and writes (the flags of `unclip embed`, or the keys of its config).
#[derive(Debug, Clone)]
pub struct EmbedJob {
    pub shards: String,
    pub out: PathBuf,
    pub batch_size: usize,
    /// Decode/preprocess threads (0 = all cores).
    pub workers: usize,
    /// Also store per-token text encodings and masks (large).
    pub text_encodings: bool,
    /// Read captions from this `.json` field instead of `.txt`.
    pub caption_json_field: Option<String>,
    pub max_pixels: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EmbedReport {
    pub out: PathBuf,
    pub shards: usize,
    /// Shards embedded by this run.
    pub embedded_shards: usize,
    /// Shards found complete and skipped.
    pub skipped_shards: usize,
    /// Shards found complete but changed since (their fingerprint differs): embedded again.
    pub changed_shards: usize,
    /// Samples embedded by this run.
    pub samples: u64,
    /// Samples recorded as missing by this run, by reason.
    pub missing: std::collections::BTreeMap<String, u64>,
    /// Problems with the shards themselves met by this run (cut short, damaged tar data:
    /// samples that could not be read at all, so they have no key to record), by reason.
    pub shard_problems: std::collections::BTreeMap<String, u64>,
}

struct Prepared {
    key: String,
    caption: String,
    pixels: Vec<f32>,
}

/// One sample read through the loader's own sample reading (the same member checks and skip
/// reasons as training), decoded and preprocessed for the encoder.
fn prepare(
    job: &EmbedJob,
    embedder: &(dyn Embedder + Sync),
    shards: &[PathBuf],
    reader: &mut MemberReader,
    raw: &RawSample,
) -> Result<Prepared, &'static str> {
    let opts = ReadOptions {
        caption: match &job.caption_json_field {
            None => CaptionSource::Txt,
            Some(field) => CaptionSource::Json(field.clone()),
        },
        require_caption: true,
        max_pixels: job.max_pixels,
    };
    let (sample, _) = read_sample(shards, &opts, reader, raw.clone())?;
    let img = sample.decode().map_err(|e| e.reason())?;
    let pixels = embedder.preprocess(&img).map_err(|_| "preprocess_error")?;
    Ok(Prepared {
        key: sample.key,
        caption: sample.caption.unwrap_or_default(),
        pixels,
    })
}

/// Rows being gathered for one shard.
struct Rows {
    out: ShardEmbeddings,
    pending: Vec<Prepared>,
}

impl Rows {
    fn flush(&mut self, embedder: &dyn Embedder, job: &EmbedJob) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let n = batch.len();
        let captions: Vec<String> = batch.iter().map(|p| p.caption.clone()).collect();
        let mut pixels = Vec::with_capacity(n * batch[0].pixels.len());
        for p in &batch {
            pixels.extend_from_slice(&p.pixels);
        }
        let image = embedder.embed_images(pixels, n)?;
        let text = embedder.embed_texts(&captions, job.text_encodings)?;
        let dim = self.out.dim;
        if image.len() != n * dim || text.embeds.len() != n * dim {
            bail!("the encoder returned embeddings of the wrong size");
        }
        self.out.image_embed.extend(image);
        self.out.text_embed.extend(text.embeds);
        if job.text_encodings {
            let enc = text
                .encodings
                .context("the encoder returned no text encodings")?;
            let all = self.out.text_encodings.get_or_insert(TextEncodings {
                context: enc.context,
                width: enc.width,
                values: Vec::new(),
                mask: Vec::new(),
            });
            all.values.extend(enc.values);
            all.mask.extend(enc.mask);
        }
        self.out.keys.extend(batch.into_iter().map(|p| p.key));
        Ok(())
    }
}

/// Run the job: embed every shard the store does not have complete yet.
pub fn embed(job: &EmbedJob, embedder: &(dyn Embedder + Sync)) -> anyhow::Result<EmbedReport> {
    if job.batch_size == 0 {
        bail!("batch_size must be at least 1");
    }
    let shards = unclip_data::spec::resolve(&job.shards)?;
    let info = embedder.info();
    // One writer per store, for the whole job: two jobs on one --out would mix models.
    let _lock = unclip_fs::FolderLock::acquire(&job.out, "unclip embed")?;
    let mut manifest = match unclip_data::store::Manifest::load(&job.out) {
        Ok(m) => {
            // The folder may have moved: identity is the hashes and dims, not the path.
            let identity = |c: &ClipInfo| ClipInfo {
                source: String::new(),
                ..c.clone()
            };
            if identity(&m.clip) != identity(&info) || m.text_encodings != job.text_encodings {
                bail!(
                    "{} holds embeddings from another model or with other options \
                     (store: {:?}, text_encodings {}; now: {:?}, text_encodings {}); \
                     use a new --out folder",
                    job.out.display(),
                    m.clip,
                    m.text_encodings,
                    info,
                    job.text_encodings
                );
            }
            m
        }
        Err(_) if !job.out.join(unclip_data::store::MANIFEST_FILE).exists() => {
            Manifest::new(info.clone(), job.text_encodings)
        }
        Err(e) => return Err(e).context("reading the existing embedding store"),
    };
    std::fs::create_dir_all(&job.out).with_context(|| format!("creating {}", job.out.display()))?;
    let names: Vec<String> = shards.iter().map(|s| shard_name(s)).collect();
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        bail!("two shards are named {dup}: the store keys files by shard name");
    }
    // A shard is done when its entry is complete and, for a local shard, it still has the
    // fingerprint it was embedded with (a header scan); a changed shard is embedded anew.
    // Remote shards are not fetched to check: their keys are checked as they stream.
    let mut changed_shards = 0;
    let todo: Vec<usize> = (0..shards.len())
        .filter(|&i| {
            let Some(e) = manifest.entry(&names[i]).filter(|e| e.complete) else {
                return true;
            };
            let (Some(then), false) = (&e.fingerprint, is_remote(&shards[i])) else {
                return false;
            };
            let changed = unclip_data::fingerprint::fingerprint(&shards[i]) != *then;
            if changed {
                tracing::warn!(shard = %names[i], "the shard changed since it was embedded: embedding it again");
                changed_shards += 1;
            }
            changed
        })
        .collect();
    // The progress bar's length: local shards are counted from their headers; remote ones are
    // not (that would download them), so the bar then only counts.
    let any_remote = todo.iter().any(|&i| is_remote(&shards[i]));
    let total: u64 = if any_remote {
        0
    } else {
        todo.iter()
            .map(|&i| unclip_data::shard::count_samples(&shards[i]))
            .sum()
    };
    let bar = progress_bar(total, "embed");
    let mut report = EmbedReport {
        out: job.out.clone(),
        shards: shards.len(),
        skipped_shards: shards.len() - todo.len(),
        changed_shards,
        ..Default::default()
    };
    let threads = thread_count(job.workers);
    let readers: Vec<std::sync::Mutex<MemberReader>> = (0..threads)
        .map(|_| std::sync::Mutex::new(MemberReader::default()))
        .collect();
    for &i in &todo {
        let shard = &shards[i];
        let mut rows = Rows {
            out: ShardEmbeddings {
                keys: Vec::new(),
                missing: Vec::new(),
                dim: info.embed_dim,
                image_embed: Vec::new(),
                text_embed: Vec::new(),
                text_encodings: None,
            },
            pending: Vec::new(),
        };
        // Samples are prepared in chunks as the shard streams by, so memory stays bounded
        // even when a remote shard's members arrive with their bytes.
        let mut chunk: Vec<RawSample> = Vec::new();
        let mut failed: Option<anyhow::Error> = None;
        let mut problems = std::collections::BTreeMap::new();
        let process = |chunk: &mut Vec<RawSample>,
                       rows: &mut Rows,
                       report: &mut EmbedReport|
         -> anyhow::Result<()> {
            let samples = std::mem::take(chunk);
            map_ordered(
                samples.len(),
                threads,
                |j| {
                    // Any free reader will do; they only cache an open file.
                    let slot = j % readers.len();
                    let mut reader = readers[slot].lock().unwrap_or_else(|e| e.into_inner());
                    prepare(job, embedder, &shards, &mut reader, &samples[j])
                },
                |j, prepared| -> anyhow::Result<()> {
                    bar.inc(1);
                    match prepared {
                        Ok(p) => {
                            rows.pending.push(p);
                            if rows.pending.len() == job.batch_size {
                                rows.flush(embedder, job)?;
                            }
                        }
                        Err(reason) => {
                            *report.missing.entry(reason.to_string()).or_default() += 1;
                            rows.out
                                .missing
                                .push((samples[j].key.clone(), reason.to_string()));
                        }
                    }
                    Ok(())
                },
            )
        };
        let mut fp = unclip_data::fingerprint::Fingerprint::default();
        read_shard(shard, i as u32, &mut |item| {
            fp.add(&item);
            match item {
                ShardItem::Sample(s) => {
                    chunk.push(s);
                    if chunk.len() >= CHUNK {
                        if let Err(e) = process(&mut chunk, &mut rows, &mut report) {
                            failed = Some(e);
                            return false;
                        }
                    }
                }
                ShardItem::Problem(reason, detail) | ShardItem::Warning(reason, detail) => {
                    tracing::warn!(shard = %names[i], reason, detail, "shard problem while embedding");
                    *report.shard_problems.entry(reason.to_string()).or_default() += 1;
                    *problems.entry(reason.to_string()).or_default() += 1;
                }
            }
            true
        });
        if let Some(e) = failed {
            return Err(e);
        }
        process(&mut chunk, &mut rows, &mut report)?;
        rows.flush(embedder, job)?;
        if job.text_encodings && rows.out.text_encodings.is_none() {
            rows.out.text_encodings = Some(TextEncodings {
                context: info.context_length,
                width: info.text_width,
                values: Vec::new(),
                mask: Vec::new(),
            });
        }
        let file = embedding_file_name(shard);
        write_shard(&job.out.join(&file), &names[i], &rows.out)?;
        report.samples += rows.out.keys.len() as u64;
        report.embedded_shards += 1;
        manifest.record(ShardEntry {
            shard: names[i].clone(),
            file,
            samples: rows.out.keys.len() as u64,
            missing: rows.out.missing.len() as u64,
            problems,
            fingerprint: Some(fp.finish()),
            complete: true,
        });
        manifest.save(&job.out)?;
    }
    bar.finish_and_clear();
    write_empty_caption(&job.out, embedder, job.text_encodings)?;
    manifest.empty_caption = Some(EMPTY_CAPTION_FILE.into());
    manifest.aggregate_stats(&job.out)?;
    manifest.save(&job.out)?;
    Ok(report)
}

/// The empty caption's embedding (and encodings): the unconditional branch of guidance.
fn write_empty_caption(dir: &Path, embedder: &dyn Embedder, encodings: bool) -> anyhow::Result<()> {
    let text = embedder.embed_texts(&[String::new()], encodings)?;
    let empty = ShardEmbeddings {
        keys: vec![String::new()],
        missing: Vec::new(),
        dim: text.embeds.len(),
        // The image slot is unused for the empty caption; zeros keep the file format uniform.
        image_embed: vec![0.0; text.embeds.len()],
        text_embed: text.embeds,
        text_encodings: text.encodings,
    };
    write_shard(&dir.join(EMPTY_CAPTION_FILE), "", &empty)?;
    Ok(())
}
