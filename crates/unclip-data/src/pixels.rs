//! Pixel layouts between images and tensors: 8-bit RGB ↔ f32 CHW in [-1, 1] (what every
//! network takes and gives), and grids of images for previews, samples and reports.

use image::{Rgb, RgbImage};

/// 8-bit HWC RGB → f32 CHW in [-1, 1] (`x / 127.5 - 1`), appended to `out`.
pub fn to_chw_unit(img: &RgbImage, out: &mut Vec<f32>) {
    let (w, h) = img.dimensions();
    let n = (w * h) as usize;
    let base = out.len();
    out.resize(base + 3 * n, 0.0);
    let (r, rest) = out[base..].split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = px[0] as f32 * (1.0 / 127.5) - 1.0;
        g[i] = px[1] as f32 * (1.0 / 127.5) - 1.0;
        b[i] = px[2] as f32 * (1.0 / 127.5) - 1.0;
    }
}

/// A value in [-1, 1] as an 8-bit level (clamped; NaN → 0).
pub fn to_u8(v: f32) -> u8 {
    ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// One CHW image in [-1, 1] (`[3, h, w]`) as an RGB image (missing values are 0).
pub fn chw_to_rgb(pixels: &[f32], w: usize, h: usize) -> RgbImage {
    let plane = w * h;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        Rgb([0, 1, 2].map(|c| to_u8(pixels.get(c * plane + i).copied().unwrap_or(0.0))))
    })
}

/// `images` (all of one size) row by row, `cols` per row, 2 px of white around each.
pub fn grid(images: &[RgbImage], cols: usize) -> RgbImage {
    let Some(first) = images.first() else {
        return RgbImage::new(1, 1);
    };
    let (w, h) = first.dimensions();
    let cols = cols.max(1) as u32;
    let rows = (images.len() as u32).div_ceil(cols);
    let pad = 2;
    let mut out = RgbImage::from_pixel(
        cols * (w + pad) + pad,
        rows * (h + pad) + pad,
        Rgb([255, 255, 255]),
    );
    for (i, img) in images.iter().enumerate() {
        let (x, y) = (i as u32 % cols, i as u32 / cols);
        image::imageops::overlay(
            &mut out,
            img,
            (pad + x * (w + pad)) as i64,
            (pad + y * (h + pad)) as i64,
        );
    }
    out
}

/// A [`grid`] of `count` CHW images in [-1, 1] of side `size` laid end to end in `pixels`;
/// `cols` per row, or a roughly square grid when `None`.
pub fn chw_grid(pixels: &[f32], count: usize, size: usize, cols: Option<usize>) -> RgbImage {
    let per = 3 * size * size;
    let images: Vec<RgbImage> = (0..count)
        .map(|i| chw_to_rgb(pixels.get(i * per..).unwrap_or(&[]), size, size))
        .collect();
    let cols = cols.unwrap_or_else(|| (count as f64).sqrt().ceil().max(1.0) as usize);
    grid(&images, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_layout_and_range() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([0, 255, 51]));
        img.put_pixel(1, 0, image::Rgb([255, 0, 102]));
        let mut v = Vec::new();
        to_chw_unit(&img, &mut v);
        let expect = [
            -1.0,
            1.0,
            1.0,
            -1.0,
            51.0 / 127.5 - 1.0,
            102.0 / 127.5 - 1.0,
        ];
        for (a, b) in v.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn chw_grid_places_images_and_maps_range() {
        let size = 2;
        let mut px = vec![-1.0f32; 3 * 3 * size * size];
        px[12..24].iter_mut().for_each(|v| *v = 1.0); // second image white
        let g = chw_grid(&px, 3, size, None);
        assert_eq!(g.dimensions(), (2 * 4 + 2, 2 * 4 + 2));
        assert_eq!(g.get_pixel(2, 2), &Rgb([0, 0, 0]));
        assert_eq!(g.get_pixel(6, 2), &Rgb([255, 255, 255]));
        let rgb = chw_to_rgb(&px[12..24], size, size);
        let mut back = Vec::new();
        to_chw_unit(&rgb, &mut back);
        assert_eq!(back, px[12..24].to_vec());
    }
}
