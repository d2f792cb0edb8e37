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

use crate::config::{CaptionSource, LoaderConfig, Partition};
use crate::decode::{caption_from_json, caption_from_txt, IMAGE_EXTENSIONS};
use crate::shard::{read_shard, MemberReader, RawSample, ShardItem};
use crate::spec::{self, SpecError};
use crate::transform::{DecodedSample, Example, SampleContext, SampleTransform};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use unclip_rng::KeyedRng;

/// Errors that stop a loader (bad samples never do: they are skipped and counted).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("invalid data config: {0}")]
    Config(String),
    #[error("the shards hold {samples} samples, fewer than one global batch ({world_size} ranks × {batch_size}); lower batch_size or add data")]
    TooFewSamples {
        samples: u64,
        world_size: usize,
        batch_size: usize,
    },
    #[error("rank {rank} found no usable sample in epoch {epoch} (skips so far: {skips:?}); check the shards with `unclip data inspect`")]
    NoUsableSamples {
        rank: usize,
        epoch: u64,
        skips: BTreeMap<String, u64>,
    },
    #[error("cannot resume: {0}")]
    Cursor(String),
    #[error("a loader thread stopped unexpectedly")]
    Disconnected,
    #[error("batch field `{name}`: {what}")]
    Field { name: String, what: String },
}

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
}

const CURSOR_VERSION: u32 = 1;

