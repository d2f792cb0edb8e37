//! The `unclip` command line: one binary whose subcommands cover the whole pipeline — datasets
//! (`data`), CLIP embeddings (`clip`, `embed`), training and export (`train`, `export`),
//! pipeline folders, sampling and evaluation (`pipeline`, `sample`, `eval`), benchmarks and the
//! demo. This crate only parses arguments, wires the library crates together and reports errors;
//! it holds no pipeline logic.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): **cli**, the
//! top.

mod bench;
mod clip;
mod demo;
mod embed;
mod sample;
mod train;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "unclip",
    version,
    about = "Train the stages of unCLIP (DALL-E 2): prior, decoder, upsamplers",
    long_about = "Train the stages of unCLIP (DALL-E 2) from image-caption tar shards.\n\n\
        `unclip demo` runs the job on the built-in shapes world; `unclip data synth --out \
        data/shapes` makes that dataset alone, `unclip data inspect data/shapes/train` shows it."
)]
struct Cli {
    /// More log output (-v: info, -vv: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, pack and inspect datasets of image-caption tar shards.
    #[command(subcommand)]
    Data(DataCommand),
    /// Frozen CLIP models: make a random-init one for tests and demos.
    #[command(subcommand)]
    Clip(clip::ClipCommand),
    /// Precompute CLIP image/text embeddings beside the shards (resumable).
    Embed(embed::EmbedCommand),
    /// Train a stage from a YAML run config (see docs/training.md).
    Train(train::TrainArgs),
    /// Export a checkpoint's weights (EMA by default) as model.safetensors + config.json.
    Export(train::ExportArgs),
    /// Benchmarks; each prints one JSON line.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The whole job on built-in data: shapes world → CLIP → embeddings → prior → decoder →
    /// upsampler → pipeline folder → evaluation report (re-running resumes).
    Demo(demo::DemoArgs),
    /// Pipeline folders: assemble exports into one (see docs/inference.md).
    #[command(subcommand)]
    Pipeline(sample::PipelineCommand),
    /// Generate images from a pipeline folder: text → images, variations, interpolation.
    Sample(sample::SampleArgs),
    /// Score a pipeline on held-out shapes-world captions: attribute accuracy, binding,
    /// CLIP score, CMMD, guidance sweep (report.md + PNGs).
    Eval(sample::EvalArgs),
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Render the shapes world: a seeded synthetic dataset with checkable captions.
    Synth(unclip_data_tools::SynthOptions),
    /// Pack a folder of images + .txt captions (or a CSV/TSV) into webdataset shards.
    Pack(unclip_data_tools::PackOptions),
    /// Count samples, bad samples by reason, caption/image statistics; draw a contact sheet.
    Inspect(unclip_data_tools::InspectOptions),
    /// Build CLIP's HF tokenizer.json from the public BPE vocabulary, offline.
    BuildTokenizer(clip::BuildTokenizerArgs),
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parse `args` (program name first) and run; errors are printed with their causes.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            eprintln!("{e}");
            let signal = e.downcast_ref::<Interrupted>().map_or(2, |i| i.signal);
            ExitCode::from((128 + signal).clamp(129, 255) as u8)
        }
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A command stopped by SIGINT/SIGTERM after saving its work: the process exits with
/// 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as shells report it, so a
/// scheduler can tell an interrupted run from a finished one.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by signal {signal} at {at}; {resume}")]
pub struct Interrupted {
    pub signal: i32,
    /// Where it stopped.
    pub at: String,
    /// How to continue.
    pub resume: &'static str,
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Data(DataCommand::Synth(opts)) => {
            let report = unclip_data_tools::synth(&opts)?;
            print_json(&report)
        }
        Command::Data(DataCommand::Pack(opts)) => {
            let report = unclip_data_tools::pack(&opts)?;
            print_json(&report)
        }
        Command::Data(DataCommand::Inspect(opts)) => {
            let report = unclip_data_tools::inspect(&opts)?;
            if opts.json {
                print_json(&report)
            } else {
                print!("{}", unclip_data_tools::inspect::render_text(&report));
                Ok(())
            }
        }
        Command::Data(DataCommand::BuildTokenizer(a)) => clip::build_tokenizer(a),
        Command::Clip(cmd) => clip::run(cmd),
        Command::Embed(cmd) => embed::run(cmd),
        Command::Train(args) => train::train(args),
        Command::Export(args) => train::export(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Pipeline(cmd) => sample::run_pipeline(cmd),
        Command::Sample(args) => sample::run_sample(args),
        Command::Eval(args) => sample::run_eval(args),
    }
}
