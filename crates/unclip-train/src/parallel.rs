//! Synchronous data-parallel training on several devices of one machine: one replica per
//! device on its own thread, gradients averaged through burn-collective once per optimizer
//! step. See docs/distributed.md for what is guaranteed.
//!
//! burn-collective's operations block until every peer has joined them and cannot be
//! cancelled, so a rank that fails would leave the others waiting forever. Every rank
//! therefore passes a [`Group::barrier`] of ours right before each collective call: the
//! barrier is released either when every rank arrived (then all of them enter the collective,
//! which nothing can stop in between) or when one rank reported a failure (then every rank
//! stops with that rank's error). The same barrier carries the stop request (SIGINT/SIGTERM)
//! at the top of each step, so all ranks stop after the same step.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use unclip_data::Cursor;

use crate::TrainError;

/// Test hook: `RANK:STEP` makes rank RANK fail with an error when it starts optimizer step
/// STEP (0-based), to test that one failing rank stops the whole run.
pub const FAIL_ENV: &str = "UNCLIP_TRAIN_TEST_FAIL_RANK_AT_STEP";

/// The rank that `FAIL_ENV` makes fail, and the step (the variable is read once per process).
pub(crate) fn injected_failure() -> Option<(usize, u64)> {
    static AT: std::sync::OnceLock<Option<(usize, u64)>> = std::sync::OnceLock::new();
    *AT.get_or_init(|| parse_rank_at_step(&std::env::var(FAIL_ENV).ok()?))
}

fn parse_rank_at_step(v: &str) -> Option<(usize, u64)> {
    let (r, s) = v.split_once(':')?;
    Some((r.trim().parse().ok()?, s.trim().parse().ok()?))
}

#[derive(Default)]
struct GroupState {
    arrived: usize,
    generation: u64,
    stop_any: bool,
    /// The stop verdict of the last completed barrier.
    last_stop: bool,
    /// The first failure: (rank, message).
    failure: Option<(usize, String)>,
    /// Each rank's loader position after its last step (for rank 0's checkpoints).
    cursors: Vec<Option<Cursor>>,
}

/// What the ranks of one run share: a barrier that a failure releases, the first failure,
/// and every rank's data position.
pub struct Group {
    world: usize,
    state: Mutex<GroupState>,
    cv: Condvar,
}

impl Group {
    pub fn new(world: usize) -> Arc<Self> {
        Arc::new(Self {
            world,
            state: Mutex::new(GroupState {
                cursors: vec![None; world],
                ..GroupState::default()
            }),
            cv: Condvar::new(),
        })
    }

