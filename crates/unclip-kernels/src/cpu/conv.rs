//! 3×3 convolution (stride 1, zero padding 1) of a whole batch as three matrix products, forward
//! and backward.
//!
//! The batch is laid out as one tall, pixel-major, zero-padded image ("the plane"): the
//! samples' images are stacked vertically with one zero row above each and one below the
//! last, and one zero column on each side; the plane is flattened row by row (plus two
//! trailing zero pixels), each pixel holding its `C` channels contiguously. In that layout the
//! three taps `(dy, 0..3)` of one kernel row, for every output pixel of every sample, are one
//! strided matrix `[3·C_in, Q]` — element `(dx·C_in + c, q)` sits at `(q + dy·(W+2))·C_in +
//! dx·C_in + c` — so
//!
//! * forward: `Y = Σ_dy W_dy · window_dy` — three products `[C_out, 3·C_in] × [3·C_in, Q]`
//!   over the whole batch at once (`Q` ≈ N·H·W, large enough for both cores; the depth
//!   `3·C_in` keeps the products efficient at the few channels of small UNets);
//! * weight gradient: `dW_dy = dY · window_dyᵀ`, the batch summed inside the product;
//! * input gradient: the forward convolution of the padded output gradient with the flipped,
//!   transposed kernel.
//!
//! The outputs at the padding columns and between samples are computed and dropped
//! (≈ 3 % extra work at 64 px, ≈ 40 % at 8 px). No im2col copy: the products read the shifted
//! windows in place.

use rayon::prelude::*;

use super::gemm::{gemm, Threads, View, ViewMut};

/// Sizes of one convolution and of its padded plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvShape {
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
}

impl ConvShape {
    /// Width of a padded row.
    fn wp(&self) -> usize {
        self.w + 2
    }

    /// Pixels of the plane: `N·(H+1)+1` padded rows, plus two so the last shifted window
    /// fits.
    fn plane(&self) -> usize {
        (self.n * (self.h + 1) + 1) * self.wp() + 2
    }

    /// Output positions computed (every padded row between the first and last zero row, all
    /// columns).
    fn q(&self) -> usize {
        (self.n * (self.h + 1) - 1) * self.wp()
    }

    /// Index in a `q`-long output row of pixel `(i, j)` of sample `n`.
    fn out_index(&self, n: usize, i: usize, j: usize) -> usize {
        (n * (self.h + 1) + i) * self.wp() + j
    }
}

/// `x [N, C, H, W]` → `[plane, C]` (see the module docs).
pub(crate) fn to_plane(x: &[f32], shape: ConvShape, channels: usize) -> Vec<f32> {
    let ConvShape { n, h, w, .. } = shape;
    assert_eq!(x.len(), n * channels * h * w, "conv: input size");
    let mut out = vec![0.0f32; channels * shape.plane()];
    // Padded row `r = 1 + s·(H+1) + i` holds row `i` of sample `s`.
    out.par_chunks_mut(channels * shape.wp())
        .enumerate()
        .for_each(|(r, dst)| {
            let Some((s, i)) = r.checked_sub(1).map(|r| (r / (h + 1), r % (h + 1))) else {
                return;
            };
            if s >= n || i >= h {
                return;
            }
            for c in 0..channels {
                let src = &x[((s * channels + c) * h + i) * w..][..w];
                for (j, &v) in src.iter().enumerate() {
                    dst[(1 + j) * channels + c] = v;
                }
            }
        });
    out
}

/// `[C, q]` output rows → `[N, C, H, W]`, plus `bias[c]` when given.
fn from_rows(rows: &[f32], shape: ConvShape, channels: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let ConvShape { n, h, w, .. } = shape;
    let q = shape.q();
    let mut out = vec![0.0f32; n * channels * h * w];
    out.par_chunks_mut(h * w).enumerate().for_each(|(sc, dst)| {
        let (s, c) = (sc / channels, sc % channels);
        let b = bias.map_or(0.0, |b| b[c]);
        let src = &rows[c * q..(c + 1) * q];
        for i in 0..h {
            let at = shape.out_index(s, i, 0);
            for (d, v) in dst[i * w..(i + 1) * w].iter_mut().zip(&src[at..at + w]) {
                *d = v + b;
            }
        }
    });
    out
}

