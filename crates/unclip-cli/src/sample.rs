//! `unclip pipeline assemble` and `unclip sample`: put exports together into a pipeline folder
//! and generate images from it (text → images, image variations, interpolation).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use unclip_infer::{grid, save_png, AssembleOptions, GenerateOptions, Pipeline, StageOverrides};

type B = burn::backend::Flex;

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Copy a CLIP folder and the native exports of a prior, a decoder and up to two
    /// upsamplers into one pipeline folder with a pipeline.json of sampling defaults.
    Assemble(AssembleArgs),
}

#[derive(Debug, Args)]
pub struct AssembleArgs {
    /// HF-layout CLIP folder (the one the embeddings were made with).
    #[arg(long)]
    pub clip: PathBuf,
    /// Prior export folder (`unclip export`, native layout).
    #[arg(long)]
    pub prior: PathBuf,
    /// Decoder export folder.
    #[arg(long)]
    pub decoder: PathBuf,
    /// Upsampler export folders, lowest resolution first (0, 1 or 2).
    #[arg(long = "upsampler")]
    pub upsamplers: Vec<PathBuf>,
    /// The pipeline folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing pipeline folder's files.
    #[arg(long)]
    pub overwrite: bool,
    /// `native`: the pipeline folder only. `diffusers`: also `OUT/diffusers/`, a folder that
    /// diffusers' `UnCLIPPipeline.from_pretrained(…, trust_remote_code=True)` loads; refused,
    /// with the reason, where diffusers cannot compute what this pipeline does.
    #[arg(long, default_value = "native")]
    pub layout: unclip_train::export::ExportLayout,
}

