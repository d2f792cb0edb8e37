//! The same operations written with burn tensor ops, for every backend other than the CPU one
//! (CUDA, Vulkan) and as the reference the CPU kernels are tested against.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Tensor;

/// See [`crate::conv3x3`].
pub fn conv3x3<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 4> {
    conv2d(x, weight, bias, ConvOptions::new([1, 1], [1, 1], [1, 1], 1))
}

/// See [`crate::group_norm`]. The affine coefficients are folded into per-(sample, channel)
/// factors first, so the full-size work is one multiply-add with a per-row scalar.
pub fn group_norm<B: Backend>(
    x: Tensor<B, 4>,
    groups: usize,
    eps: f64,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    silu_act: bool,
    mask: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let cg = c / groups;
    let hidden = cg * h * w;
    let xg = x.reshape([n, groups, hidden]);
    let mean = xg.clone().sum_dim(2) / hidden as f64;
    let centered = xg - mean;
    let var = centered.clone().square().sum_dim(2) / hidden as f64;
    let rstd = var
        .add_scalar(eps)
        .sqrt()
        .recip()
        .repeat_dim(2, cg)
        .reshape([n, c]);
    let y = centered.reshape([n, c, h * w]) * (rstd * a).reshape([n, c, 1]) + b.reshape([n, c, 1]);
    let mut y = y.reshape([n, c, h, w]);
    if silu_act {
        y = silu(y);
    }
    match mask {
        Some(m) => y * m,
        None => y,
    }
}

/// See [`crate::attention`]. The key bias enters the score product as one extra channel
/// (1 on the query side, the bias on the key side) rather than as a broadcast add over the
/// whole score tensor, and the softmax normalisation divides the small `[S, dh]` product.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_bias: Option<Tensor<B, 2>>,
    scale: f64,
) -> Tensor<B, 4> {
    let [n, heads, _, s] = q.dims();
    let l = k.dims()[3];
    let mut q = q * scale;
    let mut k = k;
    if let Some(bias) = key_bias {
        let device = q.device();
        k = Tensor::cat(vec![k, bias.reshape([n, 1, 1, l]).repeat_dim(1, heads)], 2);
        q = Tensor::cat(vec![q, Tensor::ones([n, heads, 1, s], &device)], 2);
    }
    let scores = q.swap_dims(2, 3).matmul(k);
    let max = scores.clone().detach().max_dim(3);
    let e = (scores - max).exp();
    let sum = e.clone().sum_dim(3);
    (e.matmul(v.swap_dims(2, 3)) / sum).swap_dims(2, 3)
}
