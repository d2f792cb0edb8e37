//! One pass of the reader over an epoch's stream: the epoch's shard order, the shuffle buffer,
//! the global numbering of samples — and, when resuming, a replay up to the cursor that does not
//! download remote shards again.
//!
//! Resuming means replaying the stream up to the cursor without sending anything, so that the
//! shuffle buffer and the numbering are exactly where they were. Local shards replay from their
//! tar headers (cheap: samples only point at their bytes). A remote shard read whole once has an
//! index — its stream as runs of samples and the problems between them, kept in the cursor — and
//! replays from it: its samples enter the buffer as placeholders. When the replay reaches the
//! cursor, only what is still needed is fetched: each shard with placeholders left in the buffer
//! is streamed once to fill them in, and the shard the cursor falls inside continues from there
//! (the same stream picks up its placeholders). Shards whose samples were all consumed are not
//! downloaded again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use unclip_rng::KeyedRng;

use super::channel::{Emitter, Flow, IndexRun, Plan, WorkItem};
use crate::remote::is_remote;
use crate::shard::{read_shard_with, RawSample, ShardItem};

/// The `&'static` reason of a recorded problem or warning.
fn reason(name: &str) -> &'static str {
    [
        "truncated_sample",
        "truncated_shard",
        "corrupt_tar",
        "unreadable_shard",
        "empty_shard",
        "missing_end_of_archive",
    ]
    .into_iter()
    .find(|r| *r == name)
    .unwrap_or("unreadable_shard")
}

/// A place in the shuffle buffer.
enum Slot {
    Real(RawSample),
    /// Sample `ordinal` of shard `shard`, replayed from its index: fetched before it is sent.
    Pending {
        shard: u32,
        ordinal: u64,
    },
    /// A placeholder whose shard could not be fetched again: sent as this problem.
    Lost(&'static str),
}

/// One item of a shard's stream.
enum Item {
    Sample(Slot),
    Problem(&'static str, String),
    Warning(&'static str, String),
}

struct Pass<'a> {
    plan: &'a Plan,
    buffer: VecDeque<Slot>,
    capacity: usize,
    rng: KeyedRng,
    /// Global position of the next sample released from the buffer.
    g: u64,
    /// Placeholders in the buffer.
    pending: usize,
}

impl Pass<'_> {
    fn item(&mut self, em: &mut Emitter, item: Item) -> Flow {
        match item {
            Item::Problem("unreadable_shard", detail) if self.plan.config.remote.strict => {
                em.send(WorkItem::Fatal(detail))
            }
            Item::Problem(reason, detail) => {
                if em.position >= em.skip {
                    tracing::warn!(reason, detail, "shard problem");
                }
                em.send(WorkItem::Problem(reason))
            }
            Item::Warning(reason, detail) => {
                if em.position >= em.skip {
                    tracing::warn!(reason, detail, "shard warning");
                }
                em.send(WorkItem::Warning(reason))
            }
            Item::Sample(slot) => {
                // Once the buffer holds `capacity` samples, every arrival releases one sample
                // picked at random among the buffer and the arrival.
                if matches!(slot, Slot::Pending { .. }) {
                    self.pending += 1;
                }
                self.buffer.push_back(slot);
                if self.buffer.len() <= self.capacity {
                    return Flow::Go;
                }
                let j = if self.capacity == 0 {
                    0
                } else {
                    self.rng.below(self.buffer.len() as u64) as usize
                };
                self.release(em, j)
            }
        }
    }

    /// Sends buffer slot `j` as the sample at the next global position.
    fn release(&mut self, em: &mut Emitter, j: usize) -> Flow {
        if self.pending > 0 && em.position >= em.skip {
            self.fetch_pending();
        }
        let slot = self.buffer.swap_remove_back(j).expect("index in range");
        let g = self.g;
        self.g += 1;
        match slot {
            Slot::Real(raw) => em.sample(g, raw),
            Slot::Pending { shard, .. } => {
                // Only ever released while replaying (dropped unsent) or for another rank.
                self.pending -= 1;
                let placeholder = RawSample {
                    key: String::new(),
                    shard,
                    members: Vec::new(),
                    invalid: None,
                };
                em.sample(g, placeholder)
            }
            Slot::Lost(reason) if em.is_mine(g) => em.send(WorkItem::Problem(reason)),
            Slot::Lost(_) => Flow::Go,
        }
    }

    /// Streams every shard with placeholders in the buffer once and puts its samples in place.
    fn fetch_pending(&mut self) {
        let mut wanted: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        for slot in &self.buffer {
            if let Slot::Pending { shard, ordinal } = slot {
                wanted.entry(*shard).or_default().insert(*ordinal);
            }
        }
        for (shard, ordinals) in wanted {
            let found = self.capture(shard, &ordinals);
            self.fill(shard, found);
        }
    }

    /// Reads shard `shard` as far as its last sample at `ordinals` and keeps those samples.
    fn capture(&self, shard: u32, ordinals: &BTreeSet<u64>) -> HashMap<u64, RawSample> {
        let last = ordinals.iter().next_back().copied();
        let mut found = HashMap::new();
        let mut ordinal = 0u64;
        let plan = self.plan;
        let path = &plan.shards[shard as usize];
        read_shard_with(path, shard, &plan.config.remote, &mut |item| {
            if let ShardItem::Sample(s) = item {
                if ordinals.contains(&ordinal) {
                    found.insert(ordinal, s);
                }
                ordinal += 1;
            }
            last.is_some_and(|l| ordinal <= l)
        });
        found
    }

