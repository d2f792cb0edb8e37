//! Rasterising a [`Scene`]: background (optionally with a faint texture), then each object
//! antialiased by supersampling its coverage on a 4×4 grid per pixel.

use super::{Scene, SceneObject, Shape};
use image::{Rgb, RgbImage};
use unclip_rng::KeyedRng;

/// Subsamples per pixel along each axis.
pub const SUPERSAMPLE: u32 = 4;

/// The texture moves a background pixel by at most this many levels (the same on all three
/// channels, so it stays neutral); scorers segment objects by distance from the background
/// colour with a threshold far above it.
pub const TEXTURE_AMPLITUDE: f64 = 6.0;

/// Cells of the smooth part of the texture along each axis.
const TEXTURE_CELLS: usize = 4;

/// Render `scene`; `texture` supplies the texture's random stream, or `None` for a plain
/// background.
pub fn render_scene(scene: &Scene, texture: Option<&mut KeyedRng>) -> RgbImage {
    let side = scene.size;
    let bg = scene.background_rgb;
    let offsets = match texture {
        Some(rng) => texture_offsets(rng, side),
        None => vec![0.0; (side * side) as usize],
    };
    let mut img = RgbImage::from_fn(side, side, |x, y| {
        let o = offsets[(y * side + x) as usize];
        Rgb(bg.map(|c| (c as f64 + o).round().clamp(0.0, 255.0) as u8))
    });
    for object in &scene.objects {
        draw_object(&mut img, object);
    }
    img
}

/// Per-pixel luminance offsets: bilinear value noise on a coarse lattice (2/3 of the amplitude)
/// plus independent per-pixel grain (1/3).
fn texture_offsets(rng: &mut KeyedRng, side: u32) -> Vec<f64> {
    let n = TEXTURE_CELLS + 1;
    let lattice: Vec<f64> = (0..n * n).map(|_| 2.0 * rng.uniform_f64() - 1.0).collect();
    let smooth = TEXTURE_AMPLITUDE * 2.0 / 3.0;
    let grain = TEXTURE_AMPLITUDE / 3.0;
    let scale = TEXTURE_CELLS as f64 / side as f64;
    let mut out = Vec::with_capacity((side * side) as usize);
    for y in 0..side {
        for x in 0..side {
            let (u, v) = ((x as f64 + 0.5) * scale, (y as f64 + 0.5) * scale);
            let (i, j) = (
                (u as usize).min(TEXTURE_CELLS - 1),
                (v as usize).min(TEXTURE_CELLS - 1),
            );
            let (fu, fv) = (u - i as f64, v - j as f64);
            let at = |a: usize, b: usize| lattice[b * n + a];
            let top = at(i, j) * (1.0 - fu) + at(i + 1, j) * fu;
            let bottom = at(i, j + 1) * (1.0 - fu) + at(i + 1, j + 1) * fu;
            let value = top * (1.0 - fv) + bottom * fv;
            out.push(smooth * value + grain * (2.0 * rng.uniform_f64() - 1.0));
        }
    }
    out
}

/// A shape's point-inside test in coordinates relative to its centre (y pointing down); the
/// scorer renders its templates with it.
pub enum Footprint {
    Circle { r2: f64 },
    Square { half: f64 },
    Cross { half_width: f64, half_length: f64 },
    Polygon(Vec<(f64, f64)>),
}

impl Footprint {
    pub fn new(shape: Shape, r: f64) -> Self {
        let regular = |count: usize, radius: &dyn Fn(usize) -> f64| {
            (0..count)
                .map(|k| {
                    let angle = -std::f64::consts::FRAC_PI_2
                        + k as f64 * std::f64::consts::TAU / count as f64;
                    (radius(k) * angle.cos(), radius(k) * angle.sin())
                })
                .collect()
        };
        match shape {
            Shape::Circle => Footprint::Circle { r2: r * r },
            Shape::Square => Footprint::Square { half: 0.7 * r },
            Shape::Cross => Footprint::Cross {
                half_width: 0.3 * r,
                half_length: 0.9 * r,
            },
            Shape::Triangle => Footprint::Polygon(regular(3, &|_| r)),
            Shape::Star => Footprint::Polygon(regular(10, &|k| {
                if k % 2 == 0 {
                    r
                } else {
                    0.5 * r
                }
            })),
        }
    }