/// `[N, C, H, W]` → `[C, q]` rows with zeros at the positions [`from_rows`] drops.
fn to_rows(y: &[f32], shape: ConvShape, channels: usize) -> Vec<f32> {
    let ConvShape { n, h, w, .. } = shape;
    let q = shape.q();
    let mut out = vec![0.0f32; channels * q];
    out.par_chunks_mut(q).enumerate().for_each(|(c, dst)| {
        for s in 0..n {
            let src = &y[(s * channels + c) * h * w..][..h * w];
            for i in 0..h {
                let at = shape.out_index(s, i, 0);
                dst[at..at + w].copy_from_slice(&src[i * w..(i + 1) * w]);
            }
        }
    });
    out
}

/// `[C_out, C_in, 3, 3]` → `[3, C_out, 3·C_in]`: per kernel row `dy`, the matrix whose
/// column `dx·C_in + c` is tap `(dy, dx)` of input channel `c`.
fn row_taps(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    assert_eq!(weight.len(), cout * cin * 9, "conv: weight size");
    let mut t = vec![0.0f32; 9 * cout * cin];
    for o in 0..cout {
        for i in 0..cin {
            for k in 0..9 {
                let (dy, dx) = (k / 3, k % 3);
                t[(dy * cout + o) * 3 * cin + dx * cin + i] = weight[(o * cin + i) * 9 + k];
            }
        }
    }
    t
}

/// The kernel of the input gradient: `W'[c_in, c_out, dy, dx] = W[c_out, c_in, 2−dy, 2−dx]`.
fn flipped(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut f = vec![0.0f32; 9 * cout * cin];
    for o in 0..cout {
        for i in 0..cin {
            for k in 0..9 {
                f[(i * cout + o) * 9 + 8 - k] = weight[(o * cin + i) * 9 + k];
            }
        }
    }
    f
}

/// Forward pass: `(y [N, C_out, H, W], the input plane)`; the plane is what the backward pass
/// needs (keep it instead of the input).
pub(crate) fn forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
) -> (Vec<f32>, Vec<f32>) {
    let xp = to_plane(x, shape, shape.cin);
    let y = forward_plane(&xp, weight, bias, shape);
    (y, xp)
}

/// The forward pass from an input plane.
pub(crate) fn forward_plane(
    xp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
) -> Vec<f32> {
    let ConvShape { cin, cout, .. } = shape;
    let (q, k) = (shape.q(), 3 * cin);
    assert_eq!(xp.len(), cin * shape.plane(), "conv: plane size");
    let mut rows = vec![0.0f32; cout * q];
    let taps = row_taps(weight, cout, cin);
    for dy in 0..3 {
        gemm(
            ViewMut::rows(&mut rows, cout, q),
            dy > 0,
            View::rows(&taps[dy * cout * k..(dy + 1) * cout * k], cout, k),
            View::new(xp, dy * shape.wp() * cin, [k, q], [1, cin]),
            1.0,
            Threads::Pool,
        );
    }
    from_rows(&rows, shape, cout, bias)
}

