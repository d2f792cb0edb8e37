//! Per-sample CPU work run in the loader's workers: the standard image transform, and the hook
//! through which a trainer plugs in its own (the upsamplers corrupt low-resolution copies there).
//!
//! The standard transform matches torchvision's `Resize(s)` (shorter side to `s`, antialiased
//! bilinear as Pillow computes it, the longer side truncated as torchvision does), `CenterCrop`
//! or a random crop, an optional horizontal flip, then `ToTensor` + `Normalize(0.5, 0.5)`: f32
//! CHW in [-1, 1]. Resize and crop are one pass: only the output pixels inside the crop are
//! computed, with exactly the filter weights of the full resize.

use crate::decode::{decode_rgb, decode_rgb_for, DecodeError, Pixels};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::pixels::to_chw_unit;
use serde::{Deserialize, Serialize};
use unclip_rng::KeyedRng;

/// How the crop window is placed after resizing the shorter side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crop {
    #[default]
    Center,
    Random,
}

/// The standard image transform (the `data.transform` section of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTransform {
    /// Side of the square output image, in pixels.
    pub image_size: u32,
    /// Shorter side after resizing, before cropping; defaults to `image_size`.
    #[serde(default)]
    pub resize_to: Option<u32>,
    #[serde(default)]
    pub crop: Crop,
    /// Probability of a horizontal flip (0 disables).
    #[serde(default)]
    pub hflip_prob: f64,
}

