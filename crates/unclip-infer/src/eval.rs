//! `unclip eval`: scores a pipeline on held-out captions of the shapes world.
//!
//! - attribute accuracy read off the pixels (object colour, shape, position) by the tested
//!   scorer of `unclip_data_tools::shapes::score`, on held-out single-object captions;
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
//! Writes `report.md`, `report.json` and PNGs into the output folder.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;
use unclip_data_tools::shapes::score::{
    parse_caption, read_objects, score, CaptionSpec, ImageScore,
};
use unclip_data_tools::shapes::{Color, Shape, SizeClass};

use crate::{pipeline_error, save_png, GenerateOptions, InferError, Pipeline, StageOverrides};

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

/// A held-out sample: caption, its parsed attributes and the real image.
#[derive(Clone)]
struct Held {
    caption: String,
    spec: CaptionSpec,
    image: RgbImage,
}

/// The samples of every shard in `dir` (sorted), in order, up to `limit` matching `keep`
/// (none for a limit of 0: that part of the evaluation is skipped).
fn read_split(
    dir: &Path,
    limit: usize,
    keep: impl Fn(&CaptionSpec) -> bool,
) -> Result<Vec<Held>, InferError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| pipeline_error(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    shards.sort();
    let mut out = Vec::new();
    for shard in shards {
        let members = unclip_data_tools::shard_writer::read_shard(&shard)
            .map_err(|e| pipeline_error(&shard, e))?;
        let mut captions = std::collections::HashMap::new();
        let mut images = Vec::new();
        for (name, bytes) in members {
            let (key, ext) = name.rsplit_once('.').unwrap_or((&name, ""));
            match ext {
                "txt" => {
                    captions.insert(
                        key.to_owned(),
                        String::from_utf8_lossy(&bytes).trim().to_owned(),
                    );
                }
                "png" | "jpg" | "jpeg" | "webp" => images.push((key.to_owned(), bytes)),
                _ => {}
            }
        }
        for (key, bytes) in images {
            let Some(caption) = captions.get(&key) else {
                continue;
            };
            let Some(spec) = parse_caption(caption) else {
                continue;
            };
            if !keep(&spec) {
                continue;
            }
            let Ok(img) = image::load_from_memory(&bytes) else {
                continue;
            };
            out.push(Held {
                caption: caption.clone(),
                spec,
                image: img.to_rgb8(),
            });
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
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

/// Splits `scores` (one per `held`, single-object captions only) by the size class of the
/// object the scorer reads off each real image; `None` when `held` has a two-object caption.
fn shape_by_size(held: &[Held], scores: &[ImageScore]) -> Option<ShapeBySize> {
    if held.iter().any(|h| h.spec.objects.len() != 1) {
        return None;
    }
    let sizes: Vec<Option<SizeClass>> = held
        .iter()
        .map(|h| read_objects(&h.image).first().map(|o| o.size))
        .collect();
    let of = |class: SizeClass| {
        let hits: Vec<bool> = sizes
            .iter()
            .zip(scores)
            .filter(|(s, _)| **s == Some(class))
            .map(|(_, sc)| sc.shape)
            .collect();
        let n = hits.len();
        (n, (n > 0).then(|| frac(hits.into_iter())))
    };
    let ((small_images, small), (large_images, large)) =
        (of(SizeClass::Small), of(SizeClass::Large));
    Some(ShapeBySize {
        small_images,
        small,
        large_images,
        large,
    })
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

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

fn frac(v: impl Iterator<Item = bool>) -> f64 {
    mean(v.map(|b| b as u8 as f64))
}

/// MMD² (the biased V-statistic: all pairs, so identical sets give exactly 0) with a Gaussian
/// kernel of bandwidth `sigma` between two sets of vectors, ×1000 as CMMD reports it.
pub fn cmmd(x: &[Vec<f32>], y: &[Vec<f32>], sigma: f64) -> f64 {
    let k = |a: &[f32], b: &[f32]| {
        let d: f64 = a
            .iter()
            .zip(b)
            .map(|(p, q)| ((*p - *q) as f64).powi(2))
            .sum();
        (-d / (2.0 * sigma * sigma)).exp()
    };
    if x.is_empty() || y.is_empty() {
        return f64::NAN;
    }
    let m = |s: &[Vec<f32>], t: &[Vec<f32>]| {
        mean(s.iter().flat_map(|a| t.iter().map(move |b| k(a, b))))
    };
    1000.0 * (m(x, x) + m(y, y) - 2.0 * m(x, y))
}

/// Mean pairwise RMS pixel distance (on [0, 1]) among `images`.
pub fn diversity(images: &[RgbImage]) -> f64 {
    let mut d = Vec::new();
    for i in 0..images.len() {
        for j in i + 1..images.len() {
            let (a, b) = (images[i].as_raw(), images[j].as_raw());
            let mse = mean(
                a.iter()
                    .zip(b)
                    .map(|(p, q)| ((*p as f64 - *q as f64) / 255.0).powi(2)),
            );
            d.push(mse.sqrt());
        }
    }
    mean(d.into_iter())
}

impl<B: AutodiffBackend> Pipeline<B> {
    /// Row-wise cosine between the CLIP embeddings of `images` and of `captions`.
    fn clip_scores(
        &self,
        images: &[RgbImage],
        captions: &[String],
    ) -> Result<Vec<f64>, InferError> {
        let zi = crate::values(self.embed_images(images)?)?;
        let zt = crate::values(self.encode_text(captions)?.embed)?;
        let d = self.dims.embed_dim;
        Ok(zi
            .chunks(d)
            .zip(zt.chunks(d))
            .map(|(a, b)| a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum())
            .collect())
    }

    fn clip_embeddings(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, InferError> {
        let z = crate::values(self.embed_images(images)?)?;
        Ok(z.chunks(self.dims.embed_dim).map(<[f32]>::to_vec).collect())
    }

    /// Scores `images` generated for `held` (one per caption, in order).
    fn score_set(&self, held: &[Held], images: &[RgbImage]) -> Result<SetScores, InferError> {
        let scores: Vec<_> = held
            .iter()
            .zip(images)
            .map(|(h, img)| score(img, &h.spec))
            .collect();
        let captions: Vec<String> = held.iter().map(|h| h.caption.clone()).collect();
        let real: Vec<RgbImage> = held.iter().map(|h| h.image.clone()).collect();
        let positions: Vec<bool> = scores.iter().filter_map(|s| s.position).collect();
        let binding: Vec<bool> = scores.iter().filter_map(|s| s.binding).collect();
        Ok(SetScores {
            images: images.len(),
            color: frac(scores.iter().map(|s| s.color)),
            shape: frac(scores.iter().map(|s| s.shape)),
            position: (!positions.is_empty()).then(|| frac(positions.into_iter())),
            binding: (!binding.is_empty()).then(|| frac(binding.into_iter())),
            shape_by_size: shape_by_size(held, &scores),
            clip_score: mean(self.clip_scores(images, &captions)?.into_iter()),
            cmmd: cmmd(
                &self.clip_embeddings(images)?,
                &self.clip_embeddings(&real)?,
                CMMD_SIGMA,
            ),
        })
    }

    /// Generates in batches of [`EVAL_BATCH`] captions, one batch per rayon thread at a time
    /// (memory stays bounded): much of a sampling step is single-threaded tensor work, so
    /// batches side by side keep every core busy. Each batch's noise is keyed by its index, so
    /// the images, returned in caption order, do not depend on the scheduling.
    fn generate(
        &self,
        captions: &[String],
        opts: &GenerateOptions,
        text_as_image: bool,
    ) -> Result<Vec<RgbImage>, InferError> {
        let one = |i: usize, chunk: &[String]| -> Result<Vec<RgbImage>, InferError> {
            let o = GenerateOptions {
                seed: opts.seed.wrapping_add(i as u64),
                ..opts.clone()
            };
            let g = if text_as_image {
                let z = self.encode_text(chunk)?.embed;
                self.decode(z, Some(chunk), &o)?
            } else {
                self.text_to_images(chunk, &o)?
            };
            Ok(g.images().to_vec())
        };
        let batches = captions
            .par_chunks(EVAL_BATCH)
            .enumerate()
            .map(|(i, chunk)| one(i, chunk))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(batches.into_iter().flatten().collect())
    }
}

/// Held-out single-object images, up to `per_color` of each palette colour, grouped by colour.
fn by_color(single: &[Held], per_color: usize) -> Vec<Held> {
    let mut out = Vec::new();
    for c in Color::ALL {
        out.extend(
            single
                .iter()
                .filter(|h| h.spec.objects[0].color == c)
                .take(per_color)
                .cloned(),
        );
    }
    out
}

fn decoder_colors<B: AutodiffBackend>(
    p: &Pipeline<B>,
    held: &[Held],
    seed: u64,
) -> Result<DecoderColors, InferError> {
    let colors = held
        .iter()
        .map(|h| h.spec.objects[0].color)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let captions: Vec<String> = held.iter().map(|h| h.caption.clone()).collect();
    let real: Vec<RgbImage> = held.iter().map(|h| h.image.clone()).collect();
    let z = crate::values(p.embed_images(&real)?)?;
    let d = p.dims.embed_dim;
    let n = held.len();
    // Shuffle: each row takes the embedding of the first later image of another colour.
    let other: Vec<usize> = (0..n)
        .map(|i| {
            (1..n)
                .map(|k| (i + k) % n)
                .find(|&j| held[j].spec.objects[0].color != held[i].spec.objects[0].color)
                .unwrap_or(i)
        })
        .collect();
    let shuffled: Vec<f32> = other
        .iter()
        .flat_map(|&j| z[j * d..(j + 1) * d].to_vec())
        .collect();
    // (colour, shape) accuracy of the decoder's samples from `embeds` at guidance `g`.
    let accuracy = |embeds: Vec<f32>, g: f64| -> Result<(f64, f64), InferError> {
        let t = burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(embeds, [n, d]),
            &p.device,
        );
        let opts = GenerateOptions {
            seed,
            decoder: StageOverrides {
                guidance: Some(g),
                ..Default::default()
            },
            max_upsamplers: Some(0),
            ..Default::default()
        };
        let images = p.decode(t, Some(&captions), &opts)?;
        let scores: Vec<ImageScore> = held
            .iter()
            .zip(images.images())
            .map(|(h, img)| score(img, &h.spec))
            .collect();
        Ok((
            frac(scores.iter().map(|s| s.color)),
            frac(scores.iter().map(|s| s.shape)),
        ))
    };
    let (guidance_1, shape_guidance_1) = accuracy(z.clone(), 1.0)?;
    let (guidance_3, shape_guidance_3) = accuracy(z, 3.0)?;
    Ok(DecoderColors {
        images: n,
        colors,
        guidance_1,
        guidance_3,
        shuffled: accuracy(shuffled, 3.0)?.0,
        shape_guidance_1,
        shape_guidance_3,
    })
}

fn clip_zero_shot<B: AutodiffBackend>(
    p: &Pipeline<B>,
    held: &[Held],
) -> Result<ClipZeroShot, InferError> {
    let d = p.dims.embed_dim;
    let (mut color, mut shape) = (Vec::new(), Vec::new());
    for chunk in held.chunks(EVAL_BATCH) {
        let real: Vec<RgbImage> = chunk.iter().map(|h| h.image.clone()).collect();
        let zi = crate::values(p.embed_images(&real)?)?;
        for (h, a) in chunk.iter().zip(zi.chunks(d)) {
            let want = h.spec.objects[0];
            // Is the true word the nearest of its alternatives, the rest of the caption kept?
            let nearest = |word: &str, options: Vec<&str>| -> Result<bool, InferError> {
                let captions: Vec<String> = options
                    .iter()
                    .map(|o| h.caption.replacen(word, o, 1))
                    .collect();
                let zt = crate::values(p.encode_text(&captions)?.embed)?;
                let sim = |t: &[f32]| a.iter().zip(t).map(|(x, y)| x * y).sum::<f32>();
                let best = zt
                    .chunks(d)
                    .enumerate()
                    .max_by(|(_, x), (_, y)| sim(x).total_cmp(&sim(y)))
                    .map_or(0, |(k, _)| k);
                Ok(options[best] == word)
            };
            color.push(nearest(
                want.color.name(),
                Color::ALL.iter().map(|c| c.name()).collect(),
            )?);
            shape.push(nearest(
                want.shape.name(),
                Shape::ALL.iter().map(|s| s.name()).collect(),
            )?);
        }
    }
    Ok(ClipZeroShot {
        images: held.len(),
        color: frac(color.into_iter()),
        shape: frac(shape.into_iter()),
    })
}

/// CMMD's kernel bandwidth on unit CLIP embeddings (the CMMD paper's σ = 10 is for embeddings
/// scaled ×1000... we use unit vectors, where 0.5 keeps the kernel informative).
pub const CMMD_SIGMA: f64 = 0.5;
/// Captions generated per batch.
const EVAL_BATCH: usize = 32;

/// Side-by-side rows: real | generated, `cols` pairs per row.
fn pairs_grid(real: &[RgbImage], fake: &[RgbImage], cols: usize) -> RgbImage {
    let side = fake.first().map(|i| i.width()).unwrap_or(1);
    let resized: Vec<RgbImage> = real
        .iter()
        .map(|r| image::imageops::resize(r, side, side, image::imageops::FilterType::Triangle))
        .collect();
    let mut items = Vec::new();
    for (r, f) in resized.iter().zip(fake) {
        items.push(r.clone());
        items.push(f.clone());
    }
    crate::grid(&items, 2 * cols)
}

/// Diversity spacing of the sweep plot's vertical grid lines.
const PLOT_X_GRID: f64 = 0.05;

/// Right end of the sweep plot's diversity axis: 10 % beyond the most diverse point.
fn sweep_xmax(points: &[SweepPoint]) -> f64 {
    points
        .iter()
        .map(|p| p.diversity)
        .filter(|v| v.is_finite())
        .fold(1e-6, f64::max)
        * 1.1
}

/// The fidelity–diversity plot: x = diversity from 0 to [`sweep_xmax`] (grey lines every
/// [`PLOT_X_GRID`]), y = colour accuracy from 0 to 100 % (grey lines every 10 %); unCLIP in
/// blue, the text-embedding ablation in red, larger markers for larger guidance.
fn sweep_plot(points: &[SweepPoint]) -> RgbImage {
    let (w, h, m) = (480u32, 360u32, 40u32);
    let mut img = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let (x0, x1, y0, y1) = (m, w - m / 2, h - m, m / 2);
    let xmax = sweep_xmax(points);
    let to_px = |diversity: f64, color: f64| {
        let x = x0 as f64 + (diversity / xmax).clamp(0.0, 1.0) * (x1 - x0) as f64;
        let y = y0 as f64 - color.clamp(0.0, 1.0) * (y0 - y1) as f64;
        (x, y)
    };
    let grid = image::Rgb([225, 225, 225]);
    for k in 1..=10 {
        let (_, y) = to_px(0.0, k as f64 / 10.0);
        for x in x0..x1 {
            img.put_pixel(x, y as u32, grid);
        }
    }
    for k in 1..=(xmax / PLOT_X_GRID) as usize {
        let (x, _) = to_px(k as f64 * PLOT_X_GRID, 0.0);
        for y in y1..y0 {
            img.put_pixel(x as u32, y, grid);
        }
    }
    let axis = image::Rgb([0, 0, 0]);
    for x in x0..x1 {
        img.put_pixel(x, y0, axis);
    }
    for y in y1..y0 {
        img.put_pixel(x0, y, axis);
    }
    let to_px = |p: &SweepPoint| to_px(p.diversity, p.color);
    for method in ["unclip", "text_embedding"] {
        let color = if method == "unclip" {
            image::Rgb([30, 90, 220])
        } else {
            image::Rgb([220, 40, 40])
        };
        let pts: Vec<_> = points.iter().filter(|p| p.method == method).collect();
        for pair in pts.windows(2) {
            let (a, b) = (to_px(pair[0]), to_px(pair[1]));
            for s in 0..=200 {
                let t = s as f64 / 200.0;
                let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
                if x >= 0.0 && y >= 0.0 && (x as u32) < w && (y as u32) < h {
                    img.put_pixel(x as u32, y as u32, color);
                }
            }
        }
        for p in pts {
            let (cx, cy) = to_px(p);
            let r = 2.0 + p.guidance.log2().max(0.0) * 1.5;
            let ri = r.ceil() as i64;
            for dy in -ri..=ri {
                for dx in -ri..=ri {
                    if ((dx * dx + dy * dy) as f64) <= r * r {
                        let (x, y) = (cx as i64 + dx, cy as i64 + dy);
                        if x >= 0 && y >= 0 && (x as u32) < w && (y as u32) < h {
                            img.put_pixel(x as u32, y as u32, color);
                        }
                    }
                }
            }
        }
    }
    img
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1} %", 100.0 * v)
    } else {
        "–".into()
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or("–".into(), pct)
}

/// Runs the evaluation of `p` and writes the report.
pub fn evaluate<B: AutodiffBackend>(
    p: &Pipeline<B>,
    o: &EvalOptions,
) -> Result<EvalReport, InferError> {
    let val = o.data.join("val");
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
    let bar = crate::bar(o.progress, (4 + 2 * o.sweep_scales.len()) as u64, "eval");
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
        let images = p.generate(&captions, &base, false)?;
        let s = p.score_set(held, &images)?;
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
    let decoder_colors = decoder_colors(p, &colour_set, o.seed)?;
    let clip_zero_shot = clip_zero_shot(p, &single)?;
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
            let images = p.generate(&captions, &opts, text_as_image)?;
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
                clip_score: mean(p.clip_scores(&images, &captions)?.into_iter()),
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
    write_report(&report, &o.out)?;
    Ok(report)
}

fn write_report(r: &EvalReport, out: &Path) -> Result<(), InferError> {
    let json = serde_json::to_string_pretty(r).unwrap_or_default() + "\n";
    let path = out.join("report.json");
    unclip_fs::write_atomic(&path, json.as_bytes()).map_err(|e| pipeline_error(&path, e))?;
    let mut md = String::new();
    md.push_str("# unclip evaluation\n\n");
    md.push_str(&format!(
        "Pipeline `{}`; decoder guidance {} (pipeline default); the decoder's images (before \
         the upsamplers, whose quality is measured against bicubic upsampling in their own \
         validation) scored by the shapes-world pixel scorer. Chance: colour {}, shape {}.\n\n",
        r.pipeline.display(),
        r.decoder_guidance,
        pct(r.chance_color),
        pct(r.chance_shape)
    ));
    md.push_str("| set | images | colour | shape | position | binding | CLIP score | CMMD |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for (name, s) in [
        ("held-out single-object captions", &r.single),
        ("two-object captions", &r.pairs),
        ("held-out colour–shape combinations", &r.holdout),
    ] {
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {:.3} | {:.2} |\n",
            s.images,
            pct(s.color),
            pct(s.shape),
            opt_pct(s.position),
            opt_pct(s.binding),
            s.clip_score,
            s.cmmd
        ));
    }
    md.push_str(
        "\nColour/shape of two-object captions: both named colours (shapes) on two distinct \
         objects; binding: both (colour, shape) pairs on distinct objects. CLIP score: mean \
         cosine of image and caption embeddings (frozen CLIP). CMMD: MMD² ×1000 between CLIP \
         embeddings of generated and real images (Gaussian kernel, σ = 0.5).\n\n",
    );
    if let Some(b) = &r.single.shape_by_size {
        md.push_str(&format!(
            "Shape accuracy on held-out single-object captions by the size of the real image's \
             object: small {} ({} images), large {} ({} images).\n\n",
            opt_pct(b.small),
            b.small_images,
            opt_pct(b.large),
            b.large_images
        ));
    }
    md.push_str("Grids (real | generated): `single.png`, `pairs.png`, `holdout.png`.\n\n");
    let dc = &r.decoder_colors;
    md.push_str(&format!(
        "## The decoder follows the image embedding\n\nThe decoder alone, conditioned on the CLIP \
         embeddings of {} real held-out images ({} colours) and their captions: the object has \
         the real image's colour in {} of the samples at guidance 1, {} at guidance 3, and {} \
         at guidance 3 when each embedding is swapped for one of another colour. The object \
         has the real image's shape in {} at guidance 1 and {} at guidance 3: what the decoder \
         draws from a true image embedding, with no prior in between.\n\n",
        dc.images,
        dc.colors,
        pct(dc.guidance_1),
        pct(dc.guidance_3),
        pct(dc.shuffled),
        pct(dc.shape_guidance_1),
        pct(dc.shape_guidance_3)
    ));
    let zs = &r.clip_zero_shot;
    md.push_str(&format!(
        "The frozen CLIP as a zero-shot classifier of {} real held-out single-object images \
         (each image's caption with its colour word replaced by every palette colour, or its \
         shape word by every shape; right when the true word's caption is nearest the image \
         embedding): colour {}, shape {} — how much of each attribute the embeddings \
         carry.\n\n",
        zs.images,
        pct(zs.color),
        pct(zs.shape)
    ));
    md.push_str("## Guidance sweep\n\n![sweep](guidance_sweep.png)\n\n");
    md.push_str(
        "x: diversity (mean pairwise RMS pixel distance \
         among one caption's samples); y: colour accuracy; blue: unCLIP (prior → decoder), red: the decoder fed the text embedding in \
         place of an image embedding; larger markers = larger guidance.\n\n",
    );
    md.push_str(&format!(
        "Axes: colour accuracy from 0 to 100 % (grey lines every 10 %); diversity from 0 to \
         {:.3} (grey lines every {PLOT_X_GRID}).\n\n",
        sweep_xmax(&r.sweep)
    ));
    md.push_str("| method | guidance | colour | shape | CLIP score | diversity |\n|---|---|---|---|---|---|\n");
    for s in &r.sweep {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} |\n",
            s.method,
            s.guidance,
            pct(s.color),
            pct(s.shape),
            s.clip_score,
            s.diversity
        ));
    }
    let path = out.join("report.md");
    unclip_fs::write_atomic(&path, md.as_bytes()).map_err(|e| pipeline_error(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmmd_is_zero_for_identical_sets_and_grows_with_a_shift() {
        let a: Vec<Vec<f32>> = (0..8).map(|i| vec![i as f32 * 0.1, 1.0]).collect();
        assert!(cmmd(&a, &a, 0.5).abs() < 1e-9);
        let b: Vec<Vec<f32>> = a.iter().map(|v| vec![v[0] + 0.5, v[1]]).collect();
        let c: Vec<Vec<f32>> = a.iter().map(|v| vec![v[0] + 1.0, v[1]]).collect();
        let (ab, ac) = (cmmd(&a, &b, 0.5), cmmd(&a, &c, 0.5));
        assert!(ab > 0.0 && ac > ab, "{ab} {ac}");
    }

    #[test]
    fn diversity_is_zero_for_copies() {
        let img = RgbImage::from_pixel(4, 4, image::Rgb([10, 20, 30]));
        assert_eq!(diversity(&[img.clone(), img.clone()]), 0.0);
        let other = RgbImage::from_pixel(4, 4, image::Rgb([255, 20, 30]));
        assert!(diversity(&[img, other]) > 0.5);
    }

    #[test]
    fn read_split_takes_up_to_its_limit_and_none_for_zero() {
        let dir = tempfile::tempdir().unwrap();
        let png = |c: u8| {
            let mut bytes = Vec::new();
            RgbImage::from_pixel(8, 8, image::Rgb([c, c, c]))
                .write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Png,
                )
                .unwrap();
            bytes
        };
        let members: Vec<(String, Vec<u8>)> = (0..3u8)
            .flat_map(|i| {
                [
                    (format!("{i:03}.txt"), b"a red square".to_vec()),
                    (format!("{i:03}.png"), png(i)),
                ]
            })
            .collect();
        unclip_data_tools::shard_writer::write_shard(&dir.path().join("00000.tar"), &members)
            .unwrap();
        let n = |limit: usize| read_split(dir.path(), limit, |_| true).unwrap().len();
        assert_eq!((n(0), n(1), n(2), n(10)), (0, 1, 2, 3));
        assert_eq!(
            read_split(dir.path(), 10, |s| s.objects.len() == 2)
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn shape_by_size_splits_by_the_real_objects_size() {
        use unclip_data_tools::shapes::render::render_scene;
        use unclip_data_tools::shapes::{Position, Scene, SceneObject};
        let held = |size: SizeClass, d: f64| {
            let scene = Scene {
                size: 64,
                background_rgb: [60, 60, 60],
                objects: vec![SceneObject {
                    shape: Shape::Square,
                    color: Color::Red,
                    color_rgb: Color::Red.rgb(),
                    size,
                    size_px: d,
                    center_x: 32.0,
                    center_y: 32.0,
                    position: Position::Center,
                }],
                relation: None,
            };
            Held {
                caption: "a red square".into(),
                spec: parse_caption("a red square").unwrap(),
                image: render_scene(&scene, None),
            }
        };
        let (small, large) = (held(SizeClass::Small, 13.0), held(SizeClass::Large, 27.0));
        let hit = |shape: bool| ImageScore {
            shape,
            ..ImageScore::default()
        };
        let set = [small.clone(), large.clone(), large.clone(), small];
        let scores = [hit(true), hit(false), hit(true), hit(true)];
        let b = shape_by_size(&set, &scores).unwrap();
        assert_eq!((b.small_images, b.small), (2, Some(1.0)));
        assert_eq!((b.large_images, b.large), (2, Some(0.5)));
        let b = shape_by_size(&[large], &[hit(true)]).unwrap();
        assert_eq!((b.small_images, b.small, b.large), (0, None, Some(1.0)));
        let mut pair = held(SizeClass::Large, 27.0);
        pair.spec = parse_caption("a red square above a blue circle").unwrap();
        assert!(shape_by_size(&[pair], &[hit(true)]).is_none());
    }

    #[test]
    fn sweep_plot_puts_points_on_its_grid() {
        let point = |method: &str, guidance: f64, color: f64, diversity: f64| SweepPoint {
            method: method.into(),
            guidance,
            color,
            shape: 0.0,
            clip_score: 0.0,
            diversity,
        };
        // xmax = 0.22: the plot spans 0..0.22 over x 40..460 and 0..100 % over y 320..20.
        let img = sweep_plot(&[
            point("unclip", 1.0, 0.5, 0.1),
            point("text_embedding", 8.0, 0.8, 0.2),
        ]);
        let px = |d: f64, c: f64| {
            let x = 40.0 + d / 0.22 * 420.0;
            let y = 320.0 - c * 300.0;
            *img.get_pixel(x as u32, y as u32)
        };
        assert_eq!(px(0.1, 0.5), image::Rgb([30, 90, 220]));
        assert_eq!(px(0.2, 0.8), image::Rgb([220, 40, 40]));
        let grey = image::Rgb([225, 225, 225]);
        assert_eq!(px(0.02, 0.3), grey, "10 % line");
        assert_eq!(px(0.05, 0.95), grey, "0.05 diversity line");
        assert_eq!(px(0.03, 0.95), image::Rgb([255, 255, 255]));
        assert_eq!(*img.get_pixel(40, 200), image::Rgb([0, 0, 0]), "y axis");
    }
}
