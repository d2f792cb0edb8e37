//! `unclip train`, `unclip export` and `unclip bench train`: argument parsing and printing
//! only; the engine is `unclip-train`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use unclip_train::export::{ExportDtype, ExportLayout};
use unclip_train::launch::{self, TrainOptions};
use unclip_train::Resume;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run config (YAML). Its `stage:` picks the model; see docs/config.md.
    #[arg(long)]
    pub config: PathBuf,
    /// The run folder (checkpoints, metrics.jsonl, loss.png, samples/); default
    /// checkpoints/<config file name>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train until this many optimizer steps (overrides `optim.max_steps`).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// `auto`: continue the run in --out from its `latest` checkpoint (or start it);
    /// a path: continue from that checkpoint folder (`…/step-N`).
    #[arg(long, value_name = "auto|PATH", conflicts_with = "overwrite")]
    pub resume: Option<String>,
    /// Start afresh in an --out that holds an earlier run: remove that run's checkpoints,
    /// metrics, plots and samples first (other files stay).
    #[arg(long)]
    pub overwrite: bool,
    /// Override a config value, e.g. `--set optim.lr=3e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Train on these devices (overrides `devices:`), e.g. `cuda:0,cuda:1` or `cpu,cpu`;
    /// several train data-parallel with `data.batch_size` as the global batch
    /// (docs/distributed.md).
    #[arg(long, value_delimiter = ',', value_name = "DEVICE,...")]
    pub devices: Option<Vec<String>>,
}

/// Runs `unclip train`; prints the run summary as one JSON line. SIGINT/SIGTERM save a
/// checkpoint and stop, and the command then fails with [`crate::Interrupted`] (exit code
/// 128 + the signal's number: 130, 143).
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let resume = match args.resume.as_deref() {
        None if args.overwrite => Resume::Replace,
        None => Resume::No,
        Some("auto") => Resume::Auto,
        Some(p) => Resume::Path(PathBuf::from(p)),
    };
    let mut overrides = args.overrides;
    if let Some(devices) = &args.devices {
        let quoted: Vec<String> = devices
            .iter()
            .map(|d| serde_json::to_string(d.trim()))
            .collect::<Result<_, _>>()?;
        overrides.push(format!("devices=[{}]", quoted.join(", ")));
    }
    let opts = TrainOptions {
        config: args.config,
        overrides,
        out: args.out,
        max_steps: args.max_steps,
        resume,
    };
    let stop = launch::stop_on_signals()?;
    let summary = launch::train(&opts, stop)
        .with_context(|| format!("training {} failed", opts.config.display()))?;
    println!("{}", serde_json::to_string(&summary)?);
    if summary.interrupted {
        return Err(crate::Interrupted {
            signal: launch::caught_signal().unwrap_or(libc::SIGINT),
            resume: "run the same command with `--resume auto` to continue",
            at: format!(
                "step {}, checkpoint {}",
                summary.step,
                summary
                    .last_checkpoint
                    .as_deref()
                    .map_or("none".into(), |p| p.display().to_string())
            ),
        }
        .into());
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A checkpoint folder (`run/step-N`), a run folder or its `latest` file (the checkpoint
    /// `latest` names is used).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output folder: receives config.json and model.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Export the raw weights instead of the EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// Element type of the weights: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: ExportDtype,
    /// `native` (unclip's config.json + model.safetensors; for a CLIP the HF transformers
    /// folder) or `diffusers` (what diffusers' model classes load).
    #[arg(long, default_value = "native")]
    pub layout: ExportLayout,
}

/// Runs `unclip export`; prints what was written as one JSON line.
pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let report = unclip_train::export::export(
        &args.checkpoint,
        &args.out,
        !args.no_ema,
        args.dtype,
        args.layout,
    )
    .with_context(|| format!("exporting {} failed", args.checkpoint.display()))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[derive(Debug, Args)]
pub struct TrainBench {
    /// A run config; `data.source: random` avoids measuring the loader.
    #[arg(long)]
    pub config: PathBuf,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// Runs `unclip bench train`: one JSON line with the median `s_per_step`, `samples_per_s`
/// and `params`.
pub fn bench_train(args: TrainBench) -> anyhow::Result<()> {
    let report = launch::bench(&args.config, &args.overrides, args.steps, args.warmup)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
