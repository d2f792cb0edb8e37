//! The loader: shuffled, partitioned, parallel, resumable batches from shards.
//!
//! Three stages, connected by bounded channels:
//! 1. a **reader** thread walks the epoch's shard order (a keyed permutation), groups members
//!    into samples, passes them through a webdataset-style shuffle buffer (keyed RNG), numbers
//!    the resulting stream with the global sample index `g`, and keeps the samples with
//!    `g % world_size == rank`;
//! 2. **workers** read member bytes, decode and transform (randomness keyed by
//!    `(seed, epoch, g)`), in any order;
//! 3. the **consumer** ([`Loader::next_batch`], on the caller's thread) puts results back in
//!    stream order and collates batches.
//!
//! Because every random choice is keyed and results are reordered, the batches are identical for
//! any number of workers. Rank `r` of `W` yields exactly the samples at `g ≡ r (mod W)`: the
//! union of all ranks' batch `k` is the same set of samples one rank with a `W`× larger batch
//! would see (when no sample is bad). Memory is bounded by a token count (`prefetch_batches ×
//! batch_size` items in flight).
//!
//! **Equal batch counts** (`drop_last: true`): every rank yields exactly
//! `samples_per_epoch / (world × batch)` batches per epoch. A rank whose partition runs short
//! because some samples were bad replays its own partition of the same epoch ("pass 1", …) to
//! fill the remainder, so data-parallel peers never wait on each other at an epoch's end.
//!
//! **Resume**: [`Loader::cursor`] is the consumer's position (epoch, pass, items consumed,
//! counters). A loader built with it replays the reader (shard headers only, no decoding) up to
//! that point and continues with exactly the sequence the uninterrupted loader would have given.

use crate::batch::Batch;
use crate::config::{LoaderConfig, Partition};
use crate::error::DataError;
use crate::spec;
use crate::transform::{Example, SampleTransform};
use crossbeam_channel::{bounded, Receiver};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

mod channel;
mod pass;
mod threads;

pub use channel::{IndexRun, Indexes};

use channel::{Control, Done, Outcome, Plan, Shared, Work};
use threads::{run_reader, run_worker};

/// Counted outcomes: skips by reason and warnings (samples kept despite a problem).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderSummary {
    /// Good samples delivered in batches.
    pub samples: u64,
    pub batches: u64,
    pub skipped: BTreeMap<String, u64>,
    pub warnings: BTreeMap<String, u64>,
}

impl LoaderSummary {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// The loader's position, saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub version: u32,
    /// Identifies the stream (shards, seed, shuffle, partition, batch size); a cursor only
    /// restores into a loader with the same fingerprint.
    pub fingerprint: String,
    pub epoch: u64,
    pub pass: u32,
    /// Items of this rank's stream consumed in the current pass.
    pub consumed: u64,
    /// Good samples delivered in the current epoch.
    pub good_in_epoch: u64,
    pub summary: LoaderSummary,
    /// What each remote shard read whole so far holds, so that resuming does not download
    /// again the shards whose samples were all consumed (see the reader's `pass` module).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remote_index: Indexes,
}

const CURSOR_VERSION: u32 = 1;

pub struct Loader {
    config: LoaderConfig,
    partition: Partition,
    fingerprint: String,
    samples_per_epoch: Option<u64>,
    quota: Option<u64>,
    shared: Arc<Shared>,
    results: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    reorder: HashMap<u64, Done>,
    next_seq: u64,
    epoch: u64,
    pass: u32,
    consumed: u64,
    good_in_epoch: u64,
    good_in_pass: u64,
    pending: Vec<Example>,
    summary: LoaderSummary,
    finished: bool,
}

fn fingerprint(shards: &[PathBuf], c: &LoaderConfig, p: Partition) -> String {
    let names: Vec<String> = shards
        .iter()
        .map(|s| crate::remote::shard_name(s))
        .collect();
    let key = serde_json::json!({
        "shards": names,
        "seed": c.seed,
        "shuffle": c.shuffle,
        "shuffle_buffer": c.shuffle_buffer,
        "batch_size": c.batch_size,
        "drop_last": c.drop_last,
        "caption": c.caption,
        "require_caption": c.require_caption,
        "rank": p.rank,
        "world_size": p.world_size,
    });
    format!("{:016x}", unclip_rng::purpose_id(&key.to_string()))
}

/// Number of samples (key groups, good or bad) in every shard, counted in parallel. It reads
/// every shard: for remote ones, that is a whole download.
pub fn count_samples(shards: &[PathBuf], threads: usize) -> u64 {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let total = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, 16) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(path) = shards.get(i) else { break };
                total.fetch_add(
                    crate::shard::count_samples(path),
                    std::sync::atomic::Ordering::Relaxed,
                );
            });
        }
    });
    total.into_inner()
}