/// Gradients of one convolution; each only when asked for.
pub(crate) struct ConvGrads {
    pub x: Option<Vec<f32>>,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

/// Backward pass from the output gradient `dy [N, C_out, H, W]`, the forward's input plane and
/// the weight. `need = [x, weight, bias]`.
pub(crate) fn backward(
    dy: &[f32],
    xp: &[f32],
    weight: &[f32],
    shape: ConvShape,
    need: [bool; 3],
) -> ConvGrads {
    let ConvShape { n, cin, cout, h, w } = shape;
    let (q, k) = (shape.q(), 3 * cin);
    let bias = need[2].then(|| {
        (0..cout)
            .into_par_iter()
            .map(|c| {
                let sum: f64 = (0..n)
                    .flat_map(|s| &dy[(s * cout + c) * h * w..][..h * w])
                    .map(|&v| v as f64)
                    .sum();
                sum as f32
            })
            .collect()
    });
    let dw = need[1].then(|| {
        let dyr = to_rows(dy, shape, cout);
        let mut dtaps = vec![0.0f32; 9 * cout * cin];
        for (r, dst) in dtaps.chunks_mut(cout * k).enumerate() {
            gemm(
                ViewMut::rows(dst, cout, k),
                false,
                View::rows(&dyr, cout, q),
                View::new(xp, r * shape.wp() * cin, [q, k], [cin, 1]),
                1.0,
                Threads::Pool,
            );
        }
        let mut dw = vec![0.0f32; cout * cin * 9];
        for o in 0..cout {
            for i in 0..cin {
                for t in 0..9 {
                    let (r, c) = (t / 3, t % 3);
                    dw[(o * cin + i) * 9 + t] = dtaps[(r * cout + o) * k + c * cin + i];
                }
            }
        }
        dw
    });
    let dx = need[0].then(|| {
        let transposed = ConvShape {
            cin: cout,
            cout: cin,
            ..shape
        };
        let dyp = to_plane(dy, transposed, cout);
        forward_plane(&dyp, &flipped(weight, cout, cin), None, transposed)
    });
    ConvGrads {
        x: dx,
        weight: dw,
        bias,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one output at a time.
    fn naive(x: &[f32], w: &[f32], b: &[f32], s: ConvShape) -> Vec<f32> {
        let ConvShape {
            n,
            cin,
            cout,
            h,
            w: wd,
        } = s;
        let mut y = vec![0.0; n * cout * h * wd];
        for nn in 0..n {
            for o in 0..cout {
                for i in 0..h {
                    for j in 0..wd {
                        let mut acc = b[o] as f64;
                        for c in 0..cin {
                            for dy in 0..3 {
                                for dx in 0..3 {
                                    let (ii, jj) = (i + dy, j + dx);
                                    if ii < 1 || jj < 1 || ii > h || jj > wd {
                                        continue;
                                    }
                                    let xv = x[((nn * cin + c) * h + ii - 1) * wd + jj - 1];
                                    acc += (xv * w[((o * cin + c) * 3 + dy) * 3 + dx]) as f64;
                                }
                            }
                        }
                        y[((nn * cout + o) * h + i) * wd + j] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn data(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + seed) * 0.731).sin())
            .collect()
    }

    #[test]
    fn forward_and_gradients_match_the_definition() {
        let s = ConvShape {
            n: 3,
            cin: 4,
            cout: 5,
            h: 6,
            w: 7,
        };
        let x = data(s.n * s.cin * s.h * s.w, 0.3);
        let w = data(s.cout * s.cin * 9, 1.7);
        let b = data(s.cout, 2.9);
        let (y, xp) = forward(&x, &w, Some(&b), s);
        let want = naive(&x, &w, &b, s);
        for (a, e) in y.iter().zip(&want) {
            assert!((a - e).abs() < 1e-4, "{a} vs {e}");
        }
        // Gradients of L = Σ y·g against central differences of the definition (it is linear
        // in each argument, so differences are exact up to rounding).
        let g = data(y.len(), 4.1);
        let grads = backward(&g, &xp, &w, s, [true, true, true]);
        let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
            naive(x, w, b, s)
                .iter()
                .zip(&g)
                .map(|(a, b)| (a * b) as f64)
                .sum()
        };
        let eps = 1e-2f32;
        let check = |got: &[f32], probe: &dyn Fn(usize, f32) -> f64| {
            for i in (0..got.len()).step_by(got.len() / 13 + 1) {
                let fd = (probe(i, eps) - probe(i, -eps)) / (2.0 * eps as f64);
                assert!((got[i] as f64 - fd).abs() < 2e-3, "{i}: {} vs {fd}", got[i]);
            }
        };
        check(&grads.x.unwrap(), &|i, e| {
            let mut xx = x.clone();
            xx[i] += e;
            loss(&xx, &w, &b)
        });
        check(&grads.weight.unwrap(), &|i, e| {
            let mut ww = w.clone();
            ww[i] += e;
            loss(&x, &ww, &b)
        });
        check(&grads.bias.unwrap(), &|i, e| {
            let mut bb = b.clone();
            bb[i] += e;
            loss(&x, &w, &bb)
        });
    }
}
