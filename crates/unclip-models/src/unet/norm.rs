//! The UNet's GroupNorms on [`unclip_kernels::group_norm`]: burn's [`GroupNorm`] parameters
//! (same names, same checkpoints), the ADM scale-shift `GN(h)·(1+scale)+shift`, the SiLU after
//! it and the dropout mask all go into one fused operation. The affine parameters and the
//! scale-shift are first folded into per-(sample, channel) coefficients `a, b [N, C]` (small
//! tensors, differentiated by burn), so the kernel sees `act(x̂·a + b)·mask`.

use burn::nn::GroupNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `act(GN(x)·(1+scale)+shift)·mask` for `x [N, C, H, W]` with `scale, shift [N, C]` (or plain
/// `act(GN(x))·mask` without them); `act` is SiLU when `silu`, else the identity.
pub(crate) fn group_norm_forward<B: Backend>(
    norm: &GroupNorm<B>,
    x: Tensor<B, 4>,
    scale_shift: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
    silu: bool,
    mask: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let [n, c, _, _] = x.dims();
    assert_eq!(c, norm.num_channels, "GroupNorm channel count");
    let device = x.device();
    let (gamma, beta) = match (&norm.gamma, &norm.beta) {
        (Some(g), Some(b)) if norm.affine => (g.val().reshape([1, c]), b.val().reshape([1, c])),
        _ => (
            Tensor::ones([1, c], &device),
            Tensor::zeros([1, c], &device),
        ),
    };
    let (a, b) = match scale_shift {
        Some((scale, shift)) => {
            let factor = scale + 1.0;
            (factor.clone() * gamma, factor * beta + shift)
        }
        None => (gamma.repeat_dim(0, n), beta.repeat_dim(0, n)),
    };
    unclip_kernels::group_norm(x, norm.num_groups, norm.epsilon, a, b, silu, mask)
}
