//! `unclip demo`: the whole job on built-in data. Each step builds one prerequisite of the
//! next under `--out` and records that it finished (`DIR/demo/<step>.json`); re-running skips
//! finished steps, and an interrupted training step continues from its last checkpoint.
//!
//! Steps: `synth` (the shapes world with val and held-out splits) → `clip` (a small CLIP
//! trained from scratch on it, exported as a HF folder) → `embed` (image and text embeddings
//! with per-token text encodings, for every split) → `prior` (the diffusion prior on those
//! embeddings, exported).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use unclip_train::export::{ExportDtype, ExportLayout};
use unclip_train::launch::TrainOptions;
use unclip_train::Resume;

/// The demo's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoStep {
    /// Render the shapes world (train / val / holdout shards).
    Synth,
    /// Train the small CLIP and export it (HF layout) to DIR/clip.
    Clip,
    /// Embed every split with that CLIP (DIR/embeddings/{train,val,holdout}).
    Embed,
    /// Train the diffusion prior on those embeddings and export it to DIR/prior.
    Prior,
}

const STEPS: [DemoStep; 4] = [
    DemoStep::Synth,
    DemoStep::Clip,
    DemoStep::Embed,
    DemoStep::Prior,
];

/// The demo's run configs, compiled in so the demo works from any folder; each is written to
/// `DIR/configs/` before its step runs, as a record of what was trained.
const CLIP_CONFIG: &str = include_str!("../../../configs/demo/clip.yaml");
const PRIOR_CONFIG: &str = include_str!("../../../configs/demo/prior.yaml");

/// Colour–shape combinations kept out of training (for the evaluation of unseen combinations).
pub const HOLDOUT: &str = "purple triangle,red circle";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder that receives everything the demo makes; re-running reuses it.
    #[arg(long, default_value = "checkpoints/demo")]
    pub out: PathBuf,
    /// Run the steps up to and including this one.
    #[arg(long, value_enum, default_value = "prior")]
    pub until: DemoStep,
    /// A smaller world and shorter training: a first look in about a minute, lower quality.
    #[arg(long)]
    pub quick: bool,
}

/// Sizes of a demo run.
struct Plan {
    samples: u64,
    /// `--set` overrides of the CLIP and prior runs.
    clip: Vec<String>,
    prior: Vec<String>,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                samples: 4000,
                clip: [
                    "optim.max_steps=200",
                    "optim.lr_schedule.warmup_steps=20",
                    "checkpoint.every_steps=100",
                    "validation.every_steps=100",
                ]
                .map(String::from)
                .to_vec(),
                prior: [
                    "optim.max_steps=1000",
                    "checkpoint.every_steps=500",
                    "validation.every_steps=1000",
                ]
                .map(String::from)
                .to_vec(),
            }
        } else {
            Plan {
                samples: 20_000,
                clip: Vec::new(),
                prior: Vec::new(),
            }
        }
    }
}

/// What `DIR/demo/<step>.json` records.
#[derive(Debug, Serialize, Deserialize)]
struct Done {
    step: DemoStep,
    quick: bool,
    report: Value,
}

struct Demo<'a> {
    dir: &'a Path,
    quick: bool,
    plan: Plan,
}

