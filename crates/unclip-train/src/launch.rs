//! Launching from a config file: read `stage:`, load the stage's typed config, build its
//! task, pick the backend of `devices:` and run the trainer (or the benchmark).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::config::ModelSection;
use crate::config::{RunConfig, Stage, StageProbe};
use crate::device::{dispatch, BackendJob, DeviceSpec};
use crate::tasks::clip::{ClipModelConfig, ClipTask};
use crate::tasks::decoder::{DecoderModelConfig, DecoderSpec};
use crate::tasks::denoise::{DenoiseModelConfig, DenoiseTask};
use crate::tasks::prior::{PriorModelConfig, PriorSpec};
use crate::tasks::upsampler::{UpsamplerModelConfig, UpsamplerSpec};
use crate::trainer::{Resume, RunSummary, Trainer};
use crate::{TrainError, TrainTask};

/// Builds a stage's task on any backend (frozen models it needs are loaded on `device`).
pub trait TaskFactory {
    type Task<B: AutodiffBackend>: TrainTask<B>;
    fn build<B: AutodiffBackend>(&self, device: &B::Device) -> Result<Self::Task<B>, TrainError>;
}

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
    if l.value.devices.len() != 1 {
        return Err(TrainError::invalid(
            "devices",
            format!(
                "list exactly one device (got {}); data-parallel training is not part of this build",
                l.value.devices.len()
            ),
        ));
    }
    Ok(Loaded {
        config: l.value,
        resolved: l.resolved,
    })
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

impl<F: TaskFactory, C: ModelSection> BackendJob for TrainJob<F, C> {
    type Output = RunSummary;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<RunSummary, TrainError> {
        let mut t = Trainer::<B, F::Task<B>, C>::new(
            self.factory.build::<B>(&device)?,
            self.loaded.config,
            self.loaded.resolved,
            device,
            Some(self.out),
            self.resume,
        )?;
        t.run(&self.stop)
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
        let spec = DeviceSpec::parse(&loaded.config.devices[0])?;
        dispatch(
            spec,
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
        let spec = DeviceSpec::parse(&loaded.config.devices[0])?;
        dispatch(
            spec,
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

/// A flag raised by SIGINT or SIGTERM, for [`train`]'s `stop`.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>, TrainError> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let f = Arc::clone(&flag);
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            signal_hook_registry::register(sig, move || {
                f.store(true, std::sync::atomic::Ordering::SeqCst)
            })
        }
        .map_err(|e| TrainError::io("cannot install a signal handler", "", e))?;
    }
    Ok(flag)
}
