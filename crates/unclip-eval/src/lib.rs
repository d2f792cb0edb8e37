//! `unclip eval`: scores a pipeline on held-out captions of the shapes world.
//!
//! - attribute accuracy read off the pixels (object colour, shape, position) by the tested
//!   scorer of [`shapes`], on held-out single-object captions;
//! - attribute binding on two-object captions, and accuracy on the (colour, shape) combinations
//!   held out of training (`holdout/` split);
//! - CLIP score (mean cosine between the frozen CLIP's embeddings of each image and its
//!   caption) and CMMD (MMD² with a Gaussian kernel between CLIP embeddings of generated and
//!   real images of the same captions);
//! - a guidance sweep: decoder guidance × captions × samples, for unCLIP (prior → decoder) and
//!   for the same decoder fed the caption's text embedding in place of an image embedding (the
//!   paper's GLIDE-style ablation): fidelity (colour accuracy, CLIP score) against diversity
//!   (mean pairwise distance among one caption's samples).
//!
//! Writes `report.md`, `report.json` and PNGs into the output folder. By job: [`shapes`] reads
//! attributes off pixels and scores them against captions; `held` reads the held-out samples;
//! `generate` samples and scores sets of captions; `metrics` holds the model-free numbers,
//! `diagnostics` what limits the pictures, `plots` and `report` what is written.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): **eval**, on top
//! of infer.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use image::RgbImage;
use serde::Serialize;
use unclip_data_tools::shapes::{Color, Shape};
use unclip_infer::{
    pipeline_error, save_png, GenerateOptions, InferError, Pipeline, StageOverrides,
};

mod diagnostics;
mod generate;
mod held;
pub mod metrics;
mod plots;
mod report;
pub mod shapes;

use generate::{clip_scores, generate, score_set};
use held::{by_color, read_split, Held};
use metrics::{diversity, frac, mean};
use plots::{pairs_grid, sweep_plot};
use shapes::score;

pub use metrics::{cmmd, CMMD_SIGMA};

/// What to evaluate and how much.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The shapes-world folder (`val/` and `holdout/` shards).
    pub data: PathBuf,
    pub out: PathBuf,
    /// Single-object held-out captions scored at the default guidance.
    pub captions: usize,
    /// Two-object captions (binding).
    pub pairs: usize,
    /// Captions of held-out combinations.
    pub holdout: usize,
    /// Decoder guidance scales of the sweep.
    pub sweep_scales: Vec<f64>,
    /// Held-out images per palette colour for the decoder-follows-the-embedding check (≥ 1).
    pub per_color: usize,
    /// Captions × samples per caption of the sweep.
    pub sweep_captions: usize,
    pub sweep_samples: usize,
    pub seed: u64,
    pub progress: bool,
}

impl EvalOptions {
    /// The full evaluation ({1, 2, 4, 8} × 16 captions × 4 samples) or a small one.
    pub fn new(data: PathBuf, out: PathBuf, quick: bool) -> Self {
        let (captions, pairs, holdout, scales, sc, ss) = if quick {
            (8, 4, 4, vec![1.0, 4.0], 2, 2)
        } else {
            (48, 24, 24, vec![1.0, 2.0, 4.0, 8.0], 16, 4)
        };
        Self {
            data,
            out,
            captions,
            pairs,
            holdout,
            sweep_scales: scales,
            per_color: 2,
            sweep_captions: sc,
            sweep_samples: ss,
            seed: 0,
            progress: true,
        }
    }
}

/// Accuracies of one set of generated images.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetScores {
    pub images: usize,
    pub color: f64,
    pub shape: f64,
    /// Over captions that name a position.
    pub position: Option<f64>,
    /// Two-object captions: both (colour, shape) pairs on distinct objects.
    pub binding: Option<f64>,
    /// Single-object captions: shape accuracy split by the size class of the real image's
    /// object (read off the real image by the scorer).
    pub shape_by_size: Option<ShapeBySize>,
    pub clip_score: f64,
    pub cmmd: f64,
}

/// Shape accuracy of single-object captions by the real object's size class (`None` where no
/// real image has an object of that class).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShapeBySize {
    pub small_images: usize,
    pub small: Option<f64>,
    pub large_images: usize,
    pub large: Option<f64>,
}

/// The frozen CLIP as a zero-shot classifier of real held-out images: each image's caption with
/// its colour word replaced by every palette colour (its shape word by every shape), and how
/// often the true word gives the caption embedding nearest the image embedding. High accuracy
/// means the embeddings carry the attribute the decoder is asked to draw.
#[derive(Debug, Clone, Serialize)]
pub struct ClipZeroShot {
    pub images: usize,
    pub color: f64,
    pub shape: f64,
}

/// One point of the guidance sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    pub method: String,
    pub guidance: f64,
    pub color: f64,
    pub shape: f64,
    pub clip_score: f64,
    pub diversity: f64,
}

/// The decoder alone, conditioned on CLIP image embeddings of real held-out images (and their
/// captions): how often the object comes out in the real image's colour (and shape: what the
/// decoder draws from a true image embedding, without the prior in between).
#[derive(Debug, Clone, Serialize)]
pub struct DecoderColors {
    pub images: usize,
    /// Colours covered (one held-out image per palette colour found, up to `per_color`).
    pub colors: usize,
    pub guidance_1: f64,
    pub guidance_3: f64,
    /// Guidance 3 with each image embedding replaced by one of another colour (the caption
    /// kept): the colour should follow the embedding, so this should be low.
    pub shuffled: f64,
    /// Shape accuracy of the guidance-1 and guidance-3 samples.
    pub shape_guidance_1: f64,
    pub shape_guidance_3: f64,
}