    /// Replaces shard `shard`'s placeholders with `found` (what is missing becomes lost).
    fn fill(&mut self, shard: u32, mut found: HashMap<u64, RawSample>) {
        for slot in self.buffer.iter_mut() {
            if let Slot::Pending { shard: s, ordinal } = *slot {
                if s == shard {
                    self.pending -= 1;
                    *slot = match found.remove(&ordinal) {
                        Some(raw) => Slot::Real(raw),
                        None => Slot::Lost("unreadable_shard"),
                    };
                }
            }
        }
    }

    /// Reads shard `si` from its item `from` on (the items before are passed over, but its
    /// placeholders among them are filled in). A remote shard read whole gets its index.
    fn read(&mut self, em: &mut Emitter, si: usize, from: u64) -> Flow {
        let shard = si as u32;
        let plan = self.plan;
        let path = &plan.shards[si];
        let remote = is_remote(path);
        let mut mine: BTreeSet<u64> = BTreeSet::new();
        for slot in &self.buffer {
            if let Slot::Pending { shard: s, ordinal } = slot {
                if *s == shard {
                    mine.insert(*ordinal);
                }
            }
        }
        let mut captured: HashMap<u64, RawSample> = HashMap::new();
        let mut index: Vec<IndexRun> = Vec::new();
        let (mut n, mut ordinal) = (0u64, 0u64);
        let mut flow = Flow::Go;
        read_shard_with(path, shard, &plan.config.remote, &mut |item| {
            let it = match item {
                ShardItem::Sample(s) => {
                    if remote {
                        match index.last_mut() {
                            Some(IndexRun::Samples(k)) => *k += 1,
                            _ => index.push(IndexRun::Samples(1)),
                        }
                    }
                    ordinal += 1;
                    if n < from {
                        if mine.contains(&(ordinal - 1)) {
                            captured.insert(ordinal - 1, s);
                        }
                        None
                    } else {
                        Some(Item::Sample(Slot::Real(s)))
                    }
                }
                ShardItem::Problem(r, d) => {
                    index.push(IndexRun::Problem(r.into()));
                    (n >= from).then_some(Item::Problem(r, d))
                }
                ShardItem::Warning(r, d) => {
                    index.push(IndexRun::Warning(r.into()));
                    (n >= from).then_some(Item::Warning(r, d))
                }
            };
            n += 1;
            if n == from && !mine.is_empty() {
                self.fill(shard, std::mem::take(&mut captured));
            }
            if let Some(it) = it {
                flow = self.item(em, it);
            }
            flow == Flow::Go
        });
        if !mine.is_empty() && n < from {
            // The shard ended before the cursor's place in it (it changed, or failed).
            self.fill(shard, captured);
        }
        if remote && flow == Flow::Go {
            let mut idx = em.shared.indexes.lock().unwrap_or_else(|e| e.into_inner());
            idx.insert(shard, index);
        }
        flow
    }

    /// Replays shard `si` from its `index` while the stream is before the cursor; from the
    /// item where it reaches it, reads the shard itself.
    fn replay(&mut self, em: &mut Emitter, si: usize, index: &[IndexRun]) -> Flow {
        let shard = si as u32;
        let (mut n, mut ordinal) = (0u64, 0u64);
        for run in index {
            let count = match run {
                IndexRun::Samples(k) => *k,
                _ => 1,
            };
            for _ in 0..count {
                if em.position >= em.skip {
                    return self.read(em, si, n);
                }
                let it = match run {
                    IndexRun::Samples(_) => {
                        ordinal += 1;
                        Item::Sample(Slot::Pending {
                            shard,
                            ordinal: ordinal - 1,
                        })
                    }
                    IndexRun::Problem(r) => Item::Problem(reason(r), String::new()),
                    IndexRun::Warning(r) => Item::Warning(reason(r), String::new()),
                };
                n += 1;
                if self.item(em, it) == Flow::Stop {
                    return Flow::Stop;
                }
            }
        }
        Flow::Go
    }
}

/// One pass over the epoch's stream, sending this rank's items.
pub(super) fn read_pass(plan: &Plan, em: &mut Emitter) -> Flow {
    let cfg = &plan.config;
    let epoch = em.epoch;
    let n = plan.shards.len();
    let order: Vec<usize> = if cfg.shuffle {
        KeyedRng::new(cfg.seed, "shard_order", epoch, 0).permutation(n)
    } else {
        (0..n).collect()
    };
    let capacity = if cfg.shuffle { cfg.shuffle_buffer } else { 0 };
    let mut p = Pass {
        plan,
        buffer: VecDeque::with_capacity(capacity + 1),
        capacity,
        rng: KeyedRng::new(cfg.seed, "shuffle_buffer", epoch, 0),
        g: 0,
        pending: 0,
    };
    for &si in &order {
        let known = (em.position < em.skip)
            .then(|| {
                let idx = em.shared.indexes.lock().unwrap_or_else(|e| e.into_inner());
                idx.get(&(si as u32)).cloned()
            })
            .flatten();
        let flow = match known {
            Some(index) => p.replay(em, si, &index),
            None => p.read(em, si, 0),
        };
        if flow == Flow::Stop {
            return Flow::Stop;
        }
    }
    while !p.buffer.is_empty() {
        let j = p.rng.below(p.buffer.len() as u64) as usize;
        if p.release(em, j) == Flow::Stop {
            return Flow::Stop;
        }
    }
    Flow::Go
}
