//! CLIP's image preprocessing: shortest side → image size (bicubic, Catmull-Rom as PIL's), center
//! crop, scale to [0, 1], normalise with CLIP's mean and std; channels first.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::error::ClipError;

/// OpenAI CLIP's per-channel mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel std (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Size after resizing the shortest side to `size`, as transformers computes it (the long side
/// truncated, not rounded).
fn resized_dims(width: u32, height: u32, size: u32) -> (u32, u32) {
    if width <= height {
        (size, (size as u64 * height as u64 / width as u64) as u32)
    } else {
        ((size as u64 * width as u64 / height as u64) as u32, size)
    }
}

/// The resized and center-cropped `size`×`size` RGB image.
pub fn resize_center_crop(img: &RgbImage, size: u32) -> Result<RgbImage, ClipError> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || size == 0 {
        return Err(ClipError::Preprocess(format!(
            "cannot preprocess a {w}x{h} image to {size}"
        )));
    }
    let (rw, rh) = resized_dims(w, h, size);
    let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3)
        .map_err(|e| ClipError::Preprocess(e.to_string()))?;
    // Resize the whole image, then crop, so the crop's edge pixels see their real neighbours.
    // Two single-axis passes, horizontal first, each rounded to u8: PIL's order. Bicubic
    // overshoot is clipped between the passes, so the order matters where the image saturates.
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    let mut resizer = Resizer::new();
    let mut wide = Image::new(rw, h, PixelType::U8x3);
    resizer
        .resize(&src, &mut wide, &options)
        .map_err(|e| ClipError::Preprocess(e.to_string()))?;
    let mut resized = Image::new(rw, rh, PixelType::U8x3);
    resizer
        .resize(&wide, &mut resized, &options)
        .map_err(|e| ClipError::Preprocess(e.to_string()))?;
    let resized = resized.into_vec();
    let (top, left) = ((rh - size) / 2, (rw - size) / 2);
    let mut out = Vec::with_capacity((size * size * 3) as usize);
    for y in top..top + size {
        let row = (y * rw + left) as usize * 3;
        out.extend_from_slice(&resized[row..row + size as usize * 3]);
    }
    RgbImage::from_raw(size, size, out)
        .ok_or_else(|| ClipError::Preprocess("crop buffer size".into()))
}

/// CLIP `pixel_values` for one image: [3, size, size] row-major, normalised.
pub fn preprocess(img: &RgbImage, size: u32) -> Result<Vec<f32>, ClipError> {
    let crop = resize_center_crop(img, size)?;
    let plane = (size * size) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in crop.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    Ok(out)
}

/// A batch of preprocessed images as a [batch, 3, size, size] tensor.
pub fn preprocess_batch<B: Backend>(
    images: &[RgbImage],
    size: u32,
    device: &B::Device,
) -> Result<Tensor<B, 4>, ClipError> {
    let mut data = Vec::with_capacity(images.len() * 3 * (size * size) as usize);
    for img in images {
        data.extend(preprocess(img, size)?);
    }
    let s = size as usize;
    Ok(Tensor::from_data(
        TensorData::new(data, [images.len(), 3, s, s]),
        device,
    ))
}
