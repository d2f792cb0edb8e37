//! [`read_objects`]: the objects of a shapes-world image, read off its pixels (see the module
//! header of [`super`] for the method).

use std::collections::VecDeque;

use image::RgbImage;
use unclip_data_tools::shapes::render::Footprint;
use unclip_data_tools::shapes::{Color, Position, Shape, SizeClass};

use super::ObjectReading;

/// A pixel seeds an object when its RGB distance from the background is at least this (or half
/// the image's contrast, when that is less, down to [`MIN_SEED_DISTANCE`]). Every
/// palette colour is ≥ 140 from every background, so this is a coverage of ≤ 0.43; the gap
/// between two objects' bounding circles keeps them in separate components.
const SEED_DISTANCE: f64 = 60.0;

/// The lowest seed threshold, for faint images: well above background texture and mild noise.
const MIN_SEED_DISTANCE: f64 = 30.0;

/// Largest side handled; larger images are read on a box-downscaled copy.
const MAX_SIDE: u32 = 256;

/// Diameter (fraction of the side) between the small and the large size classes.
const SIZE_SPLIT: f64 = 0.31;

/// Area of each shape in units of its bounding radius squared (see the footprints in
/// `render.rs`).
fn area_coefficient(shape: Shape) -> f64 {
    match shape {
        Shape::Circle => std::f64::consts::PI,
        Shape::Square => 1.4 * 1.4,
        Shape::Cross => 2.0 * 0.6 * 1.8 - 0.6 * 0.6,
        Shape::Triangle => 3.0 * 3f64.sqrt() / 4.0,
        // Ten triangles (centre, outer point, inner point), each ½ · r · r/2 · sin 36°.
        Shape::Star => 10.0 * 0.5 * 0.5 * (std::f64::consts::PI / 5.0).sin(),
    }
}

/// The objects of `img`, largest first. An image with nothing but background gives an empty
/// list. Works at any side ≥ 8 px; the world's images are square, and a non-square image is
/// read with its grid cells stretched to its width and height.
pub fn read_objects(img: &RgbImage) -> Vec<ObjectReading> {
    let (w, h) = img.dimensions();
    if w < 8 || h < 8 {
        return Vec::new();
    }
    if w.max(h) > MAX_SIDE {
        let f = w.max(h).div_ceil(MAX_SIDE);
        let small = image::imageops::resize(
            img,
            (w / f).max(8),
            (h / f).max(8),
            image::imageops::FilterType::Triangle,
        );
        let sx = w as f64 / small.width() as f64;
        let sy = h as f64 / small.height() as f64;
        return read_objects(&small)
            .into_iter()
            .map(|mut o| {
                o.center = (o.center.0 * sx, o.center.1 * sy);
                o.area *= sx * sy;
                o.diameter *= sx.max(sy);
                o
            })
            .collect();
    }
    Reader::new(img).read()
}

struct Reader {
    w: usize,
    h: usize,
    /// The background colour.
    bg: [f64; 3],
    /// Pixels minus the background, row-major.
    v: Vec<[f64; 3]>,
}

/// A component: its pixel indices, seeds first, then the pixels it grew into.
struct Region {
    pixels: Vec<usize>,
    seeds: usize,
}

