//! The one training loop. It owns the optimizer (AdamW with PyTorch's defaults), the LR
//! schedule, global-norm clipping, gradient accumulation, the EMA, the non-finite guard,
//! checkpoints, validation, previews and metrics; the [`TrainTask`] supplies the model and
//! its loss. Every random number is keyed by (seed, purpose, micro-step, sample index), so a
//! resumed run continues bit for bit.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use serde::Serialize;
use unclip_data::{Batch, Loader, LoaderConfig, Partition};
use unclip_models::NoiseKey;

use crate::checkpoint::{self, CheckpointWriter, Counters, SaveItems, TrainerState};
use crate::compat::{config_hash, incompatible_changes};
use crate::config::{DataSource, RunConfig};
use crate::ema::{all_finite, renumber_params, Ema};
use crate::metrics::{Metrics, MetricsLine};
use crate::optim::{self, lr_at};
use crate::parallel::{self, RankCtx};
use crate::run_dir::{self, Resume};
use crate::{Split, TrainError, TrainTask, ValidationSums};

/// The step key of validation forward passes: fixed, so every validation of a run draws the
/// same timestep and noise for a given held-out sample.
const VALIDATION_STEP: u64 = u64::MAX;
/// Test hook: a run stops moving (without exiting) when it reaches this step, so that a test
/// can kill or signal it at a known point between two checkpoints.
pub const HANG_ENV: &str = "UNCLIP_TRAIN_TEST_HANG_AT_STEP";

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Optimizer steps done after this one.
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub samples: usize,
    /// The loss or a gradient was not finite: no update was applied.
    pub skipped: bool,
}

/// One validation pass: means over its held-out samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    pub loss: f64,
    pub metrics: BTreeMap<String, f64>,
    pub samples: usize,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub step: u64,
    pub interrupted: bool,
    pub last_checkpoint: Option<PathBuf>,
    pub nonfinite_skipped: u64,
    pub best_val_loss: Option<f64>,
}

type Adam<B, M> = OptimizerAdaptor<AdamW, M, B>;

/// A run in progress: model, EMA, optimizer, data and bookkeeping.
pub struct Trainer<B: AutodiffBackend, T: TrainTask<B>, C> {
    task: T,
    cfg: RunConfig<C>,
    resolved: String,
    device: B::Device,
    model: T::Model,
    ema: Option<Ema<T::Model>>,
    optim: Adam<B, T::Model>,
    decay: HashSet<ParamId>,
    loader: Option<Loader>,
    state: TrainerState,
    run_dir: Option<PathBuf>,
    writer: Option<CheckpointWriter>,
    metrics: Option<Metrics>,
    /// The step of the newest checkpoint on disk (saved or resumed from).
    saved_step: Option<u64>,
    /// This replica's rank in a data-parallel run (`None`: one device).
    dp: Option<RankCtx>,
    /// The run folder's lock (rank 0 of a run with a run folder).
    lock: Option<unclip_fs::FolderLock>,
}

