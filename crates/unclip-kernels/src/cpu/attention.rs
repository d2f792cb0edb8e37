//! Softmax attention in the UNet's channel-major layout, forward and backward.
//!
//! For each batch·head `b`: `q [dh, S]`, `k, v [dh, L]` (columns are tokens),
//! `P = softmax_rows(scale·qᵀk + bias)` `[S, L]`, `o = v·Pᵀ` `[dh, S]`. The probabilities
//! are kept for the backward pass:
//! `dP = dOᵀ·v`, `dS = P ∘ (dP − rowsum(P ∘ dP))`, `dq = scale·k·dSᵀ`, `dk = scale·q·dS`,
//! `dv = dO·P`. One batch·head is one task of the thread pool; its products run on that
//! thread.

use rayon::prelude::*;

use super::gemm::{gemm, Threads, View, ViewMut};
use super::math::exp;

/// Sizes: `batch` = samples·heads, `heads` (the bias is per sample), `dh` channels per head,
/// `s` queries, `l` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    pub dh: usize,
    pub s: usize,
    pub l: usize,
}

/// Row-wise softmax in place, with an additive per-key bias.
fn softmax_rows(p: &mut [f32], l: usize, bias: Option<&[f32]>) {
    for row in p.chunks_exact_mut(l) {
        if let Some(bias) = bias {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// Forward pass: `(o [batch, dh, s], P [batch, s, l])`. `bias` is `[batch / heads, l]`.
pub(crate) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    scale: f32,
    sh: AttnShape,
) -> (Vec<f32>, Vec<f32>) {
    let AttnShape {
        batch,
        heads,
        dh,
        s,
        l,
    } = sh;
    assert_eq!(q.len(), batch * dh * s, "attention: q size");
    assert_eq!(
        (k.len(), v.len()),
        (batch * dh * l, batch * dh * l),
        "attention: k, v"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), batch / heads * l, "attention: bias size");
    }
    let mut o = vec![0.0f32; batch * dh * s];
    let mut p = vec![0.0f32; batch * s * l];
    o.par_chunks_mut(dh * s)
        .zip(p.par_chunks_mut(s * l))
        .enumerate()
        .for_each(|(b, (ob, pb))| {
            let qb = &q[b * dh * s..(b + 1) * dh * s];
            let kb = &k[b * dh * l..(b + 1) * dh * l];
            let vb = &v[b * dh * l..(b + 1) * dh * l];
            gemm(
                ViewMut::rows(pb, s, l),
                false,
                View::rows(qb, dh, s).t(),
                View::rows(kb, dh, l),
                scale,
                Threads::One,
            );
            softmax_rows(
                pb,
                l,
                bias.map(|bi| &bi[(b / heads) * l..(b / heads + 1) * l]),
            );
            gemm(
                ViewMut::rows(ob, dh, s),
                false,
                View::rows(vb, dh, l),
                View::rows(pb, s, l).t(),
                1.0,
                Threads::One,
            );
        });
    (o, p)
}

