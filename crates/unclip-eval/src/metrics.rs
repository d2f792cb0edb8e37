//! The numbers of the evaluation that need no model: accuracies, CMMD between embedding
//! sets, diversity among one caption's samples, shape accuracy split by object size.

use image::RgbImage;
use unclip_data_tools::shapes::SizeClass;

use crate::held::Held;
use crate::shapes::{read_objects, ImageScore};
use crate::ShapeBySize;

/// CMMD's kernel bandwidth on unit CLIP embeddings (the CMMD paper's σ = 10 is for embeddings
/// scaled ×1000... we use unit vectors, where 0.5 keeps the kernel informative).
pub const CMMD_SIGMA: f64 = 0.5;
pub(crate) fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

pub(crate) fn frac(v: impl Iterator<Item = bool>) -> f64 {
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

/// Splits `scores` (one per `held`, single-object captions only) by the size class of the
/// object the scorer reads off each real image; `None` when `held` has a two-object caption.
pub(crate) fn shape_by_size(held: &[Held], scores: &[ImageScore]) -> Option<ShapeBySize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::parse_caption;
    use unclip_data_tools::shapes::{Color, Shape};

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
}