/// Everything `unclip eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub pipeline: PathBuf,
    pub decoder_guidance: f64,
    pub chance_color: f64,
    pub chance_shape: f64,
    pub single: SetScores,
    pub pairs: SetScores,
    pub holdout: SetScores,
    pub decoder_colors: DecoderColors,
    pub clip_zero_shot: ClipZeroShot,
    pub sweep: Vec<SweepPoint>,
    pub files: Vec<PathBuf>,
}

/// Runs the evaluation of `p` and writes the report.
pub fn evaluate<B: Backend + Sync>(
    p: &Pipeline<B>,
    o: &EvalOptions,
) -> Result<EvalReport, InferError> {
    let val = o.data.join("val");
    if o.captions == 0 {
        return Err(pipeline_error(
            &val,
            "--captions must be at least 1: the evaluation scores single-object captions \
             (--pairs 0 and --holdout 0 skip those parts)",
        ));
    }
    // Enough single-object captions for every palette colour to appear.
    let single = read_split(&val, o.captions.max(o.sweep_captions).max(256), |s| {
        s.objects.len() == 1
    })?;
    let pairs = read_split(&val, o.pairs, |s| s.objects.len() == 2)?;
    let holdout = read_split(&o.data.join("holdout"), o.holdout, |s| s.objects.len() == 1)?;
    if single.is_empty() {
        return Err(pipeline_error(
            &val,
            "no single-object shapes-world captions found (is this a `unclip data synth` folder?)",
        ));
    }
    // Colour, shape and position are decided by the decoder: score its images (the
    // upsamplers' quality is measured against bicubic in their own validation).
    let base = GenerateOptions {
        seed: o.seed,
        progress: false,
        max_upsamplers: Some(0),
        ..Default::default()
    };
    let guidance = p.config.decoder.sampling.guidance_scale;
    let bar = unclip_infer::bar(o.progress, (4 + 2 * o.sweep_scales.len()) as u64, "eval");
    let mut files = Vec::new();
    let mut run_set = |held: &[Held], name: &str| -> Result<SetScores, InferError> {
        if held.is_empty() {
            bar.inc(1);
            return Ok(SetScores::default());
        }
        let held = &held[..held.len().min(if name == "single" {
            o.captions
        } else {
            usize::MAX
        })];
        let captions: Vec<String> = held.iter().map(|h| h.caption.clone()).collect();
        let images = generate(p, &captions, &base, false)?;
        let s = score_set(p, held, &images)?;
        let real: Vec<RgbImage> = held.iter().map(|h| h.image.clone()).collect();
        let path = o.out.join(format!("{name}.png"));
        save_png(&pairs_grid(&real, &images, 4), &path)?;
        files.push(path);
        bar.inc(1);
        Ok(s)
    };
    let single_scores = run_set(&single, "single")?;
    let pair_scores = run_set(&pairs, "pairs")?;
    let holdout_scores = run_set(&holdout, "holdout")?;
    let colour_set = by_color(&single, o.per_color);
    let decoder_colors = diagnostics::decoder_colors(p, &colour_set, o.seed)?;
    let clip_zero_shot = diagnostics::clip_zero_shot(p, &single)?;
    bar.inc(1);
    let mut sweep = Vec::new();
    let sweep_held = &single[..single.len().min(o.sweep_captions)];
    let k = o.sweep_samples.max(1);
    let captions: Vec<String> = sweep_held
        .iter()
        .flat_map(|h| std::iter::repeat_n(h.caption.clone(), k))
        .collect();
    let held_rep: Vec<Held> = sweep_held
        .iter()
        .flat_map(|h| std::iter::repeat_n(h.clone(), k))
        .collect();
    for (method, text_as_image) in [("unclip", false), ("text_embedding", true)] {
        for &g in &o.sweep_scales {
            // The decoder's guidance is what varies: scored at the decoder's resolution.
            let opts = GenerateOptions {
                decoder: StageOverrides {
                    guidance: Some(g),
                    ..Default::default()
                },
                ..base.clone()
            };
            let images = generate(p, &captions, &opts, text_as_image)?;
            let scores: Vec<_> = held_rep
                .iter()
                .zip(&images)
                .map(|(h, img)| score(img, &h.spec))
                .collect();
            let div = mean(images.chunks(k).map(diversity));
            sweep.push(SweepPoint {
                method: method.into(),
                guidance: g,
                color: frac(scores.iter().map(|s| s.color)),
                shape: frac(scores.iter().map(|s| s.shape)),
                clip_score: mean(clip_scores(p, &images, &captions)?.into_iter()),
                diversity: div,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let plot = o.out.join("guidance_sweep.png");
    save_png(&sweep_plot(&sweep), &plot)?;
    files.push(plot);
    let report = EvalReport {
        pipeline: p.dir.clone(),
        decoder_guidance: guidance,
        chance_color: 1.0 / Color::ALL.len() as f64,
        chance_shape: 1.0 / Shape::ALL.len() as f64,
        single: single_scores,
        pairs: pair_scores,
        holdout: holdout_scores,
        decoder_colors,
        clip_zero_shot,
        sweep,
        files,
    };
    report::write_report(&report, &o.out)?;
    Ok(report)
}