/// A collated batch: per-sample metadata plus stacked f32 fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    pub keys: Vec<String>,
    pub captions: Vec<Option<String>>,
    /// Global sample index (position in the epoch's all-rank stream) of each row.
    pub indices: Vec<u64>,
    pub fields: Vec<BatchField>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchField {
    pub name: String,
    /// Including the leading batch dimension.
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    /// A batch of the given rows of this one, in that order.
    pub fn select_rows(&self, rows: &[usize]) -> Batch {
        Batch {
            epoch: self.epoch,
            keys: rows.iter().map(|&r| self.keys[r].clone()).collect(),
            captions: rows.iter().map(|&r| self.captions[r].clone()).collect(),
            indices: rows.iter().map(|&r| self.indices[r]).collect(),
            fields: self
                .fields
                .iter()
                .map(|f| {
                    let per: usize = f.shape[1..].iter().product();
                    let mut shape = f.shape.clone();
                    shape[0] = rows.len();
                    BatchField {
                        name: f.name.clone(),
                        shape,
                        data: rows
                            .iter()
                            .flat_map(|&r| f.data[r * per..(r + 1) * per].iter().copied())
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    pub fn field(&self, name: &str) -> Option<&BatchField> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// A field as a burn tensor on `device`.
    pub fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<burn::tensor::Tensor<B, D>, DataError> {
        let f = self.field(name).ok_or_else(|| DataError::Field {
            name: name.into(),
            what: "not in the batch".into(),
        })?;
        if f.shape.len() != D {
            return Err(DataError::Field {
                name: name.into(),
                what: format!("has {} dimensions, {D} requested", f.shape.len()),
            });
        }
        let data = burn::tensor::TensorData::new(f.data.clone(), f.shape.clone());
        Ok(burn::tensor::Tensor::from_data(data, device))
    }

    fn collate(epoch: u64, examples: Vec<Example>) -> Result<Batch, DataError> {
        let n = examples.len();
        let mut fields: Vec<BatchField> = examples[0]
            .fields
            .iter()
            .map(|f| BatchField {
                name: f.name.clone(),
                shape: std::iter::once(n).chain(f.shape.iter().copied()).collect(),
                data: Vec::with_capacity(n * f.data.len()),
            })
            .collect();
        let mut batch = Batch {
            epoch,
            keys: Vec::with_capacity(n),
            captions: Vec::with_capacity(n),
            indices: Vec::with_capacity(n),
            fields: Vec::new(),
        };
        for ex in examples {
            if ex.fields.len() != fields.len() {
                return Err(DataError::Field {
                    name: ex.key,
                    what: "examples of one batch have different field sets".into(),
                });
            }
            for (dst, src) in fields.iter_mut().zip(ex.fields) {
                if dst.name != src.name || dst.shape[1..] != src.shape[..] {
                    return Err(DataError::Field {
                        name: src.name,
                        what: format!(
                            "shape {:?} of sample `{}` differs from {:?}",
                            src.shape,
                            ex.key,
                            &dst.shape[1..]
                        ),
                    });
                }
                dst.data.extend_from_slice(&src.data);
            }
            batch.keys.push(ex.key);
            batch.captions.push(ex.caption);
            batch.indices.push(ex.index);
        }
        batch.fields = fields;
        Ok(batch)
    }
}

/// What flows from the reader through the workers to the consumer, tagged with its position.
struct Work {
    seq: u64,
    epoch: u64,
    pass: u32,
    item: WorkItem,
}

enum WorkItem {
    Sample {
        g: u64,
        raw: RawSample,
    },
    Problem(&'static str),
    /// The reader finished a pass over this rank's partition and waits for a verdict.
    PassEnd,
}

enum Outcome {
    Example(Example, Option<&'static str>),
    Skip(&'static str),
    PassEnd,
}

struct Done {
    seq: u64,
    epoch: u64,
    pass: u32,
    outcome: Outcome,
}

/// Consumer → reader: how far the consumer got.
#[derive(Default)]
struct Control {
    /// Epochs below this are complete: stop producing them.
    next_epoch: u64,
    /// The pass the consumer wants next for `next_epoch`.
    wanted_pass: u32,
    shutdown: bool,
    /// Items sent by the reader and not yet consumed (bounded by `limit`).
    in_flight: usize,
    limit: usize,
}

struct Shared {
    control: Mutex<Control>,
    cv: Condvar,
}

/// Everything the reader needs, fixed for the loader's life.
struct Plan {
    shards: Arc<Vec<PathBuf>>,
    config: LoaderConfig,
    partition: Partition,
}

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
        .map(|s| {
            s.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
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

/// Number of samples (key groups, good or bad) in every shard, counted in parallel.
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
        let (epoch, pass, consumed, good_in_epoch, summary) = match cursor {
            None => (0, 0, 0, 0, LoaderSummary::default()),
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
                (c.epoch, c.pass, c.consumed, c.good_in_epoch, c.summary)
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

/// The reader's emission side: numbering, partition, resume skipping, backpressure.
struct Emitter {
    work: Sender<Work>,
    seq: u64,
    epoch: u64,
    pass: u32,
    /// Items of this rank's stream seen in the current pass.
    position: u64,
    /// Items to drop without sending (resume).
    skip: u64,
    partition: Partition,
    shared: Arc<Shared>,
}

#[derive(PartialEq)]
enum Flow {
    Go,
    /// The consumer has moved past this epoch/pass, or is gone.
    Stop,
}

impl Emitter {
    /// Send one item of this rank's stream, after `skip` items (resume) have been dropped.
    fn send(&mut self, item: WorkItem) -> Flow {
        if !matches!(item, WorkItem::PassEnd) {
            self.position += 1;
            if self.position <= self.skip {
                return Flow::Go;
            }
        }
        // Wait for room, unless the consumer moved past this epoch/pass or went away.
        let mut c = self.shared.control.lock().expect("control lock");
        loop {
            if c.shutdown || c.next_epoch != self.epoch || c.wanted_pass != self.pass {
                return Flow::Stop;
            }
            if c.in_flight < c.limit {
                break;
            }
            c = self.shared.cv.wait(c).expect("control lock");
        }
        c.in_flight += 1;
        drop(c);
        let work = Work {
            seq: self.seq,
            epoch: self.epoch,
            pass: self.pass,
            item,
        };
        self.seq += 1;
        if self.work.send(work).is_err() {
            return Flow::Stop;
        }
        Flow::Go
    }

    /// A sample at global position `g` of the epoch's stream.
    fn sample(&mut self, g: u64, raw: RawSample) -> Flow {
        if g % self.partition.world_size as u64 != self.partition.rank as u64 {
            return Flow::Go;
        }
        self.send(WorkItem::Sample { g, raw })
    }
}

fn run_reader(
    plan: Plan,
    shared: Arc<Shared>,
    work: Sender<Work>,
    start_epoch: u64,
    start_pass: u32,
    start_consumed: u64,
) {
    let mut em = Emitter {
        work,
        seq: 0,
        epoch: start_epoch,
        pass: start_pass,
        position: 0,
        skip: start_consumed,
        partition: plan.partition,
        shared: shared.clone(),
    };
    loop {
        if plan.config.epochs.is_some_and(|n| em.epoch >= n) {
            return;
        }
        if read_pass(&plan, &mut em) == Flow::Go {
            em.send(WorkItem::PassEnd);
        }
        // Wait for the consumer's verdict on this pass: the next pass or the next epoch.
        let mut c = shared.control.lock().expect("control lock");
        while !c.shutdown && c.next_epoch == em.epoch && c.wanted_pass == em.pass {
            c = shared.cv.wait(c).expect("control lock");
        }
        if c.shutdown {
            return;
        }
        em.epoch = c.next_epoch;
        em.pass = c.wanted_pass;
        drop(c);
        em.position = 0;
        em.skip = 0;
    }
}

/// One pass over the epoch's stream, sending this rank's items.
fn read_pass(plan: &Plan, em: &mut Emitter) -> Flow {
    let cfg = &plan.config;
    let epoch = em.epoch;
    let n = plan.shards.len();
    let order: Vec<usize> = if cfg.shuffle {
        KeyedRng::new(cfg.seed, "shard_order", epoch, 0).permutation(n)
    } else {
        (0..n).collect()
    };
    let mut shuffle_rng = KeyedRng::new(cfg.seed, "shuffle_buffer", epoch, 0);
    let capacity = if cfg.shuffle { cfg.shuffle_buffer } else { 0 };
    let mut buffer: VecDeque<RawSample> = VecDeque::with_capacity(capacity + 1);
    let mut g: u64 = 0;
    let mut flow = Flow::Go;
    for &si in &order {
        read_shard(&plan.shards[si], si as u32, &mut |item| {
            flow = match item {
                ShardItem::Problem(reason, detail) => {
                    tracing::warn!(reason, detail, "shard problem");
                    em.send(WorkItem::Problem(reason))
                }
                ShardItem::Sample(raw) => {
                    // Once the buffer holds `capacity` samples, every arrival releases one
                    // sample picked at random among the buffer and the arrival.
                    buffer.push_back(raw);
                    if buffer.len() <= capacity {
                        return true;
                    }
                    let j = if capacity == 0 {
                        0
                    } else {
                        shuffle_rng.below(buffer.len() as u64) as usize
                    };
                    let out = buffer.swap_remove_back(j).expect("index in range");
                    let f = em.sample(g, out);
                    g += 1;
                    f
                }
            };
            flow == Flow::Go
        });
        if flow == Flow::Stop {
            return Flow::Stop;
        }
    }
    while !buffer.is_empty() {
        let j = shuffle_rng.below(buffer.len() as u64) as usize;
        let out = buffer.swap_remove_back(j).expect("index in range");
        if em.sample(g, out) == Flow::Stop {
            return Flow::Stop;
        }
        g += 1;
    }
    Flow::Go
}

fn run_worker(
    shards: &[PathBuf],
    cfg: &LoaderConfig,
    transform: &dyn SampleTransform,
    work: Receiver<Work>,
    done: Sender<Done>,
) {
    let mut reader = MemberReader::default();
    for w in work {
        let outcome = match w.item {
            WorkItem::PassEnd => Outcome::PassEnd,
            WorkItem::Problem(reason) => Outcome::Skip(reason),
            WorkItem::Sample { g, raw } => {
                let ctx = SampleContext {
                    seed: cfg.seed,
                    epoch: w.epoch,
                    index: g,
                };
                process(shards, cfg, transform, &mut reader, raw, ctx)
            }
        };
        let d = Done {
            seq: w.seq,
            epoch: w.epoch,
            pass: w.pass,
            outcome,
        };
        if done.send(d).is_err() {
            return;
        }
    }
}

/// Image formats we recognise but do not decode: counted apart from samples with no image.
const OTHER_IMAGE_EXTENSIONS: [&str; 8] =
    ["gif", "bmp", "tif", "tiff", "avif", "heic", "jxl", "jp2"];

fn process(
    shards: &[PathBuf],
    cfg: &LoaderConfig,
    transform: &dyn SampleTransform,
    reader: &mut MemberReader,
    raw: RawSample,
    ctx: SampleContext,
) -> Outcome {
    if let Some(reason) = raw.invalid {
        return Outcome::Skip(reason);
    }
    let Some(image) = raw
        .members
        .iter()
        .find(|m| IMAGE_EXTENSIONS.contains(&m.ext.as_str()))
    else {
        let other_image = raw
            .members
            .iter()
            .any(|m| OTHER_IMAGE_EXTENSIONS.contains(&m.ext.as_str()));
        return Outcome::Skip(if other_image {
            "unsupported_image_format"
        } else {
            "missing_image"
        });
    };
    let mut warning = None;
    let caption = match &cfg.caption {
        CaptionSource::Txt => match raw.member("txt") {
            Some(m) => match reader.read(shards, &raw, m) {
                Ok(bytes) => {
                    let (text, lossy) = caption_from_txt(&bytes);
                    if lossy {
                        warning = Some("lossy_caption_utf8");
                    }
                    Some(text)
                }
                Err(_) => return Outcome::Skip("unreadable_member"),
            },
            None => None,
        },
        CaptionSource::Json(_) => None,
    };
    let json_bytes = match raw.member("json") {
        Some(m) => match reader.read(shards, &raw, m) {
            Ok(bytes) => Some(bytes),
            Err(_) => return Outcome::Skip("unreadable_member"),
        },
        None => None,
    };
    let caption = match &cfg.caption {
        CaptionSource::Txt => caption,
        CaptionSource::Json(field) => json_bytes
            .as_deref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|j| caption_from_json(&j, field)),
    };
    if cfg.require_caption && caption.as_deref().is_none_or(str::is_empty) {
        return Outcome::Skip("missing_caption");
    }
    let image_bytes = match reader.read(shards, &raw, image) {
        Ok(b) => b,
        Err(_) => return Outcome::Skip("unreadable_member"),
    };
    let sample = DecodedSample {
        shard: shards[raw.shard as usize].as_path().into(),
        key: raw.key,
        caption,
        json_bytes,
        image_bytes,
        image_ext: image.ext.clone(),
        max_pixels: cfg.max_pixels,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        transform.apply(sample, ctx)
    }));
    match result {
        Ok(Ok(ex)) => Outcome::Example(ex, warning),
        Ok(Err(e)) => {
            tracing::debug!(reason = e.reason(), error = %e, "sample skipped");
            Outcome::Skip(e.reason())
        }
        Err(_) => Outcome::Skip("transform_panic"),
    }
}
