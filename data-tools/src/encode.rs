//! Encoding RGB pixels into the image members of a shard.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, RgbImage};
use serde::{Deserialize, Serialize};

/// The image format written into shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Lossless; the right choice for synthetic data whose pixels are checked exactly.
    Png,
    /// Baseline JPEG at `--quality` (img2dataset's default).
    Jpg,
}

impl ImageFormat {
    /// The member extension (`png`, `jpg`).
    pub fn ext(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpg => "jpg",
        }
    }
}

/// Encode `img`; `quality` (1–100) applies to JPEG only. Deterministic: the same pixels always
/// give the same bytes.
pub fn encode_rgb(
    img: &RgbImage,
    format: ImageFormat,
    quality: u8,
) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    match format {
        ImageFormat::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive)
                .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)?
        }
        ImageFormat::Jpg => JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
            .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_exactly_and_jpg_decodes() {
        let img = RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 77]));
        let png = encode_rgb(&img, ImageFormat::Png, 95).unwrap();
        assert_eq!(image::load_from_memory(&png).unwrap().to_rgb8(), img);
        let jpg = encode_rgb(&img, ImageFormat::Jpg, 95).unwrap();
        assert_eq!(&jpg[..2], &[0xFF, 0xD8]);
        assert_eq!(
            image::load_from_memory(&jpg)
                .unwrap()
                .to_rgb8()
                .dimensions(),
            (9, 7)
        );
    }
}
