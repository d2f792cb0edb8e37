//! `unclip demo`: the whole job on built-in data. Each step builds one prerequisite of the
//! next under `--out` and records that it finished (`DIR/demo/<step>.json`); re-running skips
//! finished steps, and an interrupted training step continues from its last checkpoint.
//!
//! Steps: `synth` (the shapes world with val and held-out splits) → `clip` (a small CLIP
//! trained from scratch on it, exported as a HF folder) → `embed` (image and text embeddings
//! with per-token text encodings, for every split) → `prior` (the diffusion prior on those
//! embeddings) → `decoder` (32 px) → `upsampler` (32 → 64 px), each exported → `assemble`
//! (the pipeline folder) → `eval` (held-out captions sampled and scored: `DIR/report`).

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
    /// Train the 32 px decoder on the image embeddings and caption encodings; export to
    /// DIR/decoder.
    Decoder,
    /// Train the 32 → 64 px upsampler on the shapes; export to DIR/upsampler.
    Upsampler,
    /// Put CLIP, prior, decoder and upsampler together in DIR/pipeline.
    Assemble,
    /// Sample held-out captions and score them: DIR/report (report.md, grids, sweep plot).
    Eval,
}

const STEPS: [DemoStep; 8] = [
    DemoStep::Synth,
    DemoStep::Clip,
    DemoStep::Embed,
    DemoStep::Prior,
    DemoStep::Decoder,
    DemoStep::Upsampler,
    DemoStep::Assemble,
    DemoStep::Eval,
];

/// The demo's run configs, compiled in so the demo works from any folder; each is written to
/// `DIR/configs/` before its step runs, as a record of what was trained.
const CLIP_CONFIG: &str = include_str!("../../../configs/demo/clip.yaml");
const PRIOR_CONFIG: &str = include_str!("../../../configs/demo/prior.yaml");
const DECODER_CONFIG: &str = include_str!("../../../configs/demo/decoder.yaml");
const UPSAMPLER_CONFIG: &str = include_str!("../../../configs/demo/upsampler.yaml");

/// Colour–shape combinations kept out of training (for the evaluation of unseen combinations).
pub const HOLDOUT: &str = "purple triangle,red circle";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder that receives everything the demo makes; re-running reuses it.
    #[arg(long, default_value = "checkpoints/demo")]
    pub out: PathBuf,
    /// Run the steps up to and including this one.
    #[arg(long, value_enum, default_value = "eval")]
    pub until: DemoStep,
    /// A smaller world and shorter training: a first look in a few minutes, lower quality.
    #[arg(long)]
    pub quick: bool,
}

/// Sizes of a demo run.
struct Plan {
    samples: u64,
    /// `--set` overrides of each training run.
    clip: Vec<String>,
    prior: Vec<String>,
    decoder: Vec<String>,
    upsampler: Vec<String>,
}

fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.map(String::from).to_vec()
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                samples: 4000,
                clip: strings([
                    "optim.max_steps=200",
                    "optim.lr_schedule.warmup_steps=20",
                    "checkpoint.every_steps=100",
                    "validation.every_steps=100",
                ]),
                // A higher learning rate than the full run's: at 500 steps it beat the 1 000
                // steps at 1e-3 it replaced (prior cosine 0.91 vs 0.90 on held-out).
                prior: strings([
                    "optim.max_steps=500",
                    "optim.lr=0.003",
                    "optim.lr_schedule.warmup_steps=50",
                    "ema.update_after_step=50",
                    "checkpoint.every_steps=250",
                    "validation.every_steps=500",
                    "preview.every_steps=500",
                ]),
                // Half the batch, 100 steps and a short EMA (0.995 would still hold 70 % of
                // the weights of step 20 at step 100); the pipeline samples 10 steps, not 20.
                decoder: strings([
                    "diffusion.sampling.respacing=10",
                    "optim.max_steps=100",
                    "optim.lr_schedule.warmup_steps=20",
                    "data.batch_size=8",
                    "ema.decay=0.95",
                    "ema.update_after_step=20",
                    "checkpoint.every_steps=50",
                    "validation.every_steps=100",
                    "validation.batches=1",
                    "preview.every_steps=100",
                    "preview.count=4",
                ]),
                upsampler: strings([
                    "diffusion.sampling.respacing=10",
                    "optim.max_steps=40",
                    "optim.lr_schedule.warmup_steps=10",
                    "data.batch_size=8",
                    "ema.decay=0.9",
                    "ema.update_after_step=10",
                    "checkpoint.every_steps=40",
                    "validation.every_steps=40",
                    "validation.batches=1",
                    "validation.batch_size=8",
                    "preview.every_steps=40",
                    "preview.count=2",
                ]),
            }
        } else {
            Plan {
                samples: 20_000,
                clip: Vec::new(),
                prior: Vec::new(),
                decoder: Vec::new(),
                upsampler: Vec::new(),
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
            DemoStep::Decoder => self.decoder(),
            DemoStep::Upsampler => self.upsampler(),
            DemoStep::Assemble => self.assemble(),
            DemoStep::Eval => self.eval(),
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
            return Err(crate::Interrupted {
                signal: unclip_train::launch::caught_signal().unwrap_or(libc::SIGINT),
                at: format!("step {} of the {name} run", summary.step),
                resume: "run the demo again to continue",
            }
            .into());
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
        let o = self.data_overrides(false);
        self.train_and_export("clip", CLIP_CONFIG, o, &self.plan.clip)
    }

    /// `--set` overrides pointing a run at the demo's shards (and embedding stores).
    fn data_overrides(&self, embeddings: bool) -> Vec<String> {
        let mut o = vec![
            format!("data.shards={}", self.data("train").display()),
            format!("data.val_shards={}", self.data("val").display()),
        ];
        if embeddings {
            let emb = |split: &str| self.dir.join("embeddings").join(split);
            o.push(format!("data.embeddings={}", emb("train").display()));
            o.push(format!("data.val_embeddings={}", emb("val").display()));
        }
        o
    }

    fn prior(&self) -> anyhow::Result<Value> {
        let o = self.data_overrides(true);
        self.train_and_export("prior", PRIOR_CONFIG, o, &self.plan.prior)
    }

    fn decoder(&self) -> anyhow::Result<Value> {
        let o = self.data_overrides(true);
        self.train_and_export("decoder", DECODER_CONFIG, o, &self.plan.decoder)
    }

    fn upsampler(&self) -> anyhow::Result<Value> {
        let o = self.data_overrides(false);
        self.train_and_export("upsampler", UPSAMPLER_CONFIG, o, &self.plan.upsampler)
    }

    fn assemble(&self) -> anyhow::Result<Value> {
        let report = unclip_infer::assemble(&unclip_infer::AssembleOptions {
            clip: self.dir.join("clip"),
            prior: self.dir.join("prior"),
            decoder: self.dir.join("decoder"),
            upsamplers: vec![self.dir.join("upsampler")],
            out: self.dir.join("pipeline"),
            overwrite: true,
        })?;
        Ok(serde_json::to_value(report)?)
    }

    fn eval(&self) -> anyhow::Result<Value> {
        type B = burn::backend::Flex;
        let pipeline = self.dir.join("pipeline");
        let p = unclip_infer::Pipeline::<B>::load(&pipeline, &Default::default())?;
        let opts = unclip_eval::EvalOptions::new(
            self.dir.join("data"),
            self.dir.join("report"),
            self.quick,
        );
        let report = unclip_eval::evaluate(&p, &opts)?;
        Ok(serde_json::to_value(report)?)
    }

    fn embed(&self) -> anyhow::Result<Value> {
        let clip = self.dir.join("clip");
        let embedder = unclip_embed::ClipEmbedder::load(&clip)
            .with_context(|| format!("loading CLIP from {}", clip.display()))?;
        let mut reports = serde_json::Map::new();
        for split in ["train", "val", "holdout"] {
            eprintln!("demo: embedding {split}");
            let job = unclip_embed::EmbedJob {
                shards: self.data(split).display().to_string(),
                out: self.dir.join("embeddings").join(split),
                batch_size: 256,
                workers: 0,
                text_encodings: true,
                caption_json_field: None,
                max_pixels: unclip_data::decode::DEFAULT_MAX_PIXELS,
            };
            let report = unclip_embed::embed(&job, &embedder)?;
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
                let started = std::time::Instant::now();
                let mut report = demo
                    .run(step)
                    .with_context(|| format!("demo step `{}` failed", name(step)))?;
                let seconds = started.elapsed().as_secs_f64();
                if let Some(map) = report.as_object_mut() {
                    // The wall time of the run that finished the step (a resumed step counts
                    // only its last part).
                    map.insert("seconds".into(), serde_json::json!(seconds));
                }
                eprintln!("{label}: done in {seconds:.0} s");
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
            DemoStep::Decoder => eprintln!(
                "demo: decoder validation loss {:.4} (held-out images, ε-MSE)",
                v["val_loss"].as_f64().unwrap_or(f64::NAN)
            ),
            DemoStep::Upsampler => eprintln!(
                "demo: upsampler on held-out 64 px images: PSNR of x̂0 at t = T/2 {:.2} dB \
                 (untrained {:.2} dB), of full samples {:.2} dB, of bicubic upsampling {:.2} dB; \
                 edge sharpness (gradient energy at edges) sample {:.3}, bicubic {:.3}, truth \
                 {:.3}",
                f("psnr_x0_mid"),
                f("psnr_x0_mid_init"),
                f("psnr_sample"),
                f("psnr_bicubic"),
                f("edge_energy_sample"),
                f("edge_energy_bicubic"),
                f("edge_energy_truth")
            ),
            DemoStep::Eval => {
                let s = &report["single"];
                let g = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
                eprintln!(
                    "demo: on held-out captions: colour accuracy {:.1} % (chance {:.1} %), shape \
                     {:.1} % (chance {:.1} %); binding on two-object captions {:.1} %; report in \
                     {}",
                    100.0 * g("color"),
                    100.0 * report["chance_color"].as_f64().unwrap_or(f64::NAN),
                    100.0 * g("shape"),
                    100.0 * report["chance_shape"].as_f64().unwrap_or(f64::NAN),
                    100.0 * report["pairs"]["binding"].as_f64().unwrap_or(f64::NAN),
                    demo.dir.join("report").join("report.md").display()
                );
            }
            _ => {}
        }
        reports.insert(name(step), report);
    }
    crate::print_json(&reports)
}
