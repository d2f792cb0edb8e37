//! img2dataset's resize modes, on top of `unclip-data`'s antialiased resize.
//!
//! Sizes and offsets follow img2dataset (albumentations underneath): the scaled side lengths are
//! `round(side * scale)` with Python's round-half-to-even, crops and pads are centred with the
//! odd pixel going to the bottom/right.

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};
use unclip_data::transform::resize_rgb;

/// How `pack` sizes images (img2dataset's `--resize_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Fit inside `image_size`² keeping the aspect ratio, then pad to a square with
    /// [`BORDER_RGB`].
    #[value(name = "border")]
    Border,
    /// Shorter side to `image_size`, aspect ratio kept (no crop).
    #[value(name = "keep_ratio")]
    KeepRatio,
    /// Shorter side to `image_size`, then the central `image_size`² square.
    #[value(name = "center_crop")]
    CenterCrop,
    /// Keep the original file's bytes untouched.
    #[value(name = "no")]
    No,
}

/// The padding colour of [`ResizeMode::Border`]: white, as in img2dataset.
pub const BORDER_RGB: [u8; 3] = [255, 255, 255];

/// `side * target / reference`, rounded half to even (Python's `round`).
fn scaled(side: u32, target: u32, reference: u32) -> u32 {
    let v = side as f64 * (target as f64 / reference as f64);
    (v.round_ties_even() as u32).max(1)
}

/// The image `mode` makes of `img` (`None` for [`ResizeMode::No`]: keep the original bytes).
pub fn apply(img: &RgbImage, mode: ResizeMode, size: u32) -> Option<RgbImage> {
    let (w, h) = img.dimensions();
    match mode {
        ResizeMode::No => None,
        ResizeMode::KeepRatio | ResizeMode::CenterCrop => {
            let short = w.min(h);
            let resized = resize_rgb(img, scaled(w, size, short), scaled(h, size, short));
            if mode == ResizeMode::KeepRatio {
                return Some(resized);
            }
            let (rw, rh) = resized.dimensions();
            let (cw, ch) = (size.min(rw), size.min(rh));
            let (x, y) = ((rw - cw) / 2, (rh - ch) / 2);
            Some(image::imageops::crop_imm(&resized, x, y, cw, ch).to_image())
        }
        ResizeMode::Border => {
            let long = w.max(h);
            let resized = resize_rgb(img, scaled(w, size, long), scaled(h, size, long));
            let (rw, rh) = resized.dimensions();
            let mut out = RgbImage::from_pixel(size.max(rw), size.max(rh), Rgb(BORDER_RGB));
            let (x, y) = ((out.width() - rw) / 2, (out.height() - rh) / 2);
            image::imageops::replace(&mut out, &resized, x as i64, y as i64);
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_img2dataset() {
        let img = RgbImage::from_pixel(100, 50, Rgb([10, 20, 30]));
        let dims = |mode| apply(&img, mode, 32).unwrap().dimensions();
        assert_eq!(dims(ResizeMode::KeepRatio), (64, 32));
        assert_eq!(dims(ResizeMode::CenterCrop), (32, 32));
        assert_eq!(dims(ResizeMode::Border), (32, 32));
        assert!(apply(&img, ResizeMode::No, 32).is_none());
        // 15 * 32/10 = 48; 25 * 32/10 = 80; 5 * 7/2 = 17.5 → 18 (half to even).
        assert_eq!(scaled(25, 32, 10), 80);
        assert_eq!(scaled(5, 7, 2), 18);
        assert_eq!(scaled(3, 3, 2), 4); // 4.5 → 4
    }

    #[test]
    fn border_pads_centred_with_white() {
        let img = RgbImage::from_pixel(40, 20, Rgb([200, 0, 0]));
        let out = apply(&img, ResizeMode::Border, 20).unwrap();
        // Resized to 20x10, padded 5 rows above and below.
        assert_eq!(out.get_pixel(10, 2).0, BORDER_RGB);
        assert_eq!(out.get_pixel(10, 17).0, BORDER_RGB);
        assert_eq!(out.get_pixel(10, 10).0, [200, 0, 0]);
        assert_eq!(out.get_pixel(0, 5).0, [200, 0, 0]);
        assert_eq!(out.get_pixel(0, 4).0, BORDER_RGB);
    }

    #[test]
    fn center_crop_takes_the_middle() {
        // Left third red, middle green, right third blue; 90x30 → shorter side 30 → crop 30x30.
        let img = RgbImage::from_fn(90, 30, |x, _| match x / 30 {
            0 => Rgb([255, 0, 0]),
            1 => Rgb([0, 255, 0]),
            _ => Rgb([0, 0, 255]),
        });
        let out = apply(&img, ResizeMode::CenterCrop, 30).unwrap();
        assert_eq!(out.dimensions(), (30, 30));
        assert!(out.pixels().all(|p| p.0 == [0, 255, 0]));
    }
}
