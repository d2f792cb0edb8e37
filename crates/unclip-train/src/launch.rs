//! Launching from a config file: read `stage:`, load the stage's typed config, build its
//! task, pick the backend of `devices:` and run the trainer (or the benchmark).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::config::ModelSection;
use crate::config::{Precision, RunConfig, Stage, StageProbe};
use crate::device::{dispatch, dispatch_all, BackendJob, DeviceSpec, DevicesJob};
use crate::run_dir::Resume;
use crate::tasks::clip::{ClipModelConfig, ClipTask};
use crate::tasks::decoder::DecoderSpec;
use crate::tasks::denoise::{DenoiseModelConfig, DenoiseTask};
use crate::tasks::prior::PriorSpec;
use crate::tasks::upsampler::UpsamplerSpec;
use crate::trainer::{RunSummary, Trainer};
use crate::{TaskFactory, TrainError};
use unclip_stages::decoder::DecoderModelConfig;
use unclip_stages::prior::PriorModelConfig;
use unclip_stages::upsampler::UpsamplerModelConfig;

impl TaskFactory for DenoiseTask {
    type Task<B: AutodiffBackend> = DenoiseTask;
    fn build<B: AutodiffBackend>(&self, _: &B::Device) -> Result<DenoiseTask, TrainError> {
        Ok(self.clone())
    }
}

impl TaskFactory for ClipTask {
    type Task<B: AutodiffBackend> = ClipTask;
    fn build<B: AutodiffBackend>(&self, _: &B::Device) -> Result<ClipTask, TrainError> {
        Ok(self.clone())
    }
}

/// Something done with a loaded config of any stage (train, bench, export): [`for_stage`]
/// loads the config as its stage's type, builds the task factory and calls [`StageJob::run`].
pub trait StageJob {
    type Output;
    fn run<F: TaskFactory, C: ModelSection>(
        self,
        factory: F,
        loaded: Loaded<C>,
    ) -> Result<Self::Output, TrainError>;
}

/// Reads `stage:` from `path`, loads the whole config as that stage's type and runs `job`.
pub fn for_stage<J: StageJob>(
    path: &Path,
    overrides: &[String],
    max_steps: Option<u64>,
    job: J,
) -> Result<J::Output, TrainError> {
    match stage_of(path, overrides)? {
        Stage::Denoise => {
            let loaded = load::<DenoiseModelConfig>(path, overrides, max_steps)?;
            let factory = denoise_task(&loaded.config)?;
            job.run(factory, loaded)
        }
        Stage::Clip => {
            let loaded = load::<ClipModelConfig>(path, overrides, max_steps)?;
            let factory = ClipTask::new(&loaded.config)?;
            job.run(factory, loaded)
        }
        Stage::Prior => {
            let loaded = load::<PriorModelConfig>(path, overrides, max_steps)?;
            let factory = PriorSpec::new(&loaded.config)?;
            job.run(factory, loaded)
        }
        Stage::Decoder => {
            let loaded = load::<DecoderModelConfig>(path, overrides, max_steps)?;
            let factory = DecoderSpec::new(&loaded.config)?;
            job.run(factory, loaded)
        }
        Stage::Upsampler => {
            let loaded = load::<UpsamplerModelConfig>(path, overrides, max_steps)?;
            let factory = UpsamplerSpec::new(&loaded.config)?;
            job.run(factory, loaded)
        }
    }
}

/// `unclip train`'s inputs.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub config: PathBuf,
    /// `--set key=value` overrides.
    pub overrides: Vec<String>,
    /// The run folder; default `checkpoints/<config file stem>`.
    pub out: Option<PathBuf>,
    /// Overrides `optim.max_steps`.
    pub max_steps: Option<u64>,
    pub resume: Resume,
}

/// A loaded run config of one stage, with its resolved YAML.
pub struct Loaded<C> {
    pub config: RunConfig<C>,
    pub resolved: String,
}

/// Loads `path` as a run config of model section `C` (`max_steps` applied as an override).
pub fn load<C: ModelSection>(
    path: &Path,
    overrides: &[String],
    max_steps: Option<u64>,
) -> Result<Loaded<C>, TrainError> {
    let mut overrides = overrides.to_vec();
    if let Some(n) = max_steps {
        overrides.push(format!("optim.max_steps={n}"));
    }
    let l = unclip_config::load::<RunConfig<C>>(path, &overrides)?;
    check_devices(&l.value)?;
    Ok(Loaded {
        config: l.value,
        resolved: l.resolved,
    })
}