    pub fn world(&self) -> usize {
        self.world
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every rank arrived; returns whether any of them asked to `stop`. Returns
    /// [`TrainError::Aborted`] as soon as a rank failed.
    pub fn barrier(&self, stop: bool) -> Result<bool, TrainError> {
        let mut s = self.lock();
        if s.failure.is_some() {
            return Err(TrainError::Aborted);
        }
        s.stop_any |= stop;
        s.arrived += 1;
        if s.arrived == self.world {
            s.last_stop = s.stop_any;
            s.stop_any = false;
            s.arrived = 0;
            s.generation += 1;
            self.cv.notify_all();
            return Ok(s.last_stop);
        }
        let generation = s.generation;
        loop {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
            if s.generation != generation {
                return Ok(s.last_stop);
            }
            if s.failure.is_some() {
                return Err(TrainError::Aborted);
            }
        }
    }

    /// Records that `rank` failed (the first failure wins) and releases every waiting rank.
    pub fn fail(&self, rank: usize, why: String) {
        let mut s = self.lock();
        if s.failure.is_none() {
            s.failure = Some((rank, why));
        }
        self.cv.notify_all();
    }

    /// The first failure, if a rank failed.
    pub fn failure(&self) -> Option<(usize, String)> {
        self.lock().failure.clone()
    }

    pub(crate) fn set_cursor(&self, rank: usize, cursor: Option<Cursor>) {
        self.lock().cursors[rank] = cursor;
    }

    /// Every rank's last posted cursor (rank order); `None` when a rank has none (random data).
    pub(crate) fn cursors(&self) -> Option<Vec<Cursor>> {
        self.lock().cursors.iter().cloned().collect()
    }
}

/// One rank's place in a data-parallel run.
#[derive(Clone)]
pub struct RankCtx {
    pub rank: usize,
    pub group: Arc<Group>,
}

impl RankCtx {
    pub fn world(&self) -> usize {
        self.group.world
    }
    pub fn peer(&self) -> PeerId {
        PeerId::from(self.rank as u32)
    }
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
}

fn collective_err(what: &str, e: collective::CollectiveError) -> TrainError {
    TrainError::Task(format!("collective {what} failed: {e:?}"))
}

/// Joins the collective of the inner backend (after a barrier, so that a rank that failed
/// earlier does not leave the others waiting in `register`).
pub fn register<B: AutodiffBackend>(ctx: &RankCtx, device: &B::Device) -> Result<(), TrainError> {
    ctx.group.barrier(false)?;
    collective::register::<B::InnerBackend>(
        ctx.peer(),
        device.clone(),
        CollectiveConfig::default().with_num_devices(ctx.world()),
    )
    .map_err(|e| collective_err("register", e))
}

/// Makes every rank's float parameters equal to rank 0's: an all-reduce (sum) in which the
/// other ranks contribute zeros, which is exact (`x + 0 = x`). Reading each value also
/// materialises lazily initialised parameters.
pub fn broadcast_root<B: AutodiffBackend, M: Module<B>>(
    ctx: &RankCtx,
    model: M,
) -> Result<M, TrainError> {
    struct Collect<'a> {
        grads: &'a mut GradientsParams,
        root: bool,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let v = param.val().inner();
            let v = if self.root { v } else { v.zeros_like() };
            self.grads.register(param.id, v);
        }
    }
    struct Replace<'a>(&'a mut GradientsParams);
    impl<B: AutodiffBackend> ModuleMapper<B> for Replace<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let value = match self.0.remove::<B::InnerBackend, D>(id) {
                Some(v) => {
                    let require_grad = tensor.is_require_grad();
                    Tensor::from_inner(v).set_require_grad(require_grad)
                }
                None => tensor,
            };
            Param::from_mapped_value(id, value, mapper)
        }
    }
    let mut grads = GradientsParams::new();
    model.visit(&mut Collect {
        grads: &mut grads,
        root: ctx.is_root(),
    });
    ctx.group.barrier(false)?;
    let mut grads = grads
        .all_reduce::<B::InnerBackend>(ctx.peer(), ReduceOperation::Sum)
        .map_err(|e| collective_err("broadcast of the initial weights", e))?;
    Ok(model.map(&mut Replace(&mut grads)))
}

/// Id of the slot that carries the loss and the presence flags through the gradient
/// all-reduce (beyond any renumbered parameter id).
const META_ID: u64 = u64::MAX;

