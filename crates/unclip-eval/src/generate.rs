//! Generating and scoring sets of images with a pipeline: batches of captions side by side on
//! rayon's threads, each image scored by the shapes-world scorer, CLIP score and CMMD.

use burn::tensor::backend::Backend;
use image::RgbImage;
use rayon::prelude::*;
use unclip_infer::{values, GenerateOptions, InferError, Pipeline};

use crate::held::Held;
use crate::metrics::{cmmd, frac, mean, shape_by_size, CMMD_SIGMA};
use crate::shapes::score;
use crate::SetScores;

/// Captions generated per batch.
pub(crate) const EVAL_BATCH: usize = 32;

/// Row-wise cosine between the CLIP embeddings of `images` and of `captions`.
pub(crate) fn clip_scores<B: Backend>(
    p: &Pipeline<B>,
    images: &[RgbImage],
    captions: &[String],
) -> Result<Vec<f64>, InferError> {
    let zi = values(p.embed_images(images)?)?;
    let zt = values(p.encode_text(captions)?.embed)?;
    let d = p.dims.embed_dim;
    Ok(zi
        .chunks(d)
        .zip(zt.chunks(d))
        .map(|(a, b)| a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum())
        .collect())
}

pub(crate) fn clip_embeddings<B: Backend>(
    p: &Pipeline<B>,
    images: &[RgbImage],
) -> Result<Vec<Vec<f32>>, InferError> {
    let z = values(p.embed_images(images)?)?;
    Ok(z.chunks(p.dims.embed_dim).map(<[f32]>::to_vec).collect())
}

/// Scores `images` generated for `held` (one per caption, in order).
pub(crate) fn score_set<B: Backend>(
    p: &Pipeline<B>,
    held: &[Held],
    images: &[RgbImage],
) -> Result<SetScores, InferError> {
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
        clip_score: mean(clip_scores(p, images, &captions)?.into_iter()),
        cmmd: cmmd(
            &clip_embeddings(p, images)?,
            &clip_embeddings(p, &real)?,
            CMMD_SIGMA,
        ),
    })
}

/// Generates in batches of [`EVAL_BATCH`] captions, one batch per rayon thread at a time
/// (memory stays bounded): much of a sampling step is single-threaded tensor work, so
/// batches side by side keep every core busy. Each batch's noise is keyed by its index, so
/// the images, returned in caption order, do not depend on the scheduling.
pub(crate) fn generate<B: Backend + Sync>(
    p: &Pipeline<B>,
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
            let z = p.encode_text(chunk)?.embed;
            p.decode(z, Some(chunk), &o)?
        } else {
            p.text_to_images(chunk, &o)?
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
