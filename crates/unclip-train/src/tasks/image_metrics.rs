//! Per-image quality measures of `[3, S, S]` images in [-1, 1] (CHW, row-major): PSNR and the
//! gradient energy at the ground truth's edges (how sharp an image is where it should be).

/// Gradient magnitude (mean over channels of the forward-difference norm) above which a
/// ground-truth pixel counts as an edge: ~12 % of the [-1, 1] range per pixel, well above the
/// shapes world's background texture (±6/255) and any smooth shading.
pub const EDGE_THRESHOLD: f32 = 0.25;

/// PSNR in dB of `a` against `b` on the [0, 1] scale (peak 1); 100 dB for identical images.
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            // [-1, 1] → [0, 1] halves every difference.
            let d = (x.clamp(-1.0, 1.0) - y.clamp(-1.0, 1.0)) as f64 / 2.0;
            d * d
        })
        .sum::<f64>()
        / n as f64;
    if mse <= 1e-10 {
        100.0
    } else {
        -10.0 * mse.log10()
    }
}

/// Squared forward-difference gradient of every pixel of `img` (`[3, side, side]`), summed
/// over channels; the last row and column use the previous difference's neighbour (0).
fn gradient_energy(img: &[f32], side: usize) -> Vec<f32> {
    let plane = side * side;
    let mut g = vec![0f32; plane];
    for c in img.chunks_exact(plane).take(3) {
        for y in 0..side {
            for x in 0..side {
                let v = c[y * side + x];
                let dx = if x + 1 < side {
                    c[y * side + x + 1] - v
                } else {
                    0.0
                };
                let dy = if y + 1 < side {
                    c[(y + 1) * side + x] - v
                } else {
                    0.0
                };
                g[y * side + x] += dx * dx + dy * dy;
            }
        }
    }
    g
}

/// The edge pixels of `truth`: gradient magnitude (per channel, averaged) above
/// [`EDGE_THRESHOLD`].
pub fn edge_mask(truth: &[f32], side: usize) -> Vec<bool> {
    gradient_energy(truth, side)
        .into_iter()
        .map(|e| (e / 3.0).sqrt() > EDGE_THRESHOLD)
        .collect()
}

/// Mean squared gradient of `img` over the pixels of `mask` (0 for an empty mask).
pub fn edge_energy(img: &[f32], side: usize, mask: &[bool]) -> f64 {
    let g = gradient_energy(img, side);
    let (sum, n) = g
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .fold((0.0f64, 0usize), |(s, n), (&e, _)| (s + e as f64, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `side`² image: a bright square on a dark background, optionally blurred by a 3×3 box.
    fn square(side: usize, blur: bool) -> Vec<f32> {
        let mut img = vec![-0.6f32; 3 * side * side];
        for c in 0..3 {
            for y in side / 4..3 * side / 4 {
                for x in side / 4..3 * side / 4 {
                    img[c * side * side + y * side + x] = 0.8;
                }
            }
        }
        if !blur {
            return img;
        }
        let mut out = img.clone();
        for c in 0..3 {
            for y in 1..side - 1 {
                for x in 1..side - 1 {
                    let mut s = 0.0;
                    for dy in 0..3 {
                        for dx in 0..3 {
                            s += img[c * side * side + (y + dy - 1) * side + x + dx - 1];
                        }
                    }
                    out[c * side * side + y * side + x] = s / 9.0;
                }
            }
        }
        out
    }

    #[test]
    fn psnr_matches_its_definition() {
        let a = vec![0.0f32; 300];
        assert_eq!(psnr(&a, &a), 100.0);
        // A difference of 0.2 in [-1, 1] is 0.1 on [0, 1]: MSE 0.01 → 20 dB.
        let b = vec![0.2f32; 300];
        assert!((psnr(&a, &b) - 20.0).abs() < 1e-6);
    }

    #[test]
    fn blur_lowers_edge_energy_and_noise_free_flat_areas_are_not_edges() {
        let side = 32;
        let sharp = square(side, false);
        let blurred = square(side, true);
        let mask = edge_mask(&sharp, side);
        let n = mask.iter().filter(|&&m| m).count();
        // The square's border: about 4 sides × 16 px (each side's inner or outer row).
        assert!((40..=80).contains(&n), "{n} edge pixels");
        let e_sharp = edge_energy(&sharp, side, &mask);
        let e_blur = edge_energy(&blurred, side, &mask);
        assert!(e_sharp > 2.0 * e_blur, "{e_sharp} vs {e_blur}");
        let flat = vec![0.1f32; 3 * side * side];
        assert!(edge_mask(&flat, side).iter().all(|&m| !m));
        assert_eq!(edge_energy(&flat, side, &mask), 0.0);
    }
}