    pub fn contains(&self, x: f64, y: f64) -> bool {
        match self {
            Footprint::Circle { r2 } => x * x + y * y <= *r2,
            Footprint::Square { half } => x.abs() <= *half && y.abs() <= *half,
            Footprint::Cross {
                half_width: w,
                half_length: l,
            } => (x.abs() <= *w && y.abs() <= *l) || (y.abs() <= *w && x.abs() <= *l),
            Footprint::Polygon(v) => {
                // Even–odd crossing test.
                let mut inside = false;
                let mut j = v.len() - 1;
                for i in 0..v.len() {
                    let ((xi, yi), (xj, yj)) = (v[i], v[j]);
                    if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                        inside = !inside;
                    }
                    j = i;
                }
                inside
            }
        }
    }
}

fn draw_object(img: &mut RgbImage, o: &SceneObject) {
    let r = o.size_px / 2.0;
    let footprint = Footprint::new(o.shape, r);
    let side = img.width() as i64;
    let lo = |c: f64| ((c - r).floor() as i64 - 1).clamp(0, side);
    let hi = |c: f64| ((c + r).ceil() as i64 + 1).clamp(0, side);
    let n = SUPERSAMPLE;
    let total = (n * n) as f64;
    for py in lo(o.center_y)..hi(o.center_y) {
        for px in lo(o.center_x)..hi(o.center_x) {
            let mut covered = 0u32;
            for sy in 0..n {
                let y = py as f64 + (sy as f64 + 0.5) / n as f64 - o.center_y;
                for sx in 0..n {
                    let x = px as f64 + (sx as f64 + 0.5) / n as f64 - o.center_x;
                    covered += footprint.contains(x, y) as u32;
                }
            }
            if covered == 0 {
                continue;
            }
            let coverage = covered as f64 / total;
            let pixel = img.get_pixel_mut(px as u32, py as u32);
            for k in 0..3 {
                let bg = pixel[k] as f64;
                let v = bg + (o.color_rgb[k] as f64 - bg) * coverage;
                pixel[k] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::{Color, Position, SizeClass};

    fn scene_with(shape: Shape, d: f64) -> Scene {
        Scene {
            size: 64,
            background_rgb: [60, 60, 60],
            objects: vec![SceneObject {
                shape,
                color: Color::Red,
                color_rgb: Color::Red.rgb(),
                size: SizeClass::Large,
                size_px: d,
                center_x: 30.3,
                center_y: 33.7,
                position: Position::Center,
            }],
            relation: None,
        }
    }

    /// Coverage-weighted centroid and area of the object (pixels whose colour moved towards red).
    fn measure(img: &RgbImage) -> (f64, f64, f64) {
        let (mut area, mut sx, mut sy) = (0.0, 0.0, 0.0);
        for (x, y, p) in img.enumerate_pixels() {
            let coverage = (p[0] as f64 - 60.0) / (230.0 - 60.0);
            if coverage > 0.0 {
                area += coverage;
                sx += coverage * (x as f64 + 0.5);
                sy += coverage * (y as f64 + 0.5);
            }
        }
        (area, sx / area, sy / area)
    }

    #[test]
    fn shapes_have_their_area_and_centroid() {
        let d = 26.0;
        let r = d / 2.0;
        let pi = std::f64::consts::PI;
        let expected_area = [
            (Shape::Circle, pi * r * r),
            (Shape::Square, (1.4 * r).powi(2)),
            (
                Shape::Cross,
                2.0 * (0.6 * r) * (1.8 * r) - (0.6 * r).powi(2),
            ),
            (Shape::Triangle, 3.0 * 3f64.sqrt() / 4.0 * r * r),
            // Ten triangles (centre, outer, inner) of area r·0.5r·sin(36°)/2 each.
            (Shape::Star, 10.0 * 0.5 * r * 0.5 * r * (pi / 5.0).sin()),
        ];
        for (shape, area) in expected_area {
            let img = render_scene(&scene_with(shape, d), None);
            let (measured, cx, cy) = measure(&img);
            assert!(
                (measured - area).abs() / area < 0.03,
                "{shape:?}: {measured} vs {area}"
            );
            assert!(
                (cx - 30.3).abs() < 0.1 && (cy - 33.7).abs() < 0.1,
                "{shape:?}: {cx},{cy}"
            );
        }
    }

    #[test]
    fn texture_is_faint_and_plain_is_flat() {
        let mut scene = scene_with(Shape::Circle, 10.0);
        scene.objects.clear();
        let plain = render_scene(&scene, None);
        assert!(plain.pixels().all(|p| p.0 == [60, 60, 60]));
        let textured = render_scene(&scene, Some(&mut KeyedRng::new(0, "t", 0, 0)));
        let max_dev = textured
            .pixels()
            .map(|p| (p[0] as i32 - 60).abs())
            .max()
            .unwrap();
        assert!(
            max_dev >= 2 && max_dev as f64 <= TEXTURE_AMPLITUDE,
            "{max_dev}"
        );
    }
}