/// Averages gradients and the loss over every rank, in one collective call per parameter
/// (burn's `GradientsParams::all_reduce`, sorted by id on every rank). A parameter that got
/// no gradient on a rank contributes zeros there (the ranks must reduce the same set);
/// one that got none on any rank stays without a gradient, as on one device. Returns the
/// mean loss over the ranks (NaN or ∞ when any rank's is: the non-finite guard then skips
/// the step on every rank together).
pub fn all_reduce_mean<B: AutodiffBackend, M: Module<B>>(
    ctx: &RankCtx,
    model: &M,
    device: &B::Device,
    grads: GradientsParams,
    loss: f64,
) -> Result<(GradientsParams, f64), TrainError> {
    struct Fill<'a> {
        grads: &'a mut GradientsParams,
        present: Vec<f32>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Fill<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let has = self.grads.get::<B::InnerBackend, D>(param.id).is_some();
            self.present.push(if has { 1.0 } else { 0.0 });
            if !has {
                let zeros = param.val().inner().zeros_like();
                self.grads.register(param.id, zeros);
            }
        }
    }
    struct Prune<'a> {
        grads: &'a mut GradientsParams,
        present: std::slice::Iter<'a, f32>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Prune<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.present.next().is_some_and(|&p| p == 0.0) {
                self.grads.remove::<B::InnerBackend, D>(param.id);
            }
        }
    }
    let mut grads = grads;
    let mut fill = Fill {
        grads: &mut grads,
        present: vec![loss as f32],
    };
    model.visit(&mut fill);
    let meta = std::mem::take(&mut fill.present);
    let n = meta.len();
    let meta_t = Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(meta, [n]), device);
    grads.register(ParamId::from(META_ID), meta_t);
    ctx.group.barrier(false)?;
    let mut grads = grads
        .all_reduce::<B::InnerBackend>(ctx.peer(), ReduceOperation::Mean)
        .map_err(|e| collective_err("all-reduce of the gradients", e))?;
    let meta: Vec<f32> = grads
        .remove::<B::InnerBackend, 1>(ParamId::from(META_ID))
        .ok_or_else(|| TrainError::Task("the all-reduce lost the loss slot".into()))?
        .into_data()
        .to_vec()
        .map_err(|e| TrainError::Task(format!("reading the reduced loss: {e:?}")))?;
    model.visit(&mut Prune {
        grads: &mut grads,
        present: meta[1..].iter(),
    });
    Ok((grads, meta[0] as f64))
}

/// Leaves the collective (never blocks).
pub fn finish<B: AutodiffBackend>(ctx: &RankCtx) {
    let _ = collective::finish_collective::<B::InnerBackend>(ctx.peer());
}

/// Forgets every peer and pending operation of the inner backend's collective (before and
/// after a run, so that a failed run leaves nothing behind for the next one in this process).
pub fn reset<B: AutodiffBackend>() {
    collective::reset_collective::<B::InnerBackend>();
}

/// Only one data-parallel run at a time per process: burn-collective's state is global.
static RUN_LOCK: Mutex<()> = Mutex::new(());