pub fn run_pipeline(cmd: PipelineCommand) -> anyhow::Result<()> {
    match cmd {
        PipelineCommand::Assemble(a) => {
            // One writer per pipeline folder, for the whole command.
            let _lock = unclip_fs::FolderLock::acquire(&a.out, "unclip pipeline assemble")?;
            let opts = AssembleOptions {
                clip: a.clip,
                prior: a.prior,
                decoder: a.decoder,
                upsamplers: a.upsamplers,
                out: a.out,
                overwrite: a.overwrite,
            };
            let report = unclip_infer::assemble_as(&opts, a.layout)?;
            crate::print_json(&report)
        }
    }
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// The pipeline folder (`unclip pipeline assemble`).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Caption to draw (repeat for several; each gets `-n` images).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// Variations of this image instead of a caption.
    #[arg(long, conflicts_with = "prompts")]
    pub image: Option<PathBuf>,
    /// With two prompts: images along the path between their image embeddings.
    #[arg(long, requires = "prompts")]
    pub interpolate: bool,
    /// Images per prompt (or variations, or interpolation points).
    #[arg(short, long, default_value_t = 4)]
    pub n: usize,
    /// The grid PNG to write (one row per prompt).
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prior guidance scale (default: pipeline.json).
    #[arg(long)]
    pub prior_guidance: Option<f64>,
    /// Decoder guidance scale (default: pipeline.json).
    #[arg(long)]
    pub decoder_guidance: Option<f64>,
    /// Prior respacing, e.g. `ddim25` (default: pipeline.json).
    #[arg(long)]
    pub prior_steps: Option<String>,
    /// Decoder respacing.
    #[arg(long)]
    pub decoder_steps: Option<String>,
    /// Upsampler respacing (all upsamplers).
    #[arg(long)]
    pub upsampler_steps: Option<String>,
    /// Apply at most this many upsamplers (0: the decoder's resolution).
    #[arg(long)]
    pub upsamplers: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The most images one `unclip sample` call makes.
const MAX_SAMPLE_IMAGES: usize = 256;

pub fn run_sample(a: SampleArgs) -> anyhow::Result<()> {
    if a.n == 0 {
        bail!("-n must be at least 1");
    }
    // Every image goes into one grid PNG held in memory: bound it before loading anything.
    let total = a.n.saturating_mul(a.prompts.len().max(1));
    if total > MAX_SAMPLE_IMAGES {
        bail!(
            "{total} images asked for (-n {} × {} prompt(s)); one call makes at most \
             {MAX_SAMPLE_IMAGES} (they are drawn into one grid image held in memory): run it \
             several times with other --seed values",
            a.n,
            a.prompts.len().max(1)
        );
    }
    let device = Default::default();
    let p = Pipeline::<B>::load(&a.pipeline, &device)
        .with_context(|| format!("loading the pipeline {}", a.pipeline.display()))?;
    let up = StageOverrides {
        respacing: a.upsampler_steps.clone(),
        guidance: None,
    };
    let opts = GenerateOptions {
        seed: a.seed,
        prior: StageOverrides {
            respacing: a.prior_steps,
            guidance: a.prior_guidance,
        },
        decoder: StageOverrides {
            respacing: a.decoder_steps,
            guidance: a.decoder_guidance,
        },
        upsamplers: vec![up; 2],
        max_upsamplers: a.upsamplers,
        progress: !a.quiet,
    };
    let (generated, cols) = if let Some(path) = &a.image {
        let img = unclip_infer::open_rgb(path)?;
        (p.variations(&img, a.n, &opts)?, a.n)
    } else if a.interpolate {
        if a.prompts.len() != 2 {
            bail!("--interpolate needs exactly two --prompt");
        }
        (
            p.interpolate(&a.prompts[0], &a.prompts[1], a.n, &opts)?,
            a.n,
        )
    } else {
        if a.prompts.is_empty() {
            bail!("give --prompt \"…\" (or --image for variations)");
        }
        let captions: Vec<String> = a
            .prompts
            .iter()
            .flat_map(|c| std::iter::repeat_n(c.clone(), a.n))
            .collect();
        (p.text_to_images(&captions, &opts)?, a.n)
    };
    let images = generated.images();
    save_png(&grid(images, cols), &a.out)?;
    let (w, h) = images.first().map(|i| i.dimensions()).unwrap_or_default();
    crate::print_json(&serde_json::json!({
        "out": a.out,
        "images": images.len(),
        "width": w,
        "height": h,
        "sides": p.sides(),
    }))
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The pipeline folder to evaluate.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// The shapes-world folder (`unclip data synth --out`), with val/ and holdout/.
    #[arg(long)]
    pub data: PathBuf,
    /// Folder receiving report.md, report.json and the PNGs.
    #[arg(long)]
    pub out: PathBuf,
    /// A small evaluation (fewer captions, guidance 1 and 4 only).
    #[arg(long)]
    pub quick: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Single-object held-out captions to score (default 48, `--quick` 8).
    #[arg(long)]
    pub captions: Option<usize>,
    /// Two-object captions for the binding score (default 24, `--quick` 4; 0 skips).
    #[arg(long)]
    pub pairs: Option<usize>,
    /// Captions of held-out colour–shape combinations (default 24, `--quick` 4; 0 skips).
    #[arg(long)]
    pub holdout: Option<usize>,
    /// Held-out images per palette colour for the decoder-on-real-embeddings check (default 2,
    /// at least 1).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub per_color: Option<usize>,
    /// Decoder guidance scales of the sweep, comma-separated (default 1,2,4,8; `--quick`
    /// 1,4); `none` skips the sweep.
    #[arg(long, value_parser = parse_scales)]
    pub sweep_scales: Option<Scales>,
}

/// A list of guidance scales (`none` = empty).
#[derive(Debug, Clone)]
pub struct Scales(pub Vec<f64>);

fn parse_scales(s: &str) -> Result<Scales, String> {
    if s.trim() == "none" {
        return Ok(Scales(Vec::new()));
    }
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|g| g.is_finite() && *g >= 0.0)
                .ok_or_else(|| format!("{v:?} is not a guidance scale (a number ≥ 0)"))
        })
        .collect::<Result<_, _>>()
        .map(Scales)
}

pub fn run_eval(a: EvalArgs) -> anyhow::Result<()> {
    let device = Default::default();
    let p = Pipeline::<B>::load(&a.pipeline, &device)
        .with_context(|| format!("loading the pipeline {}", a.pipeline.display()))?;
    let mut o = unclip_eval::EvalOptions::new(a.data, a.out, a.quick);
    o.seed = a.seed;
    o.captions = a.captions.unwrap_or(o.captions);
    o.pairs = a.pairs.unwrap_or(o.pairs);
    o.holdout = a.holdout.unwrap_or(o.holdout);
    o.per_color = a.per_color.unwrap_or(o.per_color);
    if let Some(Scales(s)) = a.sweep_scales {
        o.sweep_scales = s;
    }
    let report = unclip_eval::evaluate(&p, &o)?;
    crate::print_json(&report)
}

#[cfg(test)]
mod tests {
    use super::parse_scales;

    #[test]
    fn sweep_scales_parse_lists_and_none_and_refuse_the_rest() {
        assert_eq!(
            parse_scales("1, 2,4.5").expect("list").0,
            vec![1.0, 2.0, 4.5]
        );
        assert!(parse_scales("none").expect("none").0.is_empty());
        for bad in ["", "1,,2", "-1", "inf", "two"] {
            let e = parse_scales(bad).expect_err(bad);
            assert!(e.contains("guidance scale"), "{bad}: {e}");
        }
    }
}
