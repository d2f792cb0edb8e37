//! GroupNorm with a per-(sample, channel) affine, an optional SiLU and an optional
//! multiplicative mask (dropout), fused into one pass forward and two backward:
//!
//! `y = act(x̂·a + b) · m`, `x̂ = (x − μ_g)/√(σ²_g + ε)` over each (sample, group).
//!
//! One (sample, group) block is one task of the thread pool. The forward keeps only the
//! per-block mean and reciprocal standard deviation; the backward recomputes `x̂` and the
//! activation from the input.

use rayon::prelude::*;

use super::math::sigmoid;

/// Sizes of one normalisation: `x [n, c, s]` in `groups` groups of `c / groups` channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NormShape {
    pub n: usize,
    pub c: usize,
    pub s: usize,
    pub groups: usize,
}

impl NormShape {
    fn block(&self) -> usize {
        self.c / self.groups * self.s
    }
}

/// Per (sample, group): mean and 1/√(var + ε).
pub(crate) type Stats = Vec<[f32; 2]>;

/// Sum of a slice, accumulated in f32 lanes and added up in f64 (a 64×4096 group has 262 144
/// elements; one f32 accumulator would lose ~4 digits).
fn sum(v: &[f32]) -> f64 {
    v.chunks(1024)
        .map(|c| {
            let mut acc = [0.0f32; 8];
            let mut it = c.chunks_exact(8);
            for ch in &mut it {
                for (a, x) in acc.iter_mut().zip(ch) {
                    *a += x;
                }
            }
            let tail: f32 = it.remainder().iter().sum();
            (acc.iter().sum::<f32>() + tail) as f64
        })
        .sum()
}

fn sum_sq_dev(v: &[f32], mean: f32) -> f64 {
    v.chunks(1024)
        .map(|c| {
            let mut acc = [0.0f32; 8];
            let mut it = c.chunks_exact(8);
            for ch in &mut it {
                for (a, x) in acc.iter_mut().zip(ch) {
                    let d = x - mean;
                    *a += d * d;
                }
            }
            let tail: f32 = it.remainder().iter().map(|x| (x - mean) * (x - mean)).sum();
            (acc.iter().sum::<f32>() + tail) as f64
        })
        .sum()
}

#[inline(always)]
fn silu(u: f32) -> f32 {
    u * sigmoid(u)
}

/// Forward pass: `(y, stats)`. `a`, `b` are `[n, c]`; `mask`, when given, is `[n, c, s]`.
pub(crate) fn forward(
    x: &[f32],
    a: &[f32],
    b: &[f32],
    mask: Option<&[f32]>,
    silu_act: bool,
    eps: f32,
    shape: NormShape,
) -> (Vec<f32>, Stats) {
    let NormShape { n, c, s, groups } = shape;
    assert_eq!(x.len(), n * c * s, "group norm: input size");
    assert_eq!(
        (a.len(), b.len()),
        (n * c, n * c),
        "group norm: coefficients"
    );
    let block = shape.block();
    let cg = c / groups;
    let mut y = vec![0.0f32; x.len()];
    let stats: Stats = y
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .enumerate()
        .map(|(blk, (yb, xb))| {
            let mean = (sum(xb) / block as f64) as f32;
            let var = sum_sq_dev(xb, mean) / block as f64;
            let rstd = (1.0 / (var + eps as f64).sqrt()) as f32;
            for k in 0..cg {
                let ch = blk * cg + k; // = sample·c + channel
                let alpha = rstd * a[ch];
                let beta = b[ch] - mean * alpha;
                let xs = &xb[k * s..(k + 1) * s];
                let ys = &mut yb[k * s..(k + 1) * s];
                match (silu_act, mask) {
                    (true, Some(m)) => {
                        let ms = &m[ch * s..(ch + 1) * s];
                        for ((y, &x), &m) in ys.iter_mut().zip(xs).zip(ms) {
                            *y = silu(x * alpha + beta) * m;
                        }
                    }
                    (true, None) => {
                        for (y, &x) in ys.iter_mut().zip(xs) {
                            *y = silu(x * alpha + beta);
                        }
                    }
                    (false, Some(m)) => {
                        let ms = &m[ch * s..(ch + 1) * s];
                        for ((y, &x), &m) in ys.iter_mut().zip(xs).zip(ms) {
                            *y = (x * alpha + beta) * m;
                        }
                    }
                    (false, None) => {
                        for (y, &x) in ys.iter_mut().zip(xs) {
                            *y = x * alpha + beta;
                        }
                    }
                }
            }
            [mean, rstd]
        })
        .collect();
    (y, stats)
}

