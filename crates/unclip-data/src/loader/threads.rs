//! The loader's threads and what flows between them: the reader walks shards and emits this
//! rank's samples in stream order (with backpressure and resume skipping), the workers read,
//! decode and transform them, and tag each result with its position for the consumer.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{Receiver, Sender};
use unclip_rng::KeyedRng;

use crate::config::{LoaderConfig, Partition};
use crate::sample::{read_sample, ReadOptions};
use crate::shard::{read_shard, MemberReader, RawSample, ShardItem};
use crate::transform::{Example, SampleContext, SampleTransform};

/// What flows from the reader through the workers to the consumer, tagged with its position.
pub(super) struct Work {
    pub seq: u64,
    pub epoch: u64,
    pub pass: u32,
    pub item: WorkItem,
}

pub(super) enum WorkItem {
    Sample {
        g: u64,
        raw: RawSample,
    },
    Problem(&'static str),
    /// Counted as a warning; no sample is lost.
    Warning(&'static str),
    /// The reader finished a pass over this rank's partition and waits for a verdict.
    PassEnd,
}

pub(super) enum Outcome {
    Example(Example, Option<&'static str>),
    Skip(&'static str),
    Warn(&'static str),
    PassEnd,
}

pub(super) struct Done {
    pub seq: u64,
    pub epoch: u64,
    pub pass: u32,
    pub outcome: Outcome,
}

/// Consumer → reader: how far the consumer got.
#[derive(Default)]
pub(super) struct Control {
    /// Epochs below this are complete: stop producing them.
    pub next_epoch: u64,
    /// The pass the consumer wants next for `next_epoch`.
    pub wanted_pass: u32,
    pub shutdown: bool,
    /// Items sent by the reader and not yet consumed (bounded by `limit`).
    pub in_flight: usize,
    pub limit: usize,
}

pub(super) struct Shared {
    pub control: Mutex<Control>,
    pub cv: Condvar,
}

/// Everything the reader needs, fixed for the loader's life.
pub(super) struct Plan {
    pub shards: Arc<Vec<PathBuf>>,
    pub config: LoaderConfig,
    pub partition: Partition,
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

pub(super) fn run_reader(
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
                ShardItem::Warning(reason, detail) => {
                    tracing::warn!(reason, detail, "shard warning");
                    em.send(WorkItem::Warning(reason))
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

pub(super) fn run_worker(
    shards: &[PathBuf],
    cfg: &LoaderConfig,
    transform: &dyn SampleTransform,
    work: Receiver<Work>,
    done: Sender<Done>,
) {
    let mut reader = MemberReader::default();
    let opts = ReadOptions {
        caption: cfg.caption.clone(),
        require_caption: cfg.require_caption,
        max_pixels: cfg.max_pixels,
    };
    for w in work {
        let outcome = match w.item {
            WorkItem::PassEnd => Outcome::PassEnd,
            WorkItem::Problem(reason) => Outcome::Skip(reason),
            WorkItem::Warning(reason) => Outcome::Warn(reason),
            WorkItem::Sample { g, raw } => {
                let ctx = SampleContext {
                    seed: cfg.seed,
                    epoch: w.epoch,
                    index: g,
                };
                process(shards, &opts, transform, &mut reader, raw, ctx)
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

fn process(
    shards: &[PathBuf],
    opts: &ReadOptions,
    transform: &dyn SampleTransform,
    reader: &mut MemberReader,
    raw: RawSample,
    ctx: SampleContext,
) -> Outcome {
    let (sample, warning) = match read_sample(shards, opts, reader, raw) {
        Ok(read) => read,
        Err(reason) => return Outcome::Skip(reason),
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
