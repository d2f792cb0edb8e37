//! JPEG decoding with libjpeg-turbo (as built by the `mozjpeg` crate; its decoder is
//! libjpeg-turbo's, the one Pillow uses, with its SIMD code when `nasm` was found at build time),
//! whole or at a reduced scale in the DCT domain (libjpeg's `scale_num / scale_denom`, what
//! Pillow's `draft` mode uses): an image decoded at 1/2, 1/4 or 1/8 of its side costs less than
//! a full decode, because the inverse DCT of each 8×8 block computes only 4×4, 2×2 or 1×1
//! outputs and colour conversion and chroma upsampling run on fewer pixels.
//!
//! libjpeg (mozjpeg's build of libjpeg-turbo) reports fatal errors by unwinding out of the C
//! code without running the panic hook; [`decode_reduced`] catches that and returns the message,
//! so a hostile file is an error, never a panic.

use image::RgbImage;
use mozjpeg::{ColorSpace, Decompress};

/// Reduction factors libjpeg decodes directly, largest first (1: whole).
const FACTORS: [u32; 4] = [8, 4, 2, 1];

/// The largest factor `k` in {8, 4, 2, 1} such that the image's shorter side divided by `k`
/// (rounded up, as libjpeg does) is still at least `min_short` (1 when none is).
pub fn reduction_for(width: u32, height: u32, min_short: u32) -> u32 {
    let short = width.min(height);
    FACTORS
        .into_iter()
        .find(|&k| short.div_ceil(k) >= min_short.max(1))
        .unwrap_or(1)
}

/// Decode a JPEG to RGB at 1/`factor` of its size (`factor` ∈ {1, 2, 4, 8}); the result is
/// `ceil(w / factor) × ceil(h / factor)`. `None` for colour spaces libjpeg does not convert to
/// RGB (CMYK, YCCK) and for any error, so the caller can fall back to another decoder.
pub fn decode(bytes: &[u8], factor: u32) -> Option<RgbImage> {
    if !FACTORS.contains(&factor) {
        return None;
    }
    let run = || -> std::io::Result<Option<RgbImage>> {
        let mut d = Decompress::new_mem(bytes)?;
        if !matches!(
            d.color_space(),
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_GRAYSCALE | ColorSpace::JCS_RGB
        ) {
            return Ok(None);
        }
        d.scale((8 / factor) as u8);
        let mut started = d.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<u8> = started.read_scanlines()?;
        Ok(RgbImage::from_raw(w, h, pixels))
    };
    // libjpeg's fatal errors unwind (without the panic hook) out of `run`.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(img)) => img,
        Ok(Err(_)) | Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb};

    fn jpeg(w: u32, h: u32, gray: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        if gray {
            let img = image::GrayImage::from_fn(w, h, |x, y| {
                image::Luma([((x * 7 + y * 3) % 256) as u8])
            });
            enc.write_image(img.as_raw(), w, h, image::ExtendedColorType::L8)
                .unwrap();
        } else {
            let img = RgbImage::from_fn(w, h, |x, y| {
                Rgb([
                    (x * 255 / w) as u8,
                    (y * 255 / h) as u8,
                    ((x + y) % 256) as u8,
                ])
            });
            enc.write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
                .unwrap();
        }
        out
    }

    #[test]
    fn factor_keeps_the_shorter_side() {
        assert_eq!(reduction_for(256, 256, 64), 4);
        assert_eq!(reduction_for(256, 256, 128), 2);
        assert_eq!(reduction_for(256, 256, 129), 1);
        assert_eq!(reduction_for(1024, 768, 64), 8);
        assert_eq!(reduction_for(300, 200, 64), 2); // 200/4 = 50 < 64
        assert_eq!(reduction_for(250, 250, 32), 8); // ceil(250 / 8) = 32
    }

    #[test]
    fn reduced_size_and_content_follow_the_full_image() {
        for gray in [false, true] {
            let bytes = jpeg(100, 60, gray);
            let full = image::load_from_memory(&bytes).unwrap().into_rgb8();
            let whole = decode(&bytes, 1).unwrap();
            let diff = whole.as_raw().iter().zip(full.as_raw());
            assert!(
                diff.map(|(a, b)| a.abs_diff(*b)).max().unwrap() <= 3,
                "gray {gray}"
            );
            for factor in [2, 4, 8] {
                let small = decode(&bytes, factor).unwrap();
                assert_eq!(
                    small.dimensions(),
                    (100u32.div_ceil(factor), 60u32.div_ceil(factor))
                );
                // Each reduced pixel is about the mean of its factor × factor block.
                let (x, y) = (3, 2);
                for c in 0..3 {
                    let mut sum = 0u32;
                    for dy in 0..factor {
                        for dx in 0..factor {
                            sum += full.get_pixel(x * factor + dx, y * factor + dy)[c] as u32;
                        }
                    }
                    let mean = sum as f32 / (factor * factor) as f32;
                    let got = small.get_pixel(x, y)[c] as f32;
                    assert!(
                        (got - mean).abs() <= 6.0,
                        "gray {gray} factor {factor}: {got} vs {mean}"
                    );
                }
            }
        }
    }

    #[test]
    fn broken_files_are_none_not_a_panic() {
        let good = jpeg(64, 64, false);
        assert!(decode(b"", 2).is_none());
        assert!(decode(b"not a jpeg", 2).is_none());
        assert!(decode(&[0xff, 0xd8, 0xff, 0xe0, 0, 0x10], 2).is_none());
        assert!(decode(&good[..100], 4).is_none()); // cut inside the header
        assert!(decode(&good, 3).is_none());
        // A damaged marker segment in the middle.
        let mut bad = good.clone();
        for b in &mut bad[20..60] {
            *b = 0xff;
        }
        let _ = decode(&bad, 2);
    }
}
