//! The evaluation's pictures: real/generated pairs and the guidance-sweep plot.

use image::RgbImage;
use unclip_data::pixels::grid;

use crate::SweepPoint;

/// Side-by-side rows: real | generated, `cols` pairs per row.
pub(crate) fn pairs_grid(real: &[RgbImage], fake: &[RgbImage], cols: usize) -> RgbImage {
    let side = fake.first().map(|i| i.width()).unwrap_or(1);
    let resized: Vec<RgbImage> = real
        .iter()
        .map(|r| image::imageops::resize(r, side, side, image::imageops::FilterType::Triangle))
        .collect();
    let mut items = Vec::new();
    for (r, f) in resized.iter().zip(fake) {
        items.push(r.clone());
        items.push(f.clone());
    }
    grid(&items, 2 * cols)
}

/// Diversity spacing of the sweep plot's vertical grid lines.
pub(crate) const PLOT_X_GRID: f64 = 0.05;

/// Right end of the sweep plot's diversity axis: 10 % beyond the most diverse point.
pub(crate) fn sweep_xmax(points: &[SweepPoint]) -> f64 {
    points
        .iter()
        .map(|p| p.diversity)
        .filter(|v| v.is_finite())
        .fold(1e-6, f64::max)
        * 1.1
}

/// The fidelity–diversity plot: x = diversity from 0 to [`sweep_xmax`] (grey lines every
/// [`PLOT_X_GRID`]), y = colour accuracy from 0 to 100 % (grey lines every 10 %); unCLIP in
/// blue, the text-embedding ablation in red, larger markers for larger guidance.
pub(crate) fn sweep_plot(points: &[SweepPoint]) -> RgbImage {
    let (w, h, m) = (480u32, 360u32, 40u32);
    let mut img = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let (x0, x1, y0, y1) = (m, w - m / 2, h - m, m / 2);
    let xmax = sweep_xmax(points);
    let to_px = |diversity: f64, color: f64| {
        let x = x0 as f64 + (diversity / xmax).clamp(0.0, 1.0) * (x1 - x0) as f64;
        let y = y0 as f64 - color.clamp(0.0, 1.0) * (y0 - y1) as f64;
        (x, y)
    };
    let grid = image::Rgb([225, 225, 225]);
    for k in 1..=10 {
        let (_, y) = to_px(0.0, k as f64 / 10.0);
        for x in x0..x1 {
            img.put_pixel(x, y as u32, grid);
        }
    }
    for k in 1..=(xmax / PLOT_X_GRID) as usize {
        let (x, _) = to_px(k as f64 * PLOT_X_GRID, 0.0);
        for y in y1..y0 {
            img.put_pixel(x as u32, y, grid);
        }
    }
    let axis = image::Rgb([0, 0, 0]);
    for x in x0..x1 {
        img.put_pixel(x, y0, axis);
    }
    for y in y1..y0 {
        img.put_pixel(x0, y, axis);
    }
    let to_px = |p: &SweepPoint| to_px(p.diversity, p.color);
    for method in ["unclip", "text_embedding"] {
        let color = if method == "unclip" {
            image::Rgb([30, 90, 220])
        } else {
            image::Rgb([220, 40, 40])
        };
        let pts: Vec<_> = points.iter().filter(|p| p.method == method).collect();
        for pair in pts.windows(2) {
            let (a, b) = (to_px(pair[0]), to_px(pair[1]));
            for s in 0..=200 {
                let t = s as f64 / 200.0;
                let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
                if x >= 0.0 && y >= 0.0 && (x as u32) < w && (y as u32) < h {
                    img.put_pixel(x as u32, y as u32, color);
                }
            }
        }
        for p in pts {
            let (cx, cy) = to_px(p);
            let r = 2.0 + p.guidance.log2().max(0.0) * 1.5;
            let ri = r.ceil() as i64;
            for dy in -ri..=ri {
                for dx in -ri..=ri {
                    if ((dx * dx + dy * dy) as f64) <= r * r {
                        let (x, y) = (cx as i64 + dx, cy as i64 + dy);
                        if x >= 0 && y >= 0 && (x as u32) < w && (y as u32) < h {
                            img.put_pixel(x as u32, y as u32, color);
                        }
                    }
                }
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_plot_puts_points_on_its_grid() {
        let point = |method: &str, guidance: f64, color: f64, diversity: f64| SweepPoint {
            method: method.into(),
            guidance,
            color,
            shape: 0.0,
            clip_score: 0.0,
            diversity,
        };
        // xmax = 0.22: the plot spans 0..0.22 over x 40..460 and 0..100 % over y 320..20.
        let img = sweep_plot(&[
            point("unclip", 1.0, 0.5, 0.1),
            point("text_embedding", 8.0, 0.8, 0.2),
        ]);
        let px = |d: f64, c: f64| {
            let x = 40.0 + d / 0.22 * 420.0;
            let y = 320.0 - c * 300.0;
            *img.get_pixel(x as u32, y as u32)
        };
        assert_eq!(px(0.1, 0.5), image::Rgb([30, 90, 220]));
        assert_eq!(px(0.2, 0.8), image::Rgb([220, 40, 40]));
        let grey = image::Rgb([225, 225, 225]);
        assert_eq!(px(0.02, 0.3), grey, "10 % line");
        assert_eq!(px(0.05, 0.95), grey, "0.05 diversity line");
        assert_eq!(px(0.03, 0.95), image::Rgb([255, 255, 255]));
        assert_eq!(*img.get_pixel(40, 200), image::Rgb([0, 0, 0]), "y axis");
    }
}
