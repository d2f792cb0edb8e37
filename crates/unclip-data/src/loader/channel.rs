//! What flows between the loader's reader, its workers and the consumer: work items tagged
//! with their position, the consumer's control of the reader, the reader's emitter (numbering,
//! partition, resume skipping, backpressure), and the indexes of remote shards kept for resume.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use crate::config::{LoaderConfig, Partition};
use crate::shard::RawSample;
use crate::transform::Example;

/// A stretch of one shard's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexRun {
    Samples(u64),
    Problem(String),
    Warning(String),
}

/// What each remote shard read whole holds, by its position in the shard list.
pub type Indexes = BTreeMap<u32, Vec<IndexRun>>;

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
    /// A shard that cannot be read, with `remote.strict`: the stream stops with this error.
    Fatal(String),
    /// The reader finished a pass over this rank's partition and waits for a verdict.
    PassEnd,
}

pub(super) enum Outcome {
    Example(Example, Option<&'static str>),
    Skip(&'static str),
    Warn(&'static str),
    Fatal(String),
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
    /// What each remote shard read whole holds (see `super::pass`), by shard position.
    pub indexes: Mutex<Indexes>,
}

/// Everything the reader needs, fixed for the loader's life.
pub(super) struct Plan {
    pub shards: Arc<Vec<PathBuf>>,
    pub config: LoaderConfig,
    pub partition: Partition,
}

/// The reader's emission side: numbering, partition, resume skipping, backpressure.
pub(super) struct Emitter {
    pub work: Sender<Work>,
    pub seq: u64,
    pub epoch: u64,
    pub pass: u32,
    /// Items of this rank's stream seen in the current pass.
    pub position: u64,
    /// Items to drop without sending (resume).
    pub skip: u64,
    pub partition: Partition,
    pub shared: Arc<Shared>,
}

#[derive(PartialEq)]
pub(super) enum Flow {
    Go,
    /// The consumer has moved past this epoch/pass, or is gone.
    Stop,
}

impl Emitter {
    /// Send one item of this rank's stream, after `skip` items (resume) have been dropped.
    pub fn send(&mut self, item: WorkItem) -> Flow {
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

    /// Whether the sample at global position `g` is this rank's.
    pub fn is_mine(&self, g: u64) -> bool {
        g % self.partition.world_size as u64 == self.partition.rank as u64
    }

    /// A sample at global position `g` of the epoch's stream.
    pub fn sample(&mut self, g: u64, raw: RawSample) -> Flow {
        if g % self.partition.world_size as u64 != self.partition.rank as u64 {
            return Flow::Go;
        }
        self.send(WorkItem::Sample { g, raw })
    }
}
