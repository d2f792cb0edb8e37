//! What limits the pictures: the decoder alone from real images' embeddings (does it follow
//! the embedding?), and the frozen CLIP as a zero-shot classifier (do the embeddings carry the
//! attribute?).

use burn::tensor::backend::Backend;
use image::RgbImage;
use unclip_data_tools::shapes::{Color, Shape};
use unclip_infer::{values, GenerateOptions, InferError, Pipeline, StageOverrides};

use crate::generate::EVAL_BATCH;
use crate::held::Held;
use crate::metrics::frac;
use crate::shapes::{score, ImageScore};
use crate::{ClipZeroShot, DecoderColors};

pub(crate) fn decoder_colors<B: Backend>(
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
    let z = values(p.embed_images(&real)?)?;
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

pub(crate) fn clip_zero_shot<B: Backend>(
    p: &Pipeline<B>,
    held: &[Held],
) -> Result<ClipZeroShot, InferError> {
    let d = p.dims.embed_dim;
    let (mut color, mut shape) = (Vec::new(), Vec::new());
    for chunk in held.chunks(EVAL_BATCH) {
        let real: Vec<RgbImage> = chunk.iter().map(|h| h.image.clone()).collect();
        let zi = values(p.embed_images(&real)?)?;
        for (h, a) in chunk.iter().zip(zi.chunks(d)) {
            let want = h.spec.objects[0];
            // Is the true word the nearest of its alternatives, the rest of the caption kept?
            let nearest = |word: &str, options: Vec<&str>| -> Result<bool, InferError> {
                let captions: Vec<String> = options
                    .iter()
                    .map(|o| h.caption.replacen(word, o, 1))
                    .collect();
                let zt = values(p.encode_text(&captions)?.embed)?;
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
