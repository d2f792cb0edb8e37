//! The loss curve a run draws beside its metrics (previews are `unclip_data::pixels` grids).

use image::{Rgb, RgbImage};

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
    fn curve_draws_both_series() {
        let train: Vec<(u64, f64)> = (1..50).map(|s| (s, 1.0 / s as f64)).collect();
        let img = loss_curve(&train, &[(10, 0.2), (40, 0.05)]);
        let count = |c: Rgb<u8>| img.pixels().filter(|p| **p == c).count();
        assert!(count(Rgb([31, 119, 180])) > 100);
        assert!(count(Rgb([214, 39, 40])) > 50);
    }
}