/// Gradients of [`forward`]: `(dx, da, db)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dy: &[f32],
    x: &[f32],
    stats: &Stats,
    a: &[f32],
    b: &[f32],
    mask: Option<&[f32]>,
    silu_act: bool,
    shape: NormShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let NormShape { n, c, s, groups } = shape;
    assert_eq!(dy.len(), n * c * s, "group norm: gradient size");
    let block = shape.block();
    let cg = c / groups;
    let mut dx = vec![0.0f32; x.len()];
    let per_block: Vec<Vec<[f32; 2]>> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block).zip(dy.par_chunks(block)))
        .enumerate()
        .map(|(blk, (dxb, (xb, dyb)))| {
            let [mean, rstd] = stats[blk];
            let mut coef = Vec::with_capacity(cg);
            // Pass 1: du = dy·m·act'(u) into dx; per channel Σ du and Σ du·x̂.
            let (mut g1, mut g2) = (0.0f64, 0.0f64);
            for k in 0..cg {
                let ch = blk * cg + k;
                let (ac, bc) = (a[ch], b[ch]);
                let xs = &xb[k * s..(k + 1) * s];
                let dys = &dyb[k * s..(k + 1) * s];
                let du = &mut dxb[k * s..(k + 1) * s];
                du.copy_from_slice(dys);
                if let Some(m) = mask {
                    for (d, &m) in du.iter_mut().zip(&m[ch * s..(ch + 1) * s]) {
                        *d *= m;
                    }
                }
                if silu_act {
                    for (d, &x) in du.iter_mut().zip(xs) {
                        let u = (x - mean) * rstd * ac + bc;
                        let sg = sigmoid(u);
                        *d *= sg * (1.0 + u * (1.0 - sg));
                    }
                }
                let mut s_du = [0.0f32; 8];
                let mut s_dux = [0.0f32; 8];
                let mut it = du.chunks_exact(8).zip(xs.chunks_exact(8));
                for (dc, xc) in &mut it {
                    for l in 0..8 {
                        s_du[l] += dc[l];
                        s_dux[l] += dc[l] * ((xc[l] - mean) * rstd);
                    }
                }
                let tail = s - s % 8;
                let mut sd = s_du.iter().map(|&v| v as f64).sum::<f64>();
                let mut sdx = s_dux.iter().map(|&v| v as f64).sum::<f64>();
                for i in tail..s {
                    sd += du[i] as f64;
                    sdx += (du[i] * ((xs[i] - mean) * rstd)) as f64;
                }
                g1 += ac as f64 * sd;
                g2 += ac as f64 * sdx;
                coef.push([sdx as f32, sd as f32]);
            }
            // Pass 2: dx = rstd·(a·du − mean(dx̂) − x̂·mean(dx̂·x̂)).
            let k1 = (g1 / block as f64) as f32;
            let k2 = (g2 / block as f64) as f32;
            for k in 0..cg {
                let ac = a[blk * cg + k];
                let xs = &xb[k * s..(k + 1) * s];
                let d = &mut dxb[k * s..(k + 1) * s];
                for (d, &x) in d.iter_mut().zip(xs) {
                    let xh = (x - mean) * rstd;
                    *d = rstd * (ac * *d - k1 - xh * k2);
                }
            }
            coef
        })
        .collect();
    let mut da = Vec::with_capacity(n * c);
    let mut db = Vec::with_capacity(n * c);
    for [sdx, sd] in per_block.into_iter().flatten() {
        da.push(sdx);
        db.push(sd);
    }
    (dx, da, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + seed) * 0.917).sin() * 1.3 + 0.2)
            .collect()
    }

    /// The loss Σ y·g in f64 from the definition.
    fn loss(x: &[f32], a: &[f32], b: &[f32], m: Option<&[f32]>, act: bool, sh: NormShape) -> f64 {
        let NormShape { n, c, s, groups } = sh;
        let g = data(n * c * s, 7.7);
        let cg = c / groups;
        let mut total = 0.0;
        for nn in 0..n {
            for gr in 0..groups {
                let idx = |k: usize, i: usize| ((nn * c + gr * cg + k) * s) + i;
                let vals: Vec<f64> = (0..cg)
                    .flat_map(|k| (0..s).map(move |i| (k, i)))
                    .map(|(k, i)| x[idx(k, i)] as f64)
                    .collect();
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                for k in 0..cg {
                    let ch = nn * c + gr * cg + k;
                    for i in 0..s {
                        let xh = (x[idx(k, i)] as f64 - mean) / (var + 1e-5).sqrt();
                        let u = xh * a[ch] as f64 + b[ch] as f64;
                        let mut y = if act { u / (1.0 + (-u).exp()) } else { u };
                        if let Some(m) = m {
                            y *= m[idx(k, i)] as f64;
                        }
                        total += y * g[idx(k, i)] as f64;
                    }
                }
            }
        }
        total
    }

    #[test]
    fn forward_and_gradients_match_the_definition() {
        let sh = NormShape {
            n: 2,
            c: 6,
            s: 13,
            groups: 3,
        };
        let len = sh.n * sh.c * sh.s;
        let x = data(len, 0.1);
        let a = data(sh.n * sh.c, 3.3);
        let b = data(sh.n * sh.c, 5.5);
        let m: Vec<f32> = (0..len)
            .map(|i| if i % 5 == 0 { 0.0 } else { 1.25 })
            .collect();
        for (act, mask) in [(true, Some(&m[..])), (false, None), (true, None)] {
            let (y, st) = forward(&x, &a, &b, mask, act, 1e-5, sh);
            let g = data(len, 7.7);
            let got: f64 = y.iter().zip(&g).map(|(y, g)| (y * g) as f64).sum();
            let want = loss(&x, &a, &b, mask, act, sh);
            assert!((got - want).abs() < 1e-3, "loss {got} vs {want}");
            let (dx, da, db) = backward(&g, &x, &st, &a, &b, mask, act, sh);
            let h = 1e-3f32;
            let fd = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * h as f64);
            for i in (0..len).step_by(7) {
                let num = fd(&|e| {
                    let mut xx = x.clone();
                    xx[i] += e;
                    loss(&xx, &a, &b, mask, act, sh)
                });
                assert!(
                    (dx[i] as f64 - num).abs() < 3e-3,
                    "dx[{i}] {} vs {num}",
                    dx[i]
                );
            }
            for i in 0..sh.n * sh.c {
                let na = fd(&|e| {
                    let mut aa = a.clone();
                    aa[i] += e;
                    loss(&x, &aa, &b, mask, act, sh)
                });
                let nb = fd(&|e| {
                    let mut bb = b.clone();
                    bb[i] += e;
                    loss(&x, &a, &bb, mask, act, sh)
                });
                assert!(
                    (da[i] as f64 - na).abs() < 3e-3,
                    "da[{i}] {} vs {na}",
                    da[i]
                );
                assert!(
                    (db[i] as f64 - nb).abs() < 3e-3,
                    "db[{i}] {} vs {nb}",
                    db[i]
                );
            }
        }
    }
}