/// [`count_samples`] for a progress bar's length: `None` when a shard is remote (counting it
/// would download it).
pub fn count_for_progress(shards: &[PathBuf], threads: usize) -> Option<u64> {
    if shards.iter().any(|s| crate::remote::is_remote(s)) {
        return None;
    }
    Some(count_samples(shards, threads))
}

impl Loader {
    /// A loader over `config.shards` for one rank, running `transform` on every sample,
    /// continuing from `cursor` when given.
    pub fn new(
        config: LoaderConfig,
        partition: Partition,
        transform: Arc<dyn SampleTransform>,
        cursor: Option<Cursor>,
    ) -> Result<Self, DataError> {
        config.validate().map_err(DataError::Config)?;
        if partition.world_size == 0 || partition.rank >= partition.world_size {
            return Err(DataError::Config(format!(
                "rank {} is outside a world of {}",
                partition.rank, partition.world_size
            )));
        }
        let shards = Arc::new(spec::resolve(&config.shards)?);
        let fingerprint = fingerprint(&shards, &config, partition);
        // Single-pass mode needs no count; training mode counts unless told.
        let samples_per_epoch = match (config.samples_per_epoch, config.drop_last) {
            (Some(n), _) => Some(n),
            (None, true) if shards.iter().any(|s| crate::remote::is_remote(s)) => {
                return Err(DataError::Config(
                    "the shards include remote ones (URLs or pipe: commands): set \
                     samples_per_epoch (data.samples_per_epoch), since counting them would \
                     download them all before training starts"
                        .into(),
                ))
            }
            (None, true) => Some(count_samples(&shards, config.workers)),
            (None, false) => None,
        };
        let global_batch = (partition.world_size * config.batch_size) as u64;
        let quota = if let (true, Some(samples_per_epoch)) = (config.drop_last, samples_per_epoch) {
            let batches = samples_per_epoch / global_batch;
            if batches == 0 {
                return Err(DataError::TooFewSamples {
                    samples: samples_per_epoch,
                    world_size: partition.world_size,
                    batch_size: config.batch_size,
                });
            }
            Some(batches * config.batch_size as u64)
        } else {
            None
        };
        let (epoch, pass, consumed, good_in_epoch, summary, indexes) = match cursor {
            None => (0, 0, 0, 0, LoaderSummary::default(), Indexes::new()),
            Some(c) => {
                if c.version != CURSOR_VERSION {
                    return Err(DataError::Cursor(format!(
                        "cursor format {} (this build reads {CURSOR_VERSION})",
                        c.version
                    )));
                }
                if c.fingerprint != fingerprint {
                    return Err(DataError::Cursor(
                        "the data settings differ from the run's (shards, seed, shuffle, \
                         shuffle_buffer, batch_size, drop_last, caption or the rank/world size)"
                            .into(),
                    ));
                }
                (
                    c.epoch,
                    c.pass,
                    c.consumed,
                    c.good_in_epoch,
                    c.summary,
                    c.remote_index,
                )
            }
        };
        let in_flight = config.prefetch_batches * config.batch_size + config.workers;
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                next_epoch: epoch,
                wanted_pass: pass,
                shutdown: false,
                in_flight: 0,
                limit: in_flight,
            }),
            cv: Condvar::new(),
            indexes: Mutex::new(indexes),
        });
        let (work_tx, work_rx) = bounded::<Work>(in_flight);
        let (done_tx, done_rx) = bounded::<Done>(in_flight);
        let mut threads = Vec::new();
        let plan = Plan {
            shards: shards.clone(),
            config: config.clone(),
            partition,
        };
        let reader_shared = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("unclip-data-reader".into())
                .spawn(move || run_reader(plan, reader_shared, work_tx, epoch, pass, consumed))
                .map_err(|e| DataError::Config(format!("cannot start reader thread: {e}")))?,
        );
        for w in 0..config.workers {
            let (rx, tx) = (work_rx.clone(), done_tx.clone());
            let (shards, transform, cfg) = (shards.clone(), transform.clone(), config.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("unclip-data-worker-{w}"))
                    .spawn(move || run_worker(&shards, &cfg, transform.as_ref(), rx, tx))
                    .map_err(|e| DataError::Config(format!("cannot start worker: {e}")))?,
            );
        }
        Ok(Self {
            config,
            partition,
            fingerprint,
            samples_per_epoch,
            quota,
            shared,
            results: done_rx,
            threads,
            reorder: HashMap::new(),
            next_seq: 0,
            epoch,
            pass,
            consumed,
            good_in_epoch,
            good_in_pass: 0,
            pending: Vec::new(),
            summary,
            finished: false,
        })
    }

    /// Samples (good or bad) per epoch across all ranks, when counted (training mode) or given.
    pub fn samples_per_epoch(&self) -> Option<u64> {
        self.samples_per_epoch
    }

    /// Batches each rank yields per epoch (`drop_last` mode), or `None` in single-pass mode.
    pub fn batches_per_epoch(&self) -> Option<u64> {
        self.quota.map(|q| q / self.config.batch_size as u64)
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    pub fn summary(&self) -> &LoaderSummary {
        &self.summary
    }

    /// The position after the last batch returned.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            version: CURSOR_VERSION,
            fingerprint: self.fingerprint.clone(),
            epoch: self.epoch,
            pass: self.pass,
            consumed: self.consumed,
            good_in_epoch: self.good_in_epoch,
            summary: self.summary.clone(),
            remote_index: self
                .shared
                .indexes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn tell_reader(&self) {
        let mut c = self.shared.control.lock().expect("control lock");
        c.next_epoch = self.epoch;
        c.wanted_pass = self.pass;
        drop(c);
        self.shared.cv.notify_all();
    }

    fn next_in_order(&mut self) -> Result<Done, DataError> {
        loop {
            if let Some(d) = self.reorder.remove(&self.next_seq) {
                self.next_seq += 1;
                let mut c = self.shared.control.lock().expect("control lock");
                c.in_flight -= 1;
                drop(c);
                self.shared.cv.notify_all();
                return Ok(d);
            }
            let d = self.results.recv().map_err(|_| DataError::Disconnected)?;
            self.reorder.insert(d.seq, d);
        }
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.pass = 0;
        self.consumed = 0;
        self.good_in_epoch = 0;
        self.good_in_pass = 0;
        if self.config.epochs.is_some_and(|n| epoch >= n) {
            self.finished = true;
        }
        self.tell_reader();
    }

    /// The next batch, or `None` once `epochs` epochs are done (never, for an endless loader).
    pub fn next_batch(&mut self) -> Result<Option<Batch>, DataError> {
        let batch_size = self.config.batch_size;
        while !self.finished {
            let d = self.next_in_order()?;
            if d.epoch != self.epoch || d.pass != self.pass {
                continue; // produced before the reader learned the epoch/pass was over
            }
            if matches!(d.outcome, Outcome::PassEnd) {
                let epoch_done = match self.quota {
                    None => true,
                    Some(q) => self.good_in_epoch >= q,
                };
                if epoch_done {
                    let epoch = self.epoch;
                    self.start_epoch(epoch + 1);
                    if !self.pending.is_empty() {
                        return self.emit(epoch).map(Some);
                    }
                    continue;
                }
                if self.good_in_pass == 0 {
                    return Err(DataError::NoUsableSamples {
                        rank: self.partition.rank,
                        epoch: self.epoch,
                        skips: self.summary.skipped.clone(),
                    });
                }
                self.pass += 1;
                self.consumed = 0;
                self.good_in_pass = 0;
                self.tell_reader();
                continue;
            }
            self.consumed += 1;
            match d.outcome {
                Outcome::Example(ex, warning) => {
                    if let Some(w) = warning {
                        *self.summary.warnings.entry(w.into()).or_default() += 1;
                    }
                    self.good_in_epoch += 1;
                    self.good_in_pass += 1;
                    self.pending.push(ex);
                }
                Outcome::Skip(reason) => {
                    *self.summary.skipped.entry(reason.into()).or_default() += 1;
                }
                Outcome::Warn(reason) => {
                    *self.summary.warnings.entry(reason.into()).or_default() += 1;
                }
                Outcome::Fatal(detail) => return Err(DataError::Shard(detail)),
                Outcome::PassEnd => unreachable!("handled above"),
            }
            let epoch = self.epoch;
            if self.quota.is_some_and(|q| self.good_in_epoch >= q) {
                self.start_epoch(epoch + 1);
            }
            if self.pending.len() == batch_size {
                return self.emit(epoch).map(Some);
            }
        }
        Ok(None)
    }

    fn emit(&mut self, epoch: u64) -> Result<Batch, DataError> {
        let examples = std::mem::take(&mut self.pending);
        self.summary.samples += examples.len() as u64;
        self.summary.batches += 1;
        Batch::collate(epoch, examples)
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        {
            let mut c = self
                .shared
                .control
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            c.shutdown = true;
        }
        self.shared.cv.notify_all();
        // Drain so workers blocked on a full result channel can exit.
        let (_tx, rx) = bounded(0);
        let results = std::mem::replace(&mut self.results, rx);
        drop(results);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
