//! The loader's threads: the reader walks shards and emits this rank's samples in stream order
//! (see `super::pass`), the workers read, decode and transform them, and tag each result with
//! its position for the consumer.

use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::channel::{Done, Emitter, Flow, Outcome, Plan, Shared, Work, WorkItem};
use crate::config::LoaderConfig;
use crate::sample::{read_sample, ReadOptions};
use crate::shard::{MemberReader, RawSample};
use crate::transform::{SampleContext, SampleTransform};

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
        if super::pass::read_pass(&plan, &mut em) == Flow::Go {
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
            WorkItem::Fatal(detail) => Outcome::Fatal(detail),
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