impl<B, T, C> Trainer<B, T, C>
where
    B: AutodiffBackend,
    T: TrainTask<B>,
    C: crate::config::ModelSection,
{
    /// Sets up a run: the model (seeded, then restored when resuming), EMA, optimizer and
    /// loader. Without `run_dir` nothing is written (benchmarks).
    pub fn new(
        task: T,
        cfg: RunConfig<C>,
        resolved: String,
        device: B::Device,
        run_dir: Option<PathBuf>,
        resume: Resume,
    ) -> Result<Self, TrainError> {
        Self::new_rank(task, cfg, resolved, device, run_dir, resume, None)
    }

    /// [`new`](Self::new) for one replica of a data-parallel run (`dp`): its loader reads its
    /// partition with `data.batch_size / world` samples per micro-batch, its weights become
    /// rank 0's, and only rank 0 keeps an EMA and writes into `run_dir`.
    pub fn new_rank(
        task: T,
        cfg: RunConfig<C>,
        resolved: String,
        device: B::Device,
        run_dir: Option<PathBuf>,
        resume: Resume,
        dp: Option<RankCtx>,
    ) -> Result<Self, TrainError> {
        let root = dp.as_ref().is_none_or(RankCtx::is_root);
        let world = dp.as_ref().map_or(1, RankCtx::world);
        if !cfg.data.batch_size.0.is_multiple_of(world as u64) {
            return Err(TrainError::invalid(
                "data.batch_size",
                format!(
                    "{} is the global micro-batch and must split evenly over the {world} devices",
                    cfg.data.batch_size.0
                ),
            ));
        }
        // Every random weight is redrawn from our keyed RNG: the same seed gives the same model
        // on every backend, whatever burn's global stream holds.
        let model = task.init_model(&device);
        let model = if task.init_is_seeded() {
            model
        } else {
            unclip_models::keyed_init(model, cfg.seed).map_err(|params| {
                TrainError::Task(format!(
                    "parameters {params:?} are random but of no kind keyed_init knows (Linear, \
                     Conv, Embedding); give them a constant or a known initialiser"
                ))
            })?
        };
        let model = renumber_params(model);
        let decay = optim::decay_set::<B, _>(&model);
        let mut me = Self {
            ema: (cfg.ema.enabled && root).then(|| Ema::new(model.clone(), cfg.ema.clone())),
            optim: optim::adamw::<B, T::Model>(&cfg.optim),
            state: TrainerState {
                format_version: checkpoint::FORMAT_VERSION,
                stage: cfg.stage,
                step: 0,
                seed: cfg.seed,
                config_hash: config_hash(&resolved),
                cursor: None,
                counters: Counters::default(),
                best_val_loss: None,
                best_step: None,
                world_size: world as u32,
                rank_cursors: Vec::new(),
            },
            writer: run_dir
                .as_ref()
                .filter(|_| root)
                .map(|d| CheckpointWriter::new(d.clone(), cfg.checkpoint.keep_last.0)),
            task,
            cfg,
            resolved,
            device,
            model,
            decay,
            loader: None,
            run_dir,
            metrics: None,
            saved_step: None,
            dp,
            lock: None,
        };
        // One writer per run folder, held for the whole run (rank 0 writes for all ranks).
        let (lock, from) = run_dir::start(&resume, me.run_dir.as_deref(), root)?;
        me.lock = lock;
        if let Some(dir) = from {
            me.restore(&dir)?;
        }
        if let Some(ctx) = &me.dp {
            // Every replica starts from rank 0's weights (exactly: the others add zeros).
            me.model = parallel::broadcast_root::<B, _>(ctx, me.model.clone())?;
            ctx.group.set_cursor(ctx.rank, me.state.cursor.clone());
        }
        if let (Some(dir), true) = (&me.run_dir, root) {
            std::fs::create_dir_all(dir)
                .map_err(|e| TrainError::io("cannot create the run folder", dir, e))?;
            let p = dir.join("config.resolved.yaml");
            unclip_fs::write_atomic(&p, me.resolved.as_bytes())
                .map_err(|e| TrainError::io("cannot write", &p, e))?;
            me.metrics = Some(Metrics::open(dir, me.state.step)?);
            if let Some(w) = &me.writer {
                w.remove_stale();
            }
        }
        if me.cfg.data.source == DataSource::Shards {
            let shards = me.cfg.data.shards.clone().ok_or_else(|| {
                TrainError::invalid("data.shards", "required with `data.source: shards`")
            })?;
            let partition = match &me.dp {
                Some(ctx) => Partition {
                    rank: ctx.rank,
                    world_size: ctx.world(),
                },
                None => Partition::SINGLE,
            };
            me.loader = Some(Loader::new(
                me.loader_config(shards, true),
                partition,
                me.task.transform(Split::Train)?,
                me.state.cursor.clone(),
            )?);
        }
        Ok(me)
    }

    /// Devices of the run (data-parallel ranks).
    fn world(&self) -> u64 {
        self.dp.as_ref().map_or(1, |c| c.world() as u64)
    }

    /// Rank 0, or the only rank: the one that writes.
    fn is_root(&self) -> bool {
        self.dp.as_ref().is_none_or(RankCtx::is_root)
    }

    /// Samples per micro-batch on this rank: its even share of `data.batch_size`.
    fn local_batch_size(&self) -> u64 {
        self.cfg.data.batch_size.0 / self.world()
    }

    fn loader_config(&self, shards: String, training: bool) -> LoaderConfig {
        let d = &self.cfg.data;
        let batch = if training {
            self.local_batch_size()
        } else {
            d.batch_size.0
        };
        let mut c = LoaderConfig::new(shards, batch as usize);
        c.workers = d.workers.0 as usize;
        c.seed = self.cfg.seed;
        c.shuffle = training && d.shuffle;
        c.shuffle_buffer = d.shuffle_buffer.0 as usize;
        c.prefetch_batches = d.prefetch_batches.0 as usize;
        c.require_caption = false;
        c.drop_last = training;
        c.epochs = (!training).then_some(1);
        c.samples_per_epoch = d.samples_per_epoch.filter(|_| training).map(|n| n.0);
        c.remote = d.remote.clone();
        c
    }

    fn restore(&mut self, dir: &Path) -> Result<(), TrainError> {
        let state = checkpoint::load_state(dir)?;
        if state.stage != self.cfg.stage {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                why: format!(
                    "is a checkpoint of stage {:?}, and this config trains stage {:?}: resume \
                     it with a {:?} config, or choose another --out",
                    state.stage, self.cfg.stage, state.stage
                ),
            });
        }
        let cfg_path = dir.join("config.resolved.yaml");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| TrainError::io("cannot read", &cfg_path, e))?;
        let old =
            unclip_config::from_str::<RunConfig<C>>(&text, &cfg_path.display().to_string(), &[])?;
        let diff = incompatible_changes(&old.value, &self.cfg);
        if !diff.is_empty() {
            return Err(TrainError::IncompatibleResume {
                path: dir.to_path_buf(),
                diff: diff.join("\n"),
            });
        }
        let world = self.world() as u32;
        if state.world_size != world {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                why: format!(
                    "written by a run on {} device(s), and this run has {world}: resume with {} \
                     devices (`devices:` or `--devices`); each device's data position is saved \
                     separately, so the device count cannot change within a run",
                    state.world_size, state.world_size
                ),
            });
        }
        let cursor = match &self.dp {
            Some(ctx) if world > 1 => {
                if state.cursor.is_some() && state.rank_cursors.len() != world as usize {
                    return Err(TrainError::Checkpoint {
                        path: dir.join("state.json"),
                        why: format!(
                            "holds {} rank cursors for a run on {world} devices",
                            state.rank_cursors.len()
                        ),
                    });
                }
                state.rank_cursors.get(ctx.rank).cloned()
            }
            _ => state.cursor.clone(),
        };
        // Nothing is loaded before every file matches its checksum and every tensor its shape.
        let sums = checkpoint::verify(dir)?;
        checkpoint::check_shapes::<B, _>(dir, &sums, "model", &self.model)?;
        if let Some(ema) = &self.ema {
            checkpoint::check_shapes::<B, _>(dir, &sums, "ema", &ema.model)?;
        }
        let rec = checkpoint::load_record::<B, _>(dir, "model", &self.device)?;
        self.model = self.model.clone().load_record(rec);
        if let Some(ema) = &mut self.ema {
            let rec = checkpoint::load_record::<B, _>(dir, "ema", &self.device)?;
            ema.model = ema.model.clone().load_record(rec);
        }
        let rec = checkpoint::load_record::<B, _>(dir, "optim", &self.device)?;
        self.optim = optim::adamw::<B, T::Model>(&self.cfg.optim).load_record(rec);
        self.state = TrainerState {
            config_hash: self.state.config_hash.clone(),
            cursor,
            ..state
        };
        self.saved_step = Some(self.state.step);
        tracing::info!(step = self.state.step, dir = %dir.display(), "resumed");
        Ok(())
    }

    pub fn model(&self) -> &T::Model {
        &self.model
    }
    pub fn ema(&self) -> Option<&T::Model> {
        self.ema.as_ref().map(|e| &e.model)
    }
    pub fn state(&self) -> &TrainerState {
        &self.state
    }
    pub fn optimizer_record(&self) -> <Adam<B, T::Model> as Optimizer<T::Model, B>>::Record {
        self.optim.to_record()
    }
    /// The checkpoint writer (to inject faults in tests).
    pub fn writer_mut(&mut self) -> Option<&mut CheckpointWriter> {
        self.writer.as_mut()
    }

    fn next_batch(&mut self, micro_step: u64) -> Result<Batch, TrainError> {
        let global = self.cfg.data.batch_size.0;
        let bs = self.local_batch_size();
        let first = micro_step * global + self.dp.as_ref().map_or(0, |c| c.rank as u64) * bs;
        match &mut self.loader {
            Some(loader) => loader.next_batch()?.ok_or(TrainError::DataExhausted {
                batches: loader.summary().batches,
            }),
            None => {
                let key = NoiseKey {
                    seed: self.cfg.seed,
                    step: micro_step,
                    indices: (first..first + bs).collect(),
                };
                Ok(self.task.random_batch(bs as usize, &key))
            }
        }
    }

    /// One optimizer step over `accumulation_steps` micro-batches (on every rank of a
    /// data-parallel run together: gradients and loss are averaged over the ranks).
    pub fn train_step(&mut self) -> Result<StepReport, TrainError> {
        let step = self.state.step;
        if let Some((ctx, (rank, at))) = self.dp.as_ref().zip(parallel::injected_failure()) {
            if ctx.rank == rank && step == at {
                return Err(TrainError::Task(format!(
                    "failure injected at step {step} by {}",
                    parallel::FAIL_ENV
                )));
            }
        }
        let accum = self.cfg.optim.accumulation_steps.0;
        let lr = lr_at(&self.cfg.optim, step);
        let mut grads = GradientsParams::new();
        let (mut loss_sum, mut samples) = (0.0, 0);
        for micro in 0..accum {
            let micro_step = step * accum + micro;
            let batch = self.next_batch(micro_step)?;
            let key = NoiseKey {
                seed: self.cfg.seed,
                step: micro_step,
                indices: batch.indices.clone(),
            };
            let loss = self.task.loss(&self.model, &batch, &key, &self.device)?;
            loss_sum += loss.clone().into_scalar().elem::<f64>();
            let g = GradientsParams::from_grads(loss.backward(), &self.model);
            optim::accumulate::<B, _>(&self.model, &mut grads, g);
            samples += batch.len();
        }
        if accum > 1 {
            optim::scale::<B, _>(&self.model, &mut grads, 1.0 / accum as f64);
        }
        let mut loss = loss_sum / accum as f64;
        self.state.cursor = self.loader.as_ref().map(Loader::cursor);
        if let Some(ctx) = &self.dp {
            ctx.group.set_cursor(ctx.rank, self.state.cursor.clone());
            (grads, loss) =
                parallel::all_reduce_mean::<B, _>(ctx, &self.model, &self.device, grads, loss)?;
            samples *= ctx.world();
        }
        let grad_norm = optim::global_norm::<B, _>(&self.model, &mut grads);
        self.state.step += 1;
        let counters = &mut self.state.counters;
        counters.samples_seen += samples as u64;
        let report = StepReport {
            step: self.state.step,
            loss,
            lr,
            grad_norm,
            samples,
            skipped: !(loss.is_finite() && grad_norm.is_finite()),
        };
        if report.skipped {
            counters.nonfinite_skipped += 1;
            counters.consecutive_nonfinite += 1;
            tracing::warn!(
                step,
                loss,
                grad_norm,
                "non-finite loss or gradient: step skipped"
            );
            if counters.consecutive_nonfinite >= self.cfg.optim.max_consecutive_nonfinite.0 {
                return Err(TrainError::NonFinite {
                    step: self.state.step,
                    count: counters.consecutive_nonfinite,
                    loss,
                });
            }
            return Ok(report);
        }
        counters.consecutive_nonfinite = 0;
        if let Some(max) = self.cfg.optim.grad_clip_norm {
            let f = optim::clip_factor(grad_norm, max.0);
            if f < 1.0 {
                optim::scale::<B, _>(&self.model, &mut grads, f);
            }
        }
        let decay = 1.0 - lr * self.cfg.optim.weight_decay;
        let model = optim::apply_weight_decay(self.model.clone(), &self.decay, decay);
        self.model = self.optim.step(lr, model, grads);
        if let Some(ema) = &mut self.ema {
            ema.update(&self.model, self.state.step);
        }
        Ok(report)
    }

    /// Mean validation loss and stage metrics over `validation.batches` batches of
    /// `data.val_shards`, with the same timestep and noise for a sample at every validation;
    /// `None` without val shards.
    pub fn validate(&self) -> Result<Option<Validation>, TrainError> {
        let Some(shards) = self.cfg.data.val_shards.clone() else {
            return Ok(None);
        };
        let mut cfg = self.loader_config(shards, false);
        if let Some(bs) = self.cfg.validation.batch_size {
            cfg.batch_size = bs.0 as usize;
        }
        let mut loader = Loader::new(
            cfg,
            Partition::SINGLE,
            self.task.transform(Split::Val)?,
            None,
        )?;
        let mut sums = ValidationSums::default();
        let mut metrics: BTreeMap<String, f64> = BTreeMap::new();
        let mut n = 0usize;
        for _ in 0..self.cfg.validation.batches.0 {
            let Some(batch) = loader.next_batch()? else {
                break;
            };
            let key = NoiseKey {
                seed: self.cfg.seed,
                step: VALIDATION_STEP,
                indices: batch.indices.clone(),
            };
            let s = self
                .task
                .validation_sums(&self.model, &batch, &key, &self.device)?;
            sums.loss += s.loss;
            for (name, v) in s.metrics {
                *metrics.entry(name).or_default() += v;
            }
            n += batch.len();
        }
        if n == 0 {
            return Ok(None);
        }
        metrics.values_mut().for_each(|v| *v /= n as f64);
        Ok(Some(Validation {
            loss: sums.loss / n as f64,
            metrics,
            samples: n,
        }))
    }

    /// Saves a checkpoint of the current step (refusing non-finite weights).
    pub fn save(&mut self) -> Result<Option<PathBuf>, TrainError> {
        let Some(writer) = &self.writer else {
            return Ok(None);
        };
        let ema = self.ema.as_ref().map(|e| &e.model);
        if !all_finite::<B, _>(&self.model) || !ema.is_none_or(all_finite::<B, _>) {
            return Err(TrainError::NonFiniteWeights {
                step: self.state.step,
            });
        }
        let items = SaveItems {
            model: &self.model,
            ema,
            optim: self.optim.to_record(),
            resolved_config: &self.resolved,
        };
        let mut state = self.state.clone();
        if let Some(ctx) = &self.dp {
            state.rank_cursors = ctx.group.cursors().unwrap_or_default();
        }
        let dir = writer.save::<B, _, _>(items, &state)?;
        self.saved_step = Some(self.state.step);
        if let Some(m) = &self.metrics {
            m.draw_curve()?;
        }
        Ok(Some(dir))
    }

    fn preview(&self) -> Result<(), TrainError> {
        let (Some(dir), every) = (&self.run_dir, self.cfg.preview.every_steps) else {
            return Ok(());
        };
        if !self.is_root() {
            return Ok(());
        }
        if self.state.step.checked_rem(every) != Some(0) {
            return Ok(());
        }
        let model = self.ema.as_ref().map_or(&self.model, |e| &e.model);
        let key = NoiseKey {
            seed: self.cfg.seed,
            step: 0,
            indices: vec![0],
        };
        let count = self.cfg.preview.count.0 as usize;
        if let Some(img) = self.task.preview(model, count, &key, &self.device)? {
            let path = dir
                .join("samples")
                .join(format!("step-{}.png", self.state.step));
            crate::metrics::save_png(&img, &path)?;
        }
        Ok(())
    }

    /// Trains until `optim.max_steps` or until `stop` is raised (then saves and returns).
    pub fn run(&mut self, stop: &Arc<AtomicBool>) -> Result<RunSummary, TrainError> {
        let max = self.cfg.optim.max_steps.0;
        let hang_at: Option<u64> = std::env::var(HANG_ENV).ok().and_then(|s| s.parse().ok());
        let root = self.is_root();
        let progress =
            crate::progress::Progress::new(self.cfg.logging.progress && root, self.state.step, max);
        let mut window = crate::progress::Window::new();
        let mut last_save = Instant::now();
        let mut last_checkpoint = None;
        let mut interrupted = false;
        while self.state.step < max {
            let mut stop_now = stop.load(Ordering::SeqCst);
            if let Some(ctx) = &self.dp {
                // Every rank takes the same decision, before anyone reads the step's data.
                stop_now = ctx.group.barrier(stop_now)?;
            }
            if stop_now {
                interrupted = true;
                break;
            }
            if hang_at == Some(self.state.step) {
                // Parked until SIGINT/SIGTERM raises `stop` (or the test kills the process).
                while !stop.load(Ordering::SeqCst) {
                    std::thread::park_timeout(std::time::Duration::from_millis(10));
                }
                continue;
            }
            let r = self.train_step()?;
            window.add(&r);
            progress.update(&r, window.samples_per_s());
            let step = self.state.step;
            if step.checked_rem(self.cfg.logging.every_steps.0) == Some(0) || step == max {
                let line = MetricsLine::Train {
                    step,
                    loss: window.mean_loss(),
                    lr: r.lr,
                    grad_norm: r.grad_norm,
                    samples_per_s: window.samples_per_s(),
                    skipped_steps: self.state.counters.nonfinite_skipped,
                    data_skips: self.data_skips(),
                };
                if let Some(m) = &mut self.metrics {
                    m.write(&line)?;
                }
                window = crate::progress::Window::new();
            }
            let every_val = self.cfg.validation.every_steps;
            if root && step.checked_rem(every_val) == Some(0) {
                if let Some(v) = self.validate()? {
                    if self.state.best_val_loss.is_none_or(|b| v.loss < b) {
                        self.state.best_val_loss = Some(v.loss);
                        self.state.best_step = Some(step);
                    }
                    tracing::info!(step, val_loss = v.loss, metrics = ?v.metrics, "validation");
                    if let Some(m) = &mut self.metrics {
                        m.write(&MetricsLine::Val {
                            step,
                            val_loss: v.loss,
                            metrics: v.metrics,
                        })?;
                    }
                }
            }
            self.preview()?;
            let minutes = self.cfg.checkpoint.every_minutes.map(|m| m.0);
            let due_time = minutes.is_some_and(|m| last_save.elapsed().as_secs_f64() >= m * 60.0);
            if step.checked_rem(self.cfg.checkpoint.every_steps.0) == Some(0) || due_time {
                last_checkpoint = self.save()?.or(last_checkpoint);
                last_save = Instant::now();
            }
        }
        if self.saved_step != Some(self.state.step) {
            last_checkpoint = self.save()?.or(last_checkpoint);
        }
        progress.finish();
        Ok(RunSummary {
            step: self.state.step,
            interrupted,
            last_checkpoint,
            nonfinite_skipped: self.state.counters.nonfinite_skipped,
            best_val_loss: self.state.best_val_loss,
        })
    }

    /// Skipped samples by reason, over every rank.
    fn data_skips(&self) -> BTreeMap<String, u64> {
        let own = || {
            self.loader
                .as_ref()
                .map(|l| l.summary().skipped.clone())
                .unwrap_or_default()
        };
        match self.dp.as_ref().and_then(|c| c.group.cursors()) {
            Some(cursors) => {
                let mut out = BTreeMap::new();
                for c in cursors {
                    for (k, v) in c.summary.skipped {
                        *out.entry(k).or_default() += v;
                    }
                }
                out
            }
            None => own(),
        }
    }

    /// Trainable parameters of the model.
    pub fn num_params(&self) -> usize {
        self.model.num_params()
    }
}