/// Runs `rank_main(rank, device)` for every device on its own thread and returns rank 0's
/// result. A rank that fails (error or panic) releases the others (see [`Group`]) and the
/// run's error names it: `rank R of N failed: …`.
pub fn run_ranks<B, R, F>(devices: Vec<B::Device>, rank_main: F) -> Result<R, TrainError>
where
    B: AutodiffBackend,
    R: Send,
    F: Fn(RankCtx, B::Device) -> Result<R, TrainError> + Sync,
{
    let _guard = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let world = devices.len();
    let group = Group::new(world);
    reset::<B>();
    let results: Vec<Result<R, TrainError>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .into_iter()
            .enumerate()
            .map(|(rank, device)| {
                let ctx = RankCtx {
                    rank,
                    group: Arc::clone(&group),
                };
                let rank_main = &rank_main;
                std::thread::Builder::new()
                    .name(format!("rank-{rank}"))
                    .spawn_scoped(s, move || {
                        let group = Arc::clone(&ctx.group);
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            rank_main(ctx.clone(), device)
                        }))
                        .unwrap_or_else(|p| {
                            let msg = p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "unknown panic".into());
                            Err(TrainError::Task(format!("panicked: {msg}")))
                        });
                        match &r {
                            Err(TrainError::Aborted) => {}
                            Err(e) => group.fail(rank, e.to_string()),
                            Ok(_) => {}
                        }
                        finish::<B>(&ctx);
                        r
                    })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(TrainError::Task(format!("rank {rank}'s thread panicked")))
                }),
                Err(e) => {
                    group.fail(rank, format!("cannot start its thread: {e}"));
                    Err(TrainError::Aborted)
                }
            })
            .collect()
    });
    reset::<B>();
    if let Some((rank, why)) = group.failure() {
        return Err(TrainError::RankFailed { rank, world, why });
    }
    results
        .into_iter()
        .next()
        .unwrap_or(Err(TrainError::Aborted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_failure_releases_ranks_waiting_at_the_barrier() {
        let g = Group::new(3);
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..2)
                .map(|_| s.spawn(|| g.barrier(false).map_err(|e| e.to_string())))
                .collect();
            std::thread::sleep(Duration::from_millis(50));
            g.fail(2, "boom".into());
            for w in waiters {
                assert_eq!(
                    w.join().expect("join"),
                    Err(TrainError::Aborted.to_string())
                );
            }
        });
        assert_eq!(g.failure(), Some((2, "boom".into())));
        assert!(g.barrier(false).is_err(), "a failed group stays failed");
    }

    #[test]
    fn the_barrier_agrees_on_stop_and_can_be_reused() {
        let g = Group::new(2);
        std::thread::scope(|s| {
            let a = s.spawn(|| (g.barrier(true).ok(), g.barrier(false).ok()));
            let b = s.spawn(|| (g.barrier(false).ok(), g.barrier(false).ok()));
            for h in [a, b] {
                assert_eq!(h.join().expect("join"), (Some(true), Some(false)));
            }
        });
    }

    mod tiny {
        use burn::module::{Module, Param};
        use burn::tensor::backend::Backend;
        use burn::tensor::Tensor;

        #[derive(Module, Debug)]
        pub struct Tiny<B: Backend> {
            pub a: Param<Tensor<B, 1>>,
            pub b: Param<Tensor<B, 1>>,
        }
    }

    type Ad = burn::backend::Autodiff<burn::backend::Flex>;

    /// Rank 0 has a gradient for `a` only and a finite loss; rank 1 has no gradient at all
    /// and a NaN loss. Every rank then sees the NaN (so all skip the step), `a`'s gradient
    /// is the mean with rank 1's implicit zero, and `b` (no gradient anywhere) stays absent.
    #[test]
    fn all_reduce_agrees_on_nan_and_pads_missing_gradients() {
        let dev = Default::default();
        let out = run_ranks::<Ad, _, _>(vec![dev; 2], |ctx, dev| {
            register::<Ad>(&ctx, &dev)?;
            let param = |v: f32| {
                Param::from_tensor(Tensor::<Ad, 1>::from_data(
                    TensorData::new(vec![v, v], [2]),
                    &dev,
                ))
            };
            let model = crate::ema::renumber_params(tiny::Tiny {
                a: param(1.0),
                b: param(2.0),
            });
            let model = broadcast_root::<Ad, _>(&ctx, model)?;
            let mut grads = GradientsParams::new();
            let loss = if ctx.is_root() {
                let g = Tensor::<burn::backend::Flex, 1>::from_data(
                    TensorData::new(vec![4.0f32, -2.0], [2]),
                    &dev,
                );
                grads.register(model.a.id, g);
                1.0
            } else {
                f64::NAN
            };
            let (mut grads, loss) = all_reduce_mean::<Ad, _>(&ctx, &model, &dev, grads, loss)?;
            let a: Option<Vec<f32>> = grads
                .remove::<burn::backend::Flex, 1>(model.a.id)
                .map(|t| t.into_data().to_vec().unwrap_or_default());
            let b = grads.remove::<burn::backend::Flex, 1>(model.b.id).is_some();
            Ok((loss, a, b))
        })
        .expect("run");
        assert!(out.0.is_nan(), "the NaN of rank 1 reaches rank 0");
        assert_eq!(out.1, Some(vec![2.0, -1.0]), "mean with rank 1's zeros");
        assert!(!out.2, "no gradient anywhere stays no gradient");
    }

    #[test]
    fn a_panicking_rank_stops_the_others_and_is_named() {
        let dev = Default::default();
        let e = run_ranks::<Ad, (), _>(vec![dev; 3], |ctx, _| {
            if ctx.rank == 2 {
                panic!("boom");
            }
            loop {
                ctx.group.barrier(false)?;
            }
        })
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("data-parallel training stopped: rank 2 of 3 failed: task: panicked: boom")
        );
    }

    #[test]
    fn injected_failure_parses() {
        assert_eq!(parse_rank_at_step("1:3"), Some((1, 3)));
        assert_eq!(parse_rank_at_step("1"), None);
        assert_eq!(parse_rank_at_step("a:3"), None);
    }
}