/// The parsed `devices:` of a run.
pub fn device_specs<C>(cfg: &RunConfig<C>) -> Result<Vec<DeviceSpec>, TrainError> {
    cfg.devices.iter().map(|d| DeviceSpec::parse(d)).collect()
}

/// `devices`, `precision` and the batch split: checked when a config is loaded, before
/// anything is written.
fn check_devices<C>(cfg: &RunConfig<C>) -> Result<(), TrainError> {
    let specs = device_specs(cfg)?;
    let n = specs.len() as u64;
    if n == 0 {
        return Err(TrainError::invalid("devices", "list at least one device"));
    }
    let kind = std::mem::discriminant(&specs[0]);
    if specs.iter().any(|s| std::mem::discriminant(s) != kind) {
        return Err(TrainError::invalid(
            "devices",
            format!(
                "{:?}: every device of a run must be of one kind (cpu, cuda:N or vulkan:N)",
                cfg.devices
            ),
        ));
    }
    if cfg.precision == Precision::Bf16 {
        let why = if specs[0] == DeviceSpec::Cpu {
            "the CPU backend trains in f32 only; use `precision: f32`".to_owned()
        } else {
            "not supported in this build: burn 0.21 has no mixed precision, and pure bf16 \
             weights and AdamW moments would lose the small updates of diffusion training \
             (see docs/distributed.md); use `precision: f32`"
                .to_owned()
        };
        return Err(TrainError::invalid("precision", format!("bf16: {why}")));
    }
    if n > 1 {
        let bs = cfg.data.batch_size.0;
        if !bs.is_multiple_of(n) {
            return Err(TrainError::invalid(
                "data.batch_size",
                format!(
                    "{bs} is the global micro-batch and must split evenly over the {n} devices; \
                     use a multiple of {n}"
                ),
            ));
        }
        if cfg.stage == Stage::Clip {
            return Err(TrainError::invalid(
                "devices",
                "stage clip trains on one device: its contrastive loss compares every sample \
                 with the whole batch, which data-parallel ranks do not see",
            ));
        }
    }
    Ok(())
}

/// The stage a config file trains.
pub fn stage_of(path: &Path, overrides: &[String]) -> Result<Stage, TrainError> {
    Ok(unclip_config::load::<StageProbe>(path, overrides)?
        .value
        .stage)
}

/// The denoise task of a loaded config.
pub fn denoise_task(cfg: &RunConfig<DenoiseModelConfig>) -> Result<DenoiseTask, TrainError> {
    DenoiseTask::new(cfg.model.clone(), &cfg.data, &cfg.diffusion)
}

struct TrainJob<F, C> {
    factory: F,
    loaded: Loaded<C>,
    out: PathBuf,
    resume: Resume,
    stop: Arc<AtomicBool>,
}

impl<F: TaskFactory, C: ModelSection> DevicesJob for TrainJob<F, C> {
    type Output = RunSummary;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<RunSummary, TrainError> {
        if devices.len() == 1 {
            let device = devices.into_iter().next().unwrap_or_default();
            let mut t = Trainer::<B, F::Task<B>, C>::new(
                self.factory.build::<B>(&device)?,
                self.loaded.config,
                self.loaded.resolved,
                device,
                Some(self.out),
                self.resume,
            )?;
            return t.run(&self.stop);
        }
        let job = &self;
        crate::parallel::run_ranks::<B, _, _>(devices, |ctx, device| {
            crate::parallel::register::<B>(&ctx, &device)?;
            let mut t = Trainer::<B, F::Task<B>, C>::new_rank(
                job.factory.build::<B>(&device)?,
                job.loaded.config.clone(),
                job.loaded.resolved.clone(),
                device,
                Some(job.out.clone()),
                job.resume.clone(),
                Some(ctx),
            )?;
            t.run(&job.stop)
        })
    }
}

struct Train {
    out: PathBuf,
    resume: Resume,
    stop: Arc<AtomicBool>,
}

