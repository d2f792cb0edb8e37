//! Image bytes → RGB pixels, and caption bytes → text.
//!
//! Decoding never panics on hostile input: the header is read first and images above a pixel
//! budget are refused before any allocation (decompression bombs), and alpha is composited on
//! white so every sample comes out as 8-bit RGB.

use image::{DynamicImage, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;

/// Pillow's default `MAX_IMAGE_PIXELS` × 2, the size at which it refuses to open an image.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Why an image could not be turned into pixels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported image extension `{0}`")]
    UnsupportedFormat(String),
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {limit}")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("cannot decode image: {0}")]
    Undecodable(String),
}

impl DecodeError {
    /// A short stable label for counting skips by reason.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::UnsupportedFormat(_) => "unsupported_image_format",
            DecodeError::TooLarge { .. } => "image_too_large",
            DecodeError::Undecodable(_) => "undecodable_image",
        }
    }
}

/// The image extensions a sample may carry, lowercased.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

pub fn format_for_extension(ext: &str) -> Option<ImageFormat> {
    match ext {
        "jpg" | "jpeg" => Some(ImageFormat::Jpeg),
        "png" => Some(ImageFormat::Png),
        "webp" => Some(ImageFormat::WebP),
        _ => None,
    }
}

fn reader<'a>(bytes: &'a [u8], ext: &str) -> Result<ImageReader<Cursor<&'a [u8]>>, DecodeError> {
    let declared =
        format_for_extension(ext).ok_or_else(|| DecodeError::UnsupportedFormat(ext.to_string()))?;
    // Trust the content over the extension (mislabelled files are common in scraped data), but
    // only among the formats we accept.
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => f,
        _ => declared,
    };
    Ok(ImageReader::with_format(Cursor::new(bytes), format))
}

/// Width and height from the header alone.
pub fn dimensions(bytes: &[u8], ext: &str) -> Result<(u32, u32), DecodeError> {
    reader(bytes, ext)?
        .into_dimensions()
        .map_err(|e| DecodeError::Undecodable(e.to_string()))
}

/// Width and height from the header, refused when over `max_pixels` or empty.
fn checked_dimensions(bytes: &[u8], ext: &str, max_pixels: u64) -> Result<(u32, u32), DecodeError> {
    let (width, height) = dimensions(bytes, ext)?;
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    if pixels == 0 {
        return Err(DecodeError::Undecodable("image has no pixels".into()));
    }
    Ok((width, height))
}

/// Decode `bytes` (a `jpg|jpeg|png|webp` member) to 8-bit RGB, refusing images with more than
/// `max_pixels` pixels before decoding them.
pub fn decode_rgb(bytes: &[u8], ext: &str, max_pixels: u64) -> Result<RgbImage, DecodeError> {
    let (width, height) = checked_dimensions(bytes, ext, max_pixels)?;
    decode_full(bytes, ext, width, height)
}

fn decode_full(bytes: &[u8], ext: &str, width: u32, height: u32) -> Result<RgbImage, DecodeError> {
    if is_jpeg(bytes) {
        if let Some(img) = crate::jpeg::decode(bytes, 1) {
            return Ok(img);
        }
    }
    decode_with_image_crate(bytes, ext, width, height)
}

/// The `image` crate's decoders: PNG, WebP, and the JPEGs libjpeg-turbo refuses.
fn decode_with_image_crate(
    bytes: &[u8],
    ext: &str,
    width: u32,
    height: u32,
) -> Result<RgbImage, DecodeError> {
    let mut r = reader(bytes, ext)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    r.limits(limits);
    let img = r
        .decode()
        .map_err(|e| DecodeError::Undecodable(e.to_string()))?;
    Ok(to_rgb_on_white(img))
}

fn is_jpeg(bytes: &[u8]) -> bool {
    image::guess_format(bytes).ok() == Some(ImageFormat::Jpeg)
}

/// Pixels of an image file, possibly decoded at a reduced scale.
#[derive(Debug, Clone)]
pub struct Pixels {
    pub image: RgbImage,
    /// The size of the image the file holds.
    pub full_size: (u32, u32),
    /// `image` is the file's image at 1/`reduction` of its side (1: decoded whole); its size is
    /// `full_size / reduction` rounded up, the last row and column covering what is left.
    pub reduction: u32,
}

impl Pixels {
    pub fn full(image: RgbImage) -> Self {
        Self {
            full_size: image.dimensions(),
            image,
            reduction: 1,
        }
    }

    /// The extent of the full image in `image`'s pixels (fractional when the reduction does not
    /// divide the size).
    pub fn extent(&self) -> (f64, f64) {
        let r = self.reduction as f64;
        (self.full_size.0 as f64 / r, self.full_size.1 as f64 / r)
    }
}