impl Demo<'_> {
    fn marker(&self, step: DemoStep) -> PathBuf {
        self.dir.join("demo").join(format!("{}.json", name(step)))
    }

    fn finished(&self, step: DemoStep) -> anyhow::Result<Option<Value>> {
        let path = self.marker(step);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let done: Done = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a demo step record", path.display()))?;
        if done.quick != self.quick {
            bail!(
                "{} was made {} --quick; use another --out, or delete the folder",
                self.dir.display(),
                if done.quick { "with" } else { "without" }
            );
        }
        Ok(Some(done.report))
    }

    fn record(&self, step: DemoStep, report: &Value) -> anyhow::Result<()> {
        let path = self.marker(step);
        let done = Done {
            step,
            quick: self.quick,
            report: report.clone(),
        };
        let text = serde_json::to_string_pretty(&done)? + "\n";
        unclip_fs::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    fn run(&self, step: DemoStep) -> anyhow::Result<Value> {
        match step {
            DemoStep::Synth => self.synth(),
            DemoStep::Clip => self.clip(),
            DemoStep::Embed => self.embed(),
            DemoStep::Prior => self.prior(),
        }
    }

    fn data(&self, split: &str) -> PathBuf {
        self.dir.join("data").join(split)
    }

    fn synth(&self) -> anyhow::Result<Value> {
        let mut o = unclip_data_tools::SynthOptions::new(self.dir.join("data"));
        o.count = self.plan.samples;
        o.size = 64;
        o.holdout = HOLDOUT.into();
        // A step that did not finish may have left some shards: render them again.
        o.overwrite = true;
        Ok(serde_json::to_value(unclip_data_tools::synth(&o)?)?)
    }

    /// Writes `text` as `DIR/configs/<name>.yaml` and returns its path.
    fn config(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("configs").join(format!("{name}.yaml"));
        unclip_fs::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Trains `name` from its demo config (`text`, with `overrides`) in `DIR/runs/<name>`,
    /// continuing an interrupted run, and exports the last checkpoint to `DIR/<name>`.
    fn train_and_export(
        &self,
        name: &str,
        text: &str,
        mut overrides: Vec<String>,
        extra: &[String],
    ) -> anyhow::Result<Value> {
        let config = self.config(name, text)?;
        overrides.extend(extra.iter().cloned());
        let run = self.dir.join("runs").join(name);
        let opts = TrainOptions {
            config,
            overrides,
            out: Some(run.clone()),
            max_steps: None,
            resume: Resume::Auto,
        };
        let summary = unclip_train::launch::train(&opts, unclip_train::launch::stop_on_signals()?)?;
        if summary.interrupted {
            bail!(
                "stopped at step {}; run the demo again to continue",
                summary.step
            );
        }
        let ckpt = summary
            .last_checkpoint
            .clone()
            .with_context(|| format!("the {name} run wrote no checkpoint"))?;
        let export = unclip_train::export::export(
            &ckpt,
            &self.dir.join(name),
            true,
            ExportDtype::F32,
            ExportLayout::Native,
        )?;
        Ok(serde_json::json!({
            "run": run,
            "steps": summary.step,
            "export": export.weights.parent(),
            "validation": last_validation(&run)?,
        }))
    }

    fn clip(&self) -> anyhow::Result<Value> {
        let overrides = vec![
            format!("data.shards={}", self.data("train").display()),
            format!("data.val_shards={}", self.data("val").display()),
        ];
        self.train_and_export("clip", CLIP_CONFIG, overrides, &self.plan.clip)
    }

    fn prior(&self) -> anyhow::Result<Value> {
        let emb = |split: &str| self.dir.join("embeddings").join(split);
        let overrides = vec![
            format!("data.shards={}", self.data("train").display()),
            format!("data.val_shards={}", self.data("val").display()),
            format!("data.embeddings={}", emb("train").display()),
            format!("data.val_embeddings={}", emb("val").display()),
        ];
        self.train_and_export("prior", PRIOR_CONFIG, overrides, &self.plan.prior)
    }

    fn embed(&self) -> anyhow::Result<Value> {
        let clip = self.dir.join("clip");
        let embedder = unclip_data_tools::clip_embedder::ClipEmbedder::load(&clip)
            .with_context(|| format!("loading CLIP from {}", clip.display()))?;
        let mut reports = serde_json::Map::new();
        for split in ["train", "val", "holdout"] {
            eprintln!("demo: embedding {split}");
            let job = unclip_data_tools::embed::EmbedJob {
                shards: self.data(split).display().to_string(),
                out: self.dir.join("embeddings").join(split),
                batch_size: 256,
                workers: 0,
                text_encodings: true,
                caption_json_field: None,
                max_pixels: unclip_data::decode::DEFAULT_MAX_PIXELS,
            };
            let report = unclip_data_tools::embed::embed(&job, &embedder)?;
            reports.insert(split.into(), serde_json::to_value(report)?);
        }
        Ok(Value::Object(reports))
    }
}

fn name(step: DemoStep) -> String {
    step.to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// The last `val` line of a run's `metrics.jsonl` (its retrieval metrics, for CLIP).
fn last_validation(run: &Path) -> anyhow::Result<Value> {
    let path = run.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["kind"] == "val")
        .with_context(|| format!("{} has no validation line", path.display()))
}

/// Runs `unclip demo`; prints one JSON line with every step's report.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let demo = Demo {
        dir: &args.out,
        quick: args.quick,
        plan: Plan::new(args.quick),
    };
    let steps: Vec<DemoStep> = STEPS.into_iter().filter(|s| *s <= args.until).collect();
    let mut reports = serde_json::Map::new();
    for (i, &step) in steps.iter().enumerate() {
        let label = format!("demo: [{}/{}] {}", i + 1, steps.len(), name(step));
        let report = match demo.finished(step)? {
            Some(report) => {
                eprintln!(
                    "{label}: already done (recorded in {})",
                    demo.marker(step).display()
                );
                report
            }
            None => {
                eprintln!("{label} …");
                let report = demo
                    .run(step)
                    .with_context(|| format!("demo step `{}` failed", name(step)))?;
                demo.record(step, &report)?;
                report
            }
        };
        let v = &report["validation"];
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        match step {
            DemoStep::Clip => eprintln!(
                "demo: CLIP retrieval on held-out batches of 64: image→text top-1 {:.3}, \
                 text→image top-1 {:.3} (chance {:.3})",
                f("i2t_top1"),
                f("t2i_top1"),
                f("chance_top1")
            ),
            DemoStep::Prior => eprintln!(
                "demo: prior on held-out captions: cosine with the true image embedding {:.3} \
                 (text embedding {:.3}, dataset mean {:.3}, shuffled captions {:.3}); \
                 retrieval top-1 among 64 {:.3} (chance {:.3})",
                f("cos_pred"),
                f("cos_text_baseline"),
                f("cos_mean_baseline"),
                f("cos_shuffled"),
                f("retrieval_top1"),
                f("chance_top1")
            ),
            _ => {}
        }
        reports.insert(name(step), report);
    }
    crate::print_json(&reports)
}