/// The result of template matching one object.
struct ShapeFit {
    shape: Shape,
    diameter: f64,
    error: f64,
    margin: f64,
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// The 8-neighbours of pixel `i` of a `w`×`h` image.
fn neighbours(i: usize, w: usize, h: usize) -> impl Iterator<Item = usize> {
    let (x, y) = ((i % w) as isize, (i / w) as isize);
    (-1isize..=1)
        .flat_map(move |dy| (-1isize..=1).map(move |dx| (x + dx, y + dy)))
        .filter(move |&(nx, ny)| {
            (nx, ny) != (x, y) && nx >= 0 && ny >= 0 && (nx as usize) < w && (ny as usize) < h
        })
        .map(move |(nx, ny)| ny as usize * w + nx as usize)
}

/// The background: the per-channel median of the border pixels, refined to the mean of every
/// pixel near it.
fn background(img: &RgbImage) -> [f64; 3] {
    let (w, h) = img.dimensions();
    let mut hist = [[0u32; 256]; 3];
    let mut count = 0u32;
    for (x, y, p) in img.enumerate_pixels() {
        if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
            for k in 0..3 {
                hist[k][p[k] as usize] += 1;
            }
            count += 1;
        }
    }
    let median = hist.map(|hk| {
        let mut seen = 0;
        for (value, n) in hk.iter().enumerate() {
            seen += n;
            if 2 * seen >= count {
                return value as f64;
            }
        }
        255.0
    });
    let (mut sum, mut n) = ([0.0; 3], 0.0);
    for p in img.pixels() {
        let d = [0, 1, 2].map(|k| p[k] as f64 - median[k]);
        if norm(d) < 20.0 {
            for k in 0..3 {
                sum[k] += p[k] as f64;
            }
            n += 1.0;
        }
    }
    if n > 0.0 {
        sum.map(|s| s / n)
    } else {
        median
    }
}

/// Gaussian blurs (σ in pixels; 0 = none) tried on the templates: rendering is sharp, a 2×
/// antialiased downscale blurs by about half a pixel, generated images by more.
const BLUR_SIGMAS: [f64; 7] = [0.0, 0.5, 0.8, 1.1, 1.4, 1.7, 2.0];

/// A normalised Gaussian kernel of standard deviation `sigma` (radius ⌈2.5σ⌉).
fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let radius = (2.5 * sigma).ceil() as i64;
    let k: Vec<f64> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Template sizes also tried, relative to the one giving the measured area.
const SCALES: [f64; 2] = [0.94, 1.06];

impl Reader {
    fn new(img: &RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let bg = background(img);
        let v = img
            .pixels()
            .map(|p| [0, 1, 2].map(|k| p[k] as f64 - bg[k]))
            .collect();
        Self { w, h, bg, v }
    }

    fn read(&self) -> Vec<ObjectReading> {
        let (regions, label) = self.regions();
        let mut out: Vec<ObjectReading> = regions
            .iter()
            .enumerate()
            .filter_map(|(id, r)| self.measure(r, id, &label))
            .collect();
        out.sort_by(|a, b| b.area.total_cmp(&a.area));
        out
    }

    /// Seed components (8-connected), specks dropped, each grown by a few pixels; a grown pixel
    /// goes to the component that reaches it first. Also gives each pixel's component
    /// (`usize::MAX` for none).
    fn regions(&self) -> (Vec<Region>, Vec<usize>) {
        let (w, h) = (self.w, self.h);
        let n = w * h;
        let dist: Vec<f64> = self.v.iter().map(|d| norm(*d)).collect();
        // A faint image (a generated one, say) is seeded at half its contrast, though never so
        // low that noise would seed objects.
        let mut sorted = dist.clone();
        let k = (n - 1) * 995 / 1000;
        let contrast = *sorted.select_nth_unstable_by(k, f64::total_cmp).1;
        let threshold = (0.5 * contrast).clamp(MIN_SEED_DISTANCE, SEED_DISTANCE);
        let seed: Vec<bool> = dist.iter().map(|&d| d >= threshold).collect();
        let min_seed = ((0.003 * n as f64).round() as usize).max(2);
        let max_seed = (0.4 * n as f64) as usize;
        let mut label = vec![usize::MAX; n];
        let mut kept: Vec<Region> = Vec::new();
        let mut queue = VecDeque::new();
        let mut component = Vec::new();
        for start in 0..n {
            if !seed[start] || label[start] != usize::MAX {
                continue;
            }
            // Provisional label for the flood fill; specks (and regions too large to be an
            // object: a misread background) are unlabelled again below, so that growth may
            // claim them.
            let id = kept.len();
            component.clear();
            component.push(start);
            label[start] = id;
            queue.push_back(start);
            while let Some(i) = queue.pop_front() {
                for j in neighbours(i, w, h) {
                    if seed[j] && label[j] == usize::MAX {
                        label[j] = id;
                        component.push(j);
                        queue.push_back(j);
                    }
                }
            }
            if (min_seed..=max_seed).contains(&component.len()) {
                kept.push(Region {
                    pixels: component.clone(),
                    seeds: component.len(),
                });
            } else {
                for &i in &component {
                    label[i] = usize::MAX - 1;
                }
            }
        }
        for l in label.iter_mut() {
            if *l == usize::MAX - 1 {
                *l = usize::MAX;
            }
        }
        // Grow, breadth first from every component at once.
        let grow = 2 + w.max(h) / 64;
        let mut depth = vec![0usize; n];
        queue.clear();
        for r in &kept {
            queue.extend(r.pixels.iter().copied());
        }
        while let Some(i) = queue.pop_front() {
            if depth[i] >= grow {
                continue;
            }
            for j in neighbours(i, w, h) {
                if label[j] == usize::MAX {
                    label[j] = label[i];
                    depth[j] = depth[i] + 1;
                    kept[label[i]].pixels.push(j);
                    queue.push_back(j);
                }
            }
        }
        (kept, label)
    }