impl ImageTransform {
    pub fn new(image_size: u32) -> Self {
        Self {
            image_size,
            resize_to: None,
            crop: Crop::Center,
            hflip_prob: 0.0,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.image_size == 0 {
            return Err("image_size must be at least 1".into());
        }
        if let Some(r) = self.resize_to {
            if r < self.image_size {
                return Err(format!(
                    "resize_to ({r}) must be at least image_size ({})",
                    self.image_size
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.hflip_prob) {
            return Err(format!(
                "hflip_prob must be in [0, 1], got {}",
                self.hflip_prob
            ));
        }
        Ok(())
    }

    /// Resize, crop and flip an RGB image into an 8-bit `image_size`² RGB image, drawing the
    /// crop offset and the flip from `rng`.
    pub fn apply_rgb(&self, img: &RgbImage, rng: &mut KeyedRng) -> Result<RgbImage, String> {
        let extent = img.dimensions();
        self.apply_extent(img, extent, (extent.0 as f64, extent.1 as f64), rng)
    }

    /// [`ImageTransform::apply_rgb`] of the file's full image, from pixels possibly decoded at
    /// a reduced scale: sizes and crop offsets are those of the full image, as torchvision
    /// computes them.
    pub fn apply_pixels(&self, px: &Pixels, rng: &mut KeyedRng) -> Result<RgbImage, String> {
        self.apply_extent(&px.image, px.full_size, px.extent(), rng)
    }

    /// The shorter side to resize to before cropping: what a decode may reduce to.
    pub fn resize_short(&self) -> u32 {
        self.resize_to.unwrap_or(self.image_size)
    }

    fn apply_extent(
        &self,
        img: &RgbImage,
        (w, h): (u32, u32),
        extent: (f64, f64),
        rng: &mut KeyedRng,
    ) -> Result<RgbImage, String> {
        let (rw, rh) = shorter_side_size(w, h, self.resize_short());
        let s = self.image_size;
        let (left, top) = match self.crop {
            Crop::Center => (center_offset(rw, s), center_offset(rh, s)),
            Crop::Random => (
                rng.below((rw - s) as u64 + 1) as u32,
                rng.below((rh - s) as u64 + 1) as u32,
            ),
        };
        let mut out = resize_crop_extent(img, extent, (rw, rh), (left, top), (s, s))?;
        if self.hflip_prob > 0.0 && rng.bernoulli(self.hflip_prob) {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        Ok(out)
    }
}

/// torchvision's size for `Resize(short)`: the shorter side becomes `short`, the longer
/// `int(short * long / short_side)`.
pub fn shorter_side_size(w: u32, h: u32, short: u32) -> (u32, u32) {
    if w <= h {
        let long = ((short as u64 * h as u64) / w.max(1) as u64).max(short as u64) as u32;
        (short, long)
    } else {
        let long = ((short as u64 * w as u64) / h.max(1) as u64).max(short as u64) as u32;
        (long, short)
    }
}

/// torchvision's `CenterCrop` offset: `int(round((size - crop) / 2))`, halves rounded to even.
fn center_offset(size: u32, crop: u32) -> u32 {
    let twice = size - crop; // offset = twice / 2, rounded half to even
    let half = twice / 2;
    if twice % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// The `out` window at `offset` of `img` resized to `resized`, computed directly with the full
/// resize's filter weights (antialiased bilinear, Pillow's convolution).
pub fn resize_crop(
    img: &RgbImage,
    resized: (u32, u32),
    offset: (u32, u32),
    out: (u32, u32),
) -> Result<RgbImage, String> {
    let (w, h) = img.dimensions();
    resize_crop_extent(img, (w as f64, h as f64), resized, offset, out)
}

/// [`resize_crop`] where the resized image corresponds to the top-left `extent` of `img` (in
/// `img`'s pixels), for images decoded at a reduced scale.
fn resize_crop_extent(
    img: &RgbImage,
    extent: (f64, f64),
    resized: (u32, u32),
    offset: (u32, u32),
    out: (u32, u32),
) -> Result<RgbImage, String> {
    let (w, h) = img.dimensions();
    let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3).map_err(|e| e.to_string())?;
    let sx = extent.0 / resized.0 as f64;
    let sy = extent.1 / resized.1 as f64;
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(
            offset.0 as f64 * sx,
            offset.1 as f64 * sy,
            out.0 as f64 * sx,
            out.1 as f64 * sy,
        );
    let mut dst = Image::new(out.0, out.1, PixelType::U8x3);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| e.to_string())?;
    RgbImage::from_raw(out.0, out.1, dst.into_vec()).ok_or_else(|| "resize output size".into())
}

/// Antialiased resize of a whole image to `width`×`height`.
pub fn resize_rgb(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    if img.dimensions() == (width, height) {
        return img.clone();
    }
    resize_crop(img, (width, height), (0, 0), (width, height))
        .expect("resizing a valid RGB buffer to a non-empty size cannot fail")
}

/// A decoded sample handed to a transform.
#[derive(Debug, Clone)]
pub struct DecodedSample {
    pub key: String,
    /// The shard the sample came from (keys are unique within a shard).
    pub shard: std::sync::Arc<std::path::Path>,
    pub caption: Option<String>,
    /// The `.json` member's bytes, when the sample has one; parse with [`DecodedSample::json`]
    /// (only transforms that need it pay for parsing).
    pub json_bytes: Option<Vec<u8>>,
    /// Raw bytes of the image member and its extension; decode with [`DecodedSample::decode`].
    pub image_bytes: Vec<u8>,
    pub image_ext: String,
    pub max_pixels: u64,
}

impl DecodedSample {
    pub fn decode(&self) -> Result<RgbImage, DecodeError> {
        decode_rgb(&self.image_bytes, &self.image_ext, self.max_pixels)
    }

    /// The image for a transform that resizes its shorter side to `resize_short`: large JPEGs
    /// are decoded at a reduced scale ([`decode_rgb_for`]).
    pub fn decode_for(&self, resize_short: u32) -> Result<Pixels, DecodeError> {
        decode_rgb_for(
            &self.image_bytes,
            &self.image_ext,
            self.max_pixels,
            resize_short,
        )
    }

    /// The parsed `.json` member; `None` when absent or not valid JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(self.json_bytes.as_deref()?).ok()
    }
}

/// Where a sample sits in the stream; the source of its random numbers.
#[derive(Debug, Clone, Copy)]
pub struct SampleContext {
    pub seed: u64,
    pub epoch: u64,
    /// Position of the sample in the epoch's global (all-rank) stream.
    pub index: u64,
}

impl SampleContext {
    /// The random stream for one purpose of this sample.
    pub fn rng(&self, purpose: &str) -> KeyedRng {
        KeyedRng::new(self.seed, purpose, self.epoch, self.index)
    }
}

/// One named f32 array of an example (`image` [3, S, S], `low_res` …).
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A transformed sample, ready to be collated.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub key: String,
    pub caption: Option<String>,
    pub index: u64,
    pub fields: Vec<Field>,
}

/// Why a transform refused a sample: the decode error or another reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransformError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{reason}: {detail}")]
    Other {
        reason: &'static str,
        detail: String,
    },
}

impl TransformError {
    pub fn reason(&self) -> &'static str {
        match self {
            TransformError::Decode(e) => e.reason(),
            TransformError::Other { reason, .. } => reason,
        }
    }
}

