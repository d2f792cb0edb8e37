//! GroupNorm for the UNet, written so that every full-size operation hits a fast path of the
//! CPU backend.
//!
//! burn's `GroupNorm::forward` multiplies by `gamma.reshape([1, C, 1, 1])` and adds
//! `beta.reshape([1, C, 1, 1])`: a broadcast over the batch *and* the spatial dims, which
//! burn-flex has no SIMD kernel for (it walks both operands with a scalar strided iterator,
//! forward and backward). Here the affine parameters — and, in the ResBlocks, the ADM
//! scale-shift `·(1+scale)+shift` — are first folded into two small per-(sample, channel)
//! coefficient tensors `a, b [N, C]`, so the full-size work is `mean`, `x − mean`, `Σ(x−mean)²`
//! and one `(x−mean)·a + b` over `[N, C, H·W]` with a per-row scalar (a kernel burn-flex
//! vectorises). The parameters are those of burn's [`GroupNorm`] (same names, same checkpoints);
//! the result equals `GN(x)·(1+scale)+shift` up to float rounding.

use burn::nn::GroupNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `GN(x)` for `x [N, C, H, W]`, or `GN(x)·(1+scale)+shift` with `scale, shift [N, C]`.
pub(crate) fn group_norm_forward<B: Backend>(
    norm: &GroupNorm<B>,
    x: Tensor<B, 4>,
    scale_shift: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let groups = norm.num_groups;
    assert_eq!(c, norm.num_channels, "GroupNorm channel count");
    let cg = c / groups;
    let hidden = cg * h * w;
    let xg = x.reshape([n, groups, hidden]);
    let mean = xg.clone().sum_dim(2) / hidden as f64;
    let centered = xg - mean;
    let var = centered.clone().square().sum_dim(2) / hidden as f64;
    // [N, G, 1] → one value per (sample, channel), contiguous.
    let rstd = var
        .add_scalar(norm.epsilon)
        .sqrt()
        .recip()
        .repeat_dim(2, cg)
        .reshape([n, c]);
    let (gamma, beta) = match (&norm.gamma, &norm.beta) {
        (Some(g), Some(b)) if norm.affine => {
            (Some(g.val().reshape([1, c])), Some(b.val().reshape([1, c])))
        }
        _ => (None, None),
    };
    let mut a = match &gamma {
        Some(g) => rstd * g.clone(),
        None => rstd,
    };
    let mut b: Option<Tensor<B, 2>> = beta;
    if let Some((scale, shift)) = scale_shift {
        let factor = scale + 1.0;
        a = a * factor.clone();
        b = Some(match b {
            Some(beta) => factor * beta + shift,
            None => shift,
        });
    }
    let y = centered.reshape([n, c, h * w]) * a.reshape([n, c, 1]);
    let y = match b {
        // `[1, C]` (plain affine) → materialise per sample so the add is per-row scalar too.
        Some(b) => {
            let b = if b.dims()[0] == n {
                b
            } else {
                b.repeat_dim(0, n)
            };
            y + b.reshape([n, c, 1])
        }
        None => y,
    };
    y.reshape([n, c, h, w])
}