    fn offset(&self, color: Color) -> [f64; 3] {
        let rgb = color.rgb();
        [0, 1, 2].map(|k| rgb[k] as f64 - self.bg[k])
    }

    /// The palette colour that best explains the region's pixels as mixtures of it and the
    /// background.
    fn unmix(&self, region: &Region) -> Color {
        let residual = |color: Color| {
            let u = self.offset(color);
            let uu = dot(u, u).max(1.0);
            region
                .pixels
                .iter()
                .map(|&i| {
                    let v = self.v[i];
                    let c = (dot(v, u) / uu).clamp(0.0, 1.0);
                    let r = [0, 1, 2].map(|k| v[k] - c * u[k]);
                    dot(r, r)
                })
                .sum::<f64>()
        };
        Color::ALL
            .into_iter()
            .map(|c| (c, residual(c)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c)
            .unwrap_or(Color::White)
    }

    fn measure(&self, region: &Region, id: usize, label: &[usize]) -> Option<ObjectReading> {
        let (w, h) = (self.w, self.h);
        let color = self.unmix(region);
        let u = self.offset(color);
        let uu = dot(u, u).max(1.0);
        // Coverage for that colour; the low end is left unclamped so that background noise
        // averages out of the area and centroid.
        let cov: Vec<(usize, f64)> = region
            .pixels
            .iter()
            .map(|&i| (i, (dot(self.v[i], u) / uu).clamp(-0.5, 1.0)))
            .collect();
        let area: f64 = cov.iter().map(|(_, c)| c).sum();
        if area.is_nan() || area <= 0.5 {
            return None;
        }
        let (mut sx, mut sy) = (0.0, 0.0);
        for &(i, c) in &cov {
            sx += c * ((i % w) as f64 + 0.5);
            sy += c * ((i / w) as f64 + 0.5);
        }
        let center = (sx / area, sy / area);
        if !(center.0.is_finite() && center.1.is_finite()) {
            return None;
        }
        // The mean colour of the core: pixels covered at least 0.8 × as much as the one ranked
        // at a quarter of the seeds.
        let mut levels: Vec<f64> = cov.iter().map(|(_, c)| *c).collect();
        levels.sort_by(|a, b| b.total_cmp(a));
        let top = (region.seeds / 4).clamp(1, levels.len());
        let threshold = 0.8 * levels[top - 1];
        let mut mean_rgb = [0.0; 3];
        let mut core = 0.0;
        for &(i, c) in &cov {
            if c >= threshold {
                for (k, m) in mean_rgb.iter_mut().enumerate() {
                    *m += self.v[i][k] + self.bg[k];
                }
                core += 1.0;
            }
        }
        let mean_rgb = mean_rgb.map(|m| m / f64::max(core, 1.0));

        let peak = levels[..top].iter().sum::<f64>() / top as f64;
        let fit = self.fit_shape(&cov, center, area, peak, |i| {
            if label[i] == id || label[i] == usize::MAX {
                (dot(self.v[i], u) / uu).clamp(-0.5, 1.0)
            } else {
                0.0
            }
        });
        let side = w.max(h) as f64;
        let size = if fit.diameter / side > SIZE_SPLIT {
            SizeClass::Large
        } else {
            SizeClass::Small
        };
        let position = Position::of_point(
            center.0 * side / w as f64,
            center.1 * side / h as f64,
            side as u32,
        );
        Some(ObjectReading {
            color,
            shape: fit.shape,
            position,
            size,
            center,
            area,
            diameter: fit.diameter,
            mean_rgb,
            shape_error: fit.error,
            shape_margin: fit.margin,
        })
    }

    /// Template matching: for each shape, the bounding radius giving `area` (and a little
    /// less or more), rendered at `center`, blurred by each of [`BLUR_SIGMAS`], scaled to fit;
    /// the least relative residual names the shape. `peak` is the object's measured
    /// full-coverage level (below 1 for a pale object, or a small blurred one), tried as a second
    /// hypothesis. `coverage` gives a pixel's coverage by the object (0 on other objects): the
    /// window around the object is measured whole, so that a blur wider than the region's growth
    /// still counts.
    fn fit_shape(
        &self,
        cov: &[(usize, f64)],
        center: (f64, f64),
        area: f64,
        peak: f64,
        coverage: impl Fn(usize) -> f64,
    ) -> ShapeFit {
        let (w, h) = (self.w as i64, self.h as i64);
        let r_max = (area / area_coefficient(Shape::Triangle)).sqrt() * SCALES[1];
        let pad = r_max + 6.0;
        // Window: the region and every template, clipped to the image.
        let (mut x0, mut y0) = (
            (center.0 - pad).floor() as i64,
            (center.1 - pad).floor() as i64,
        );
        let (mut x1, mut y1) = (
            (center.0 + pad).ceil() as i64,
            (center.1 + pad).ceil() as i64,
        );
        for &(i, _) in cov {
            let (x, y) = ((i as i64) % w, (i as i64) / w);
            x0 = x0.min(x - 2);
            y0 = y0.min(y - 2);
            x1 = x1.max(x + 3);
            y1 = y1.max(y + 3);
        }
        let (x0, y0, x1, y1) = (x0.max(0), y0.max(0), x1.min(w), y1.min(h));
        let (ww, wh) = ((x1 - x0).max(1) as usize, (y1 - y0).max(1) as usize);
        let mut measured = Vec::with_capacity(ww * wh);
        for y in y0..y0 + wh as i64 {
            for x in x0..x0 + ww as i64 {
                measured.push(coverage((y * w + x) as usize));
            }
        }
        let energy = measured.iter().map(|m| m * m).sum::<f64>().max(1e-9);

        let mut template = vec![0.0; ww * wh];
        let mut blurred = vec![0.0; ww * wh];
        let mut scratch = vec![0.0; ww * wh];
        let kernels: Vec<Vec<f64>> = BLUR_SIGMAS.iter().map(|&s| gaussian_kernel(s)).collect();
        // Residual of the template blurred by `kernel` and scaled to fit by least squares.
        let mut residual = |template: &[f64], kernel: &[f64]| {
            blur(template, &mut scratch, &mut blurred, ww, wh, kernel);
            let tt: f64 = blurred.iter().map(|t| t * t).sum();
            if tt <= 0.0 {
                return f64::INFINITY;
            }
            let mt: f64 = measured.iter().zip(&blurred).map(|(m, t)| m * t).sum();
            let a = (mt / tt).clamp(0.2, 2.0);
            measured
                .iter()
                .zip(blurred.iter())
                .map(|(m, t)| (m - a * t).powi(2))
                .sum::<f64>()
        };
        // Blur keeps the area, so the whole window's coverage measures it better than the
        // region's.
        let window_area: f64 = measured.iter().sum();
        let area = area.max(window_area);
        let local_center = (center.0 - x0 as f64, center.1 - y0 as f64);
        // Every shape at the size matching the area, under every blur, for each full-coverage
        // level (1, or the measured peak for a paler object, or a small blurred one); then the
        // two best shapes a little smaller and larger, under their best blur.
        let mut levels = vec![1.0];
        if peak < 0.85 {
            levels.push(peak.max(0.2));
        }
        let mut best: Vec<(Shape, f64, f64, usize)> = Vec::with_capacity(Shape::ALL.len());
        for shape in Shape::ALL {
            let mut shape_best = (shape, f64::INFINITY, 1.0, 0);
            for &level in &levels {
                let r = (area / level / area_coefficient(shape)).sqrt();
                render_template(&mut template, ww, wh, shape, r, local_center);
                for (k, kernel) in kernels.iter().enumerate() {
                    let err = residual(&template, kernel);
                    if err < shape_best.1 {
                        shape_best = (shape, err, r, k);
                    }
                }
            }
            best.push(shape_best);
        }
        best.sort_by(|a, b| a.1.total_cmp(&b.1));
        for entry in best.iter_mut().take(2) {
            let (shape, _, r0, k) = *entry;
            for scale in SCALES {
                render_template(&mut template, ww, wh, shape, r0 * scale, local_center);
                let err = residual(&template, &kernels[k]);
                if err < entry.1 {
                    entry.1 = err;
                    entry.2 = r0 * scale;
                }
            }
        }
        let mut best: Vec<(Shape, f64, f64)> = best
            .into_iter()
            .map(|(shape, err, r, _)| (shape, err / energy, r))
            .collect();
        best.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (shape, error, r) = best[0];
        ShapeFit {
            shape,
            diameter: 2.0 * r,
            error,
            margin: error - best.get(1).map_or(f64::INFINITY, |b| b.1),
        }
    }
}

/// Coverage of `shape` (bounding radius `r`, centre `c` in window pixels) on a `ww`×`wh`
/// window, supersampled like the renderer.
fn render_template(out: &mut [f64], ww: usize, wh: usize, shape: Shape, r: f64, c: (f64, f64)) {
    const N: usize = 4;
    let footprint = Footprint::new(shape, r);
    let reach = r + 0.75;
    for y in 0..wh {
        for x in 0..ww {
            let (dx, dy) = (x as f64 + 0.5 - c.0, y as f64 + 0.5 - c.1);
            out[y * ww + x] = if dx * dx + dy * dy > reach * reach {
                0.0
            } else {
                let mut covered = 0;
                for sy in 0..N {
                    let py = y as f64 + (sy as f64 + 0.5) / N as f64 - c.1;
                    for sx in 0..N {
                        let px = x as f64 + (sx as f64 + 0.5) / N as f64 - c.0;
                        covered += footprint.contains(px, py) as u32;
                    }
                }
                covered as f64 / (N * N) as f64
            };
        }
    }
}

/// Separable blur of `src` into `dst` with a symmetric `kernel` (zero outside the window).
fn blur(src: &[f64], tmp: &mut [f64], dst: &mut [f64], ww: usize, wh: usize, kernel: &[f64]) {
    if kernel.len() == 1 {
        dst.copy_from_slice(src);
        return;
    }
    let half = (kernel.len() / 2) as isize;
    for y in 0..wh {
        for x in 0..ww {
            let mut s = 0.0;
            for (k, wgt) in kernel.iter().enumerate() {
                let xx = x as isize + k as isize - half;
                if xx >= 0 && (xx as usize) < ww {
                    s += wgt * src[y * ww + xx as usize];
                }
            }
            tmp[y * ww + x] = s;
        }
    }
    for y in 0..wh {
        for x in 0..ww {
            let mut s = 0.0;
            for (k, wgt) in kernel.iter().enumerate() {
                let yy = y as isize + k as isize - half;
                if yy >= 0 && (yy as usize) < wh {
                    s += wgt * tmp[yy as usize * ww + x];
                }
            }
            dst[y * ww + x] = s;
        }
    }
}