/// [`decode_rgb`] for a resize of the shorter side to `resize_short`: a JPEG at least four
/// times that size is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's `draft`),
/// which costs a fraction of a full decode — the largest reduction that still leaves twice
/// `resize_short`, so that the antialiased resize does the last halving at least. (Reducing
/// straight to the output size, as `draft` does, differs from torchvision's full-decode resize by
/// 4.4 levels on average on sharp-edged images; with the margin it stays within the 2 levels
/// tests/tests/data_fixtures.rs checks.) Other formats, and JPEGs libjpeg cannot reduce (CMYK,
/// damaged), are decoded whole.
///
/// JPEGs are decoded by libjpeg-turbo (Pillow's decoder, bit for bit in our fixtures), falling
/// back to the `image` crate's decoder for what it cannot read (CMYK, some damaged files).
pub fn decode_rgb_for(
    bytes: &[u8],
    ext: &str,
    max_pixels: u64,
    resize_short: u32,
) -> Result<Pixels, DecodeError> {
    let (width, height) = checked_dimensions(bytes, ext, max_pixels)?;
    if !is_jpeg(bytes) {
        return decode_with_image_crate(bytes, ext, width, height).map(Pixels::full);
    }
    let factor = crate::jpeg::reduction_for(width, height, resize_short.saturating_mul(2));
    match crate::jpeg::decode(bytes, factor) {
        Some(image) => Ok(Pixels {
            image,
            full_size: (width, height),
            reduction: factor,
        }),
        // libjpeg-turbo refused it (CMYK, damage): once is enough.
        None => decode_with_image_crate(bytes, ext, width, height).map(Pixels::full),
    }
}

/// 8-bit RGB; transparent pixels are composited on a white background (what a viewer shows).
pub fn to_rgb_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = src[3] as u32;
        for c in 0..3 {
            // round(v·a/255 + 255·(255−a)/255)
            let v = src[c] as u32 * a + 255 * (255 - a);
            dst[c] = ((v + 127) / 255) as u8;
        }
    }
    out
}

/// A caption from a `.txt` member: UTF-8, trimmed. Invalid UTF-8 is decoded lossily and
/// reported through the flag so the caller can count it.
pub fn caption_from_txt(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.trim().to_string(), false),
        Err(_) => (String::from_utf8_lossy(bytes).trim().to_string(), true),
    }
}

/// A caption from a string field of a sample's `.json` (a dotted path such as `meta.caption`).
pub fn caption_from_json(value: &serde_json::Value, field: &str) -> Option<String> {
    let mut v = value;
    for part in field.split('.') {
        v = v.get(part)?;
    }
    v.as_str().map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgba, RgbaImage};

    fn png_bytes(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn alpha_is_composited_on_white() {
        let mut img = RgbaImage::new(2, 1);
        img.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
        img.put_pixel(1, 0, Rgba([255, 0, 0, 128]));
        let bytes = png_bytes(&DynamicImage::ImageRgba8(img));
        let rgb = decode_rgb(&bytes, "png", DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255, 127, 127]);
    }

    #[test]
    fn pixel_limit_refuses_before_decoding() {
        let img = DynamicImage::ImageRgb8(RgbImage::new(100, 100));
        let bytes = png_bytes(&img);
        let err = decode_rgb(&bytes, "png", 9_999).unwrap_err();
        assert_eq!(err.reason(), "image_too_large");
        assert!(decode_rgb(&bytes, "png", 10_000).is_ok());
    }

    #[test]
    fn a_huge_declared_size_is_refused_not_allocated() {
        // A PNG header claiming 100000 x 100000 pixels, with no data behind it.
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(&[0u8; 3], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        // IHDR width/height live at bytes 16..24; patch them (CRC becomes wrong, which must
        // also not panic).
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let err = decode_rgb(&bytes, "png", DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::TooLarge { .. } | DecodeError::Undecodable(_)
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for ext in ["jpg", "png", "webp"] {
            for bytes in [
                &b""[..],
                b"not an image",
                &[0xff, 0xd8, 0xff, 0xe0, 0, 0x10][..],
            ] {
                assert!(decode_rgb(bytes, ext, DEFAULT_MAX_PIXELS).is_err());
            }
        }
        assert_eq!(
            decode_rgb(b"x", "gif", DEFAULT_MAX_PIXELS)
                .unwrap_err()
                .reason(),
            "unsupported_image_format"
        );
    }

    #[test]
    fn captions() {
        assert_eq!(
            caption_from_txt(b"  a red cube\n"),
            ("a red cube".into(), false)
        );
        let (text, lossy) = caption_from_txt(b"caf\xe9");
        assert!(lossy);
        assert_eq!(text, "caf\u{fffd}");
        let j = serde_json::json!({"meta": {"caption": " hi "}, "n": 3});
        assert_eq!(caption_from_json(&j, "meta.caption").as_deref(), Some("hi"));
        assert_eq!(caption_from_json(&j, "n"), None);
        assert_eq!(caption_from_json(&j, "missing"), None);
    }
}