impl StageJob for Train {
    type Output = RunSummary;
    fn run<F: TaskFactory, C: ModelSection>(
        self,
        factory: F,
        loaded: Loaded<C>,
    ) -> Result<RunSummary, TrainError> {
        let specs = device_specs(&loaded.config)?;
        dispatch_all(
            &specs,
            TrainJob {
                factory,
                loaded,
                out: self.out,
                resume: self.resume,
                stop: self.stop,
            },
        )
    }
}

/// Runs `unclip train`: until `optim.max_steps`, or until `stop` is raised (SIGINT/SIGTERM),
/// then saves a checkpoint.
pub fn train(opts: &TrainOptions, stop: Arc<AtomicBool>) -> Result<RunSummary, TrainError> {
    let out = opts.out.clone().unwrap_or_else(|| {
        let stem = opts.config.file_stem().unwrap_or_default();
        Path::new("checkpoints").join(stem)
    });
    let job = Train {
        out,
        resume: opts.resume.clone(),
        stop,
    };
    for_stage(&opts.config, &opts.overrides, opts.max_steps, job)
}

/// `unclip bench train`'s result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub bench: &'static str,
    pub stage: Stage,
    pub device: String,
    pub steps: u64,
    /// Median seconds per optimizer step after the warm-up steps.
    pub s_per_step: f64,
    pub samples_per_s: f64,
    pub params: usize,
}

struct BenchJob<F, C> {
    factory: F,
    loaded: Loaded<C>,
    steps: u64,
    warmup: u64,
}

impl<F: TaskFactory, C: ModelSection> BackendJob for BenchJob<F, C> {
    type Output = BenchReport;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<BenchReport, TrainError> {
        let stage = self.loaded.config.stage;
        let dev = self.loaded.config.devices[0].clone();
        let mut t = Trainer::<B, F::Task<B>, C>::new(
            self.factory.build::<B>(&device)?,
            self.loaded.config,
            self.loaded.resolved,
            device,
            None,
            Resume::No,
        )?;
        let mut times = Vec::new();
        let mut samples = 0;
        for i in 0..self.warmup + self.steps {
            let start = Instant::now();
            let r = t.train_step()?;
            if i >= self.warmup {
                times.push(start.elapsed().as_secs_f64());
                samples = r.samples;
            }
        }
        times.sort_by(f64::total_cmp);
        let s_per_step = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
        Ok(BenchReport {
            bench: "train",
            stage,
            device: dev,
            steps: self.steps,
            s_per_step,
            samples_per_s: samples as f64 / s_per_step,
            params: t.num_params(),
        })
    }
}

struct Bench {
    steps: u64,
    warmup: u64,
}

impl StageJob for Bench {
    type Output = BenchReport;
    fn run<F: TaskFactory, C: ModelSection>(
        self,
        factory: F,
        loaded: Loaded<C>,
    ) -> Result<BenchReport, TrainError> {
        let specs = device_specs(&loaded.config)?;
        if specs.len() != 1 {
            return Err(TrainError::invalid(
                "devices",
                "`unclip bench train` measures one device: list exactly one",
            ));
        }
        dispatch(
            specs[0],
            BenchJob {
                factory,
                loaded,
                steps: self.steps.max(1),
                warmup: self.warmup,
            },
        )
    }
}

/// `unclip bench train`: `steps` timed optimizer steps after `warmup` untimed ones; nothing
/// is written.
pub fn bench(
    config: &Path,
    overrides: &[String],
    steps: u64,
    warmup: u64,
) -> Result<BenchReport, TrainError> {
    for_stage(config, overrides, None, Bench { steps, warmup })
}

static CAUGHT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The last signal [`stop_on_signals`] caught (`SIGINT` = 2, `SIGTERM` = 15), if any.
pub fn caught_signal() -> Option<i32> {
    match CAUGHT.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// A flag raised by SIGINT or SIGTERM, for [`train`]'s `stop`.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>, TrainError> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let f = Arc::clone(&flag);
        // SAFETY: the handler only stores to atomics, which is async-signal-safe.
        unsafe {
            signal_hook_registry::register(sig, move || {
                CAUGHT.store(sig, std::sync::atomic::Ordering::SeqCst);
                f.store(true, std::sync::atomic::Ordering::SeqCst)
            })
        }
        .map_err(|e| TrainError::io("cannot install a signal handler", "", e))?;
    }
    Ok(flag)
}