/// Gradients `(dq, dk, dv)` from `dO [batch, dh, s]` and the forward's inputs and `P`.
pub(crate) fn backward(
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f32],
    scale: f32,
    sh: AttnShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let AttnShape {
        batch, dh, s, l, ..
    } = sh;
    let mut dq = vec![0.0f32; batch * dh * s];
    let mut dk = vec![0.0f32; batch * dh * l];
    let mut dv = vec![0.0f32; batch * dh * l];
    dq.par_chunks_mut(dh * s)
        .zip(dk.par_chunks_mut(dh * l).zip(dv.par_chunks_mut(dh * l)))
        .enumerate()
        .for_each(|(b, (dqb, (dkb, dvb)))| {
            let qb = &q[b * dh * s..(b + 1) * dh * s];
            let kb = &k[b * dh * l..(b + 1) * dh * l];
            let vb = &v[b * dh * l..(b + 1) * dh * l];
            let pb = &p[b * s * l..(b + 1) * s * l];
            let db = &dout[b * dh * s..(b + 1) * dh * s];
            let mut ds = vec![0.0f32; s * l];
            // dP = dOᵀ·v
            gemm(
                ViewMut::rows(&mut ds, s, l),
                false,
                View::rows(db, dh, s).t(),
                View::rows(vb, dh, l),
                1.0,
                Threads::One,
            );
            // dS = P ∘ (dP − Σ_l P∘dP)
            for (dr, pr) in ds.chunks_exact_mut(l).zip(pb.chunks_exact(l)) {
                let dot: f32 = dr.iter().zip(pr).map(|(d, p)| d * p).sum();
                for (d, &p) in dr.iter_mut().zip(pr) {
                    *d = p * (*d - dot);
                }
            }
            gemm(
                ViewMut::rows(dqb, dh, s),
                false,
                View::rows(kb, dh, l),
                View::rows(&ds, s, l).t(),
                scale,
                Threads::One,
            );
            gemm(
                ViewMut::rows(dkb, dh, l),
                false,
                View::rows(qb, dh, s),
                View::rows(&ds, s, l),
                scale,
                Threads::One,
            );
            gemm(
                ViewMut::rows(dvb, dh, l),
                false,
                View::rows(db, dh, s),
                View::rows(pb, s, l),
                1.0,
                Threads::One,
            );
        });
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 + seed) * 1.37).sin()).collect()
    }

    fn loss(q: &[f32], k: &[f32], v: &[f32], bias: &[f32], scale: f32, sh: AttnShape) -> f64 {
        let AttnShape {
            batch,
            heads,
            dh,
            s,
            l,
        } = sh;
        let g = data(batch * dh * s, 9.1);
        let mut total = 0.0;
        for b in 0..batch {
            for i in 0..s {
                let scores: Vec<f64> = (0..l)
                    .map(|j| {
                        (0..dh)
                            .map(|d| (q[(b * dh + d) * s + i] * k[(b * dh + d) * l + j]) as f64)
                            .sum::<f64>()
                            * scale as f64
                            + bias[(b / heads) * l + j] as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dh {
                    let o: f64 = (0..l)
                        .map(|j| e[j] / z * v[(b * dh + d) * l + j] as f64)
                        .sum();
                    total += o * g[(b * dh + d) * s + i] as f64;
                }
            }
        }
        total
    }

    #[test]
    fn forward_and_gradients_match_the_definition() {
        let sh = AttnShape {
            batch: 4,
            heads: 2,
            dh: 3,
            s: 5,
            l: 7,
        };
        let q = data(sh.batch * sh.dh * sh.s, 0.5);
        let k = data(sh.batch * sh.dh * sh.l, 1.5);
        let v = data(sh.batch * sh.dh * sh.l, 2.5);
        let bias: Vec<f32> = (0..2 * sh.l)
            .map(|i| if i % 4 == 1 { -10_000.0 } else { 0.0 })
            .collect();
        let scale = 0.6;
        let (o, p) = forward(&q, &k, &v, Some(&bias), scale, sh);
        let g = data(o.len(), 9.1);
        let got: f64 = o.iter().zip(&g).map(|(a, b)| (a * b) as f64).sum();
        let want = loss(&q, &k, &v, &bias, scale, sh);
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        let (dq, dk, dv) = backward(&g, &q, &k, &v, &p, scale, sh);
        let h = 1e-3f32;
        for (grad, which) in [(&dq, 0), (&dk, 1), (&dv, 2)] {
            for i in 0..grad.len() {
                let f = |e: f32| {
                    let (mut qq, mut kk, mut vv) = (q.clone(), k.clone(), v.clone());
                    [&mut qq, &mut kk, &mut vv][which][i] += e;
                    loss(&qq, &kk, &vv, &bias, scale, sh)
                };
                let num = (f(h) - f(-h)) / (2.0 * h as f64);
                assert!(
                    (grad[i] as f64 - num).abs() < 2e-3,
                    "{which}[{i}] {} vs {num}",
                    grad[i]
                );
            }
        }
    }
}
