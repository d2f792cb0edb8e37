//! The two pictures a run draws itself: preview grids and the loss curve.

use image::{Rgb, RgbImage};

/// A roughly square grid of `count` CHW images in [-1, 1] of side `size`.
pub fn image_grid(pixels: &[f32], count: usize, size: usize) -> RgbImage {
    let cols = (count as f64).sqrt().ceil().max(1.0) as usize;
    image_grid_with_columns(pixels, count, size, cols)
}

/// `count` CHW images in [-1, 1] of side `size`, row by row, `cols` per row.
pub fn image_grid_with_columns(pixels: &[f32], count: usize, size: usize, cols: usize) -> RgbImage {
    let cols = cols.max(1);
    let rows = count.div_ceil(cols).max(1);
    let pad = 2;
    let w = (cols * (size + pad) + pad) as u32;
    let h = (rows * (size + pad) + pad) as u32;
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let plane = size * size;
    for i in 0..count {
        let (ox, oy) = (
            pad + (i % cols) * (size + pad),
            pad + (i / cols) * (size + pad),
        );
        for y in 0..size {
            for x in 0..size {
                let mut px = [0u8; 3];
                for (c, p) in px.iter_mut().enumerate() {
                    let v = pixels.get(i * 3 * plane + c * plane + y * size + x);
                    *p = to_u8(v.copied().unwrap_or(0.0));
                }
                img.put_pixel((ox + x) as u32, (oy + y) as u32, Rgb(px));
            }
        }
    }
    img
}

/// A value in [-1, 1] as an 8-bit level (clamped; NaN → 0).
pub fn to_u8(v: f32) -> u8 {
    ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// One CHW image in [-1, 1] (`[3, h, w]`) as an RGB image.
pub fn chw_to_rgb(pixels: &[f32], w: usize, h: usize) -> RgbImage {
    let plane = w * h;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        Rgb([0, 1, 2].map(|c| to_u8(pixels.get(c * plane + i).copied().unwrap_or(0.0))))
    })
}

/// Loss against step on a log scale: training loss in blue, validation loss in red.
pub fn loss_curve(train: &[(u64, f64)], val: &[(u64, f64)]) -> RgbImage {
    let (w, h, m) = (640u32, 360u32, 30i64);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let finite = |p: &&(u64, f64)| p.1.is_finite() && p.1 > 0.0;
    let all: Vec<&(u64, f64)> = train.iter().chain(val).filter(finite).collect();
    let axis = Rgb([0, 0, 0]);
    for x in m..(w as i64 - m) {
        img.put_pixel(x as u32, (h as i64 - m) as u32, axis);
    }
    for y in m..(h as i64 - m) {
        img.put_pixel(m as u32, y as u32, axis);
    }
    if all.is_empty() {
        return img;
    }
    let (s0, s1) = all
        .iter()
        .fold((u64::MAX, 0), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (l0, l1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(p.1.ln()), b.max(p.1.ln()))
    });
    let sx = (w as i64 - 2 * m) as f64 / (s1.saturating_sub(s0)).max(1) as f64;
    let sy = (h as i64 - 2 * m) as f64 / (l1 - l0).max(1e-9);
    let to_px = |p: &(u64, f64)| {
        let x = m as f64 + (p.0 - s0) as f64 * sx;
        let y = (h as i64 - m) as f64 - (p.1.ln() - l0) * sy;
        (x, y)
    };
    for (series, color) in [(train, Rgb([31, 119, 180])), (val, Rgb([214, 39, 40]))] {
        let pts: Vec<(f64, f64)> = series.iter().filter(finite).map(to_px).collect();
        for seg in pts.windows(2) {
            let n = ((seg[1].0 - seg[0].0).abs().max((seg[1].1 - seg[0].1).abs()) as usize).max(1);
            for k in 0..=n {
                let f = k as f64 / n as f64;
                let x = seg[0].0 + (seg[1].0 - seg[0].0) * f;
                let y = seg[0].1 + (seg[1].1 - seg[0].1) * f;
                if x >= 0.0 && y >= 0.0 && (x as u32) < w && (y as u32) < h {
                    img.put_pixel(x as u32, y as u32, color);
                }
            }
        }
        if let [only] = pts.as_slice() {
            img.put_pixel(only.0 as u32, only.1 as u32, color);
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_images_and_maps_range() {
        let size = 2;
        let mut px = vec![-1.0f32; 3 * 3 * size * size];
        px[12..24].iter_mut().for_each(|v| *v = 1.0); // second image white
        let g = image_grid(&px, 3, size);
        assert_eq!(g.dimensions(), (2 * 4 + 2, 2 * 4 + 2));
        assert_eq!(g.get_pixel(2, 2), &Rgb([0, 0, 0]));
        assert_eq!(g.get_pixel(6, 2), &Rgb([255, 255, 255]));
    }

    #[test]
    fn curve_draws_both_series() {
        let train: Vec<(u64, f64)> = (1..50).map(|s| (s, 1.0 / s as f64)).collect();
        let img = loss_curve(&train, &[(10, 0.2), (40, 0.05)]);
        let count = |c: Rgb<u8>| img.pixels().filter(|p| **p == c).count();
        assert!(count(Rgb([31, 119, 180])) > 100);
        assert!(count(Rgb([214, 39, 40])) > 50);
    }
}