/// The per-task transform hook: runs in the loader's workers, once per sample. It must draw
/// every random number from `ctx.rng(purpose)` so results do not depend on worker count.
pub trait SampleTransform: Send + Sync + 'static {
    fn apply(&self, sample: DecodedSample, ctx: SampleContext) -> Result<Example, TransformError>;
}

impl SampleTransform for ImageTransform {
    fn apply(&self, sample: DecodedSample, ctx: SampleContext) -> Result<Example, TransformError> {
        let px = sample.decode_for(self.resize_short())?;
        let out = self
            .apply_pixels(&px, &mut ctx.rng("image_transform"))
            .map_err(|detail| TransformError::Other {
                reason: "transform_error",
                detail,
            })?;
        let s = self.image_size as usize;
        let mut data = Vec::with_capacity(3 * s * s);
        to_chw_unit(&out, &mut data);
        Ok(Example {
            key: sample.key,
            caption: sample.caption,
            index: ctx.index,
            fields: vec![Field {
                name: "image".into(),
                shape: vec![3, s, s],
                data,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_torchvision() {
        assert_eq!(shorter_side_size(256, 256, 64), (64, 64));
        assert_eq!(shorter_side_size(300, 200, 64), (96, 64));
        assert_eq!(shorter_side_size(200, 301, 64), (64, 96)); // int(96.32)
        assert_eq!(center_offset(96, 64), 16);
        assert_eq!(center_offset(65, 64), 0); // round(0.5) = 0
        assert_eq!(center_offset(67, 64), 2); // round(1.5) = 2
    }

    #[test]
    fn crop_window_equals_crop_of_full_resize() {
        let mut img = RgbImage::new(120, 80);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 2) as u8, (y * 3) as u8, ((x * y) % 251) as u8]);
        }
        let full = resize_rgb(&img, 96, 64);
        let window = resize_crop(&img, (96, 64), (16, 0), (64, 64)).unwrap();
        let cropped = image::imageops::crop_imm(&full, 16, 0, 64, 64).to_image();
        let max_diff = window
            .as_raw()
            .iter()
            .zip(cropped.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(max_diff <= 1, "max diff {max_diff}");
    }

    #[test]
    fn random_crop_and_flip_are_keyed_by_sample() {
        let mut img = RgbImage::new(100, 100);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([x as u8, y as u8, 0]);
        }
        let t = ImageTransform {
            image_size: 32,
            resize_to: Some(64),
            crop: Crop::Random,
            hflip_prob: 0.5,
        };
        let ctx = |index| SampleContext {
            seed: 1,
            epoch: 0,
            index,
        };
        let a = t
            .apply_rgb(&img, &mut ctx(5).rng("image_transform"))
            .unwrap();
        let b = t
            .apply_rgb(&img, &mut ctx(5).rng("image_transform"))
            .unwrap();
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<Vec<u8>> = (0..20)
            .map(|i| {
                t.apply_rgb(&img, &mut ctx(i).rng("image_transform"))
                    .unwrap()
                    .into_raw()
            })
            .collect();
        assert!(distinct.len() > 10);
    }
}
