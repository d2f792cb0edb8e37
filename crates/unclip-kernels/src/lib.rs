//! The UNet's hot operations, fast on the CPU.
//!
//! Job: three operations that make up nearly all of a UNet training step —
//! [`conv3x3`], [`group_norm`] (GroupNorm with a per-sample affine, SiLU and a dropout mask
//! fused) and [`attention`] (softmax attention in the channel-major layout). On burn-flex
//! (`Flex`, and `Autodiff<Flex>` for training) each runs as one hand-written kernel split over
//! rayon's threads, with its own backward pass registered in burn's autodiff graph; composed of
//! generic burn ops, the same steps cost many single-threaded passes over memory. On any other
//! backend (CUDA, Vulkan) the functions run the burn-op versions in [`generic`], which are also
//! what the kernels are tested against.
//!
//! Boundaries: burn tensors in and out, generic over the backend; no model, no parameters, no
//! randomness (dropout masks come in as tensors).
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): a leaf of
//! **models**, their CPU compute.

mod cpu;
mod flex;
pub mod generic;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use flex::{all_f32, path, prim, tensor, NormArgs, Path};

/// 3×3 convolution, stride 1, zero padding 1: `x [N, C_in, H, W]`, `weight [C_out, C_in, 3, 3]`
/// (PyTorch layout), `bias [C_out]` → `[N, C_out, H, W]`.
pub fn conv3x3<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 4> {
    let [_, cin, _, _] = x.dims();
    let [_, wcin, kh, kw] = weight.dims();
    assert_eq!(
        (wcin, kh, kw),
        (cin, 3, 3),
        "conv3x3: weight {:?} for {cin} input channels",
        weight.dims()
    );
    let f32s =
        all_f32(&[Some(&x), Some(&weight)]) && bias.as_ref().is_none_or(|b| all_f32(&[Some(b)]));
    match path::<B>().filter(|_| f32s) {
        Some(Path::Inference) => tensor::<B, _, 4>(flex::conv3x3_inference(
            prim(x),
            prim(weight),
            bias.map(prim),
        )),
        Some(Path::Autodiff) => tensor::<B, _, 4>(flex::conv3x3_autodiff(
            prim(x),
            prim(weight),
            bias.map(prim),
        )),
        None => generic::conv3x3(x, weight, bias),
    }
}

/// GroupNorm with a per-(sample, channel) affine, then optionally SiLU, then optionally a
/// multiplicative mask: `act(x̂·a + b) · mask`, where `x̂` is `x [N, C, H, W]` standardised over
/// each (sample, group of `C / groups` channels) with variance offset `eps`, and `a, b [N, C]`.
///
/// A plain GroupNorm passes its `γ, β` repeated per sample; ADM's scale-shift passes
/// `γ·(1+scale)` and `β·(1+scale)+shift`. The mask (dropout's kept/scaled units) gets no
/// gradient.
///
/// # Panics
/// When `C` is not a multiple of `groups` or the coefficient shapes are not `[N, C]`.
pub fn group_norm<B: Backend>(
    x: Tensor<B, 4>,
    groups: usize,
    eps: f64,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    silu: bool,
    mask: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let [n, c, _, _] = x.dims();
    assert!(
        groups > 0 && c % groups == 0,
        "{c} channels in {groups} groups"
    );
    assert_eq!(
        (a.dims(), b.dims()),
        ([n, c], [n, c]),
        "group_norm: a, b must be [N, C]"
    );
    if let Some(m) = &mask {
        assert_eq!(m.dims(), x.dims(), "group_norm: mask shape");
    }
    let args = NormArgs {
        groups,
        eps: eps as f32,
        silu,
    };
    let f32s = all_f32(&[Some(&a), Some(&b)]) && all_f32(&[Some(&x), mask.as_ref()]);
    match path::<B>().filter(|_| f32s) {
        Some(Path::Inference) => tensor::<B, _, 4>(flex::group_norm_inference(
            prim(x),
            prim(a),
            prim(b),
            mask.map(prim),
            args,
        )),
        Some(Path::Autodiff) => tensor::<B, _, 4>(flex::group_norm_autodiff(
            prim(x),
            prim(a),
            prim(b),
            mask.map(|m| flex::inner(prim(m))),
            args,
        )),
        None => generic::group_norm(x, groups, eps, a, b, silu, mask),
    }
}

/// Softmax attention, channel-major: `q [N, heads, dh, S]`, `k, v [N, heads, dh, L]` →
/// `[N, heads, dh, S]` with output column `s` = `Σ_l softmax_l(scale·q_s·k_l + bias_l) v_l`.
/// `key_bias [N, L]` (e.g. −10 000 at padded context tokens) gets no gradient.
///
/// # Panics
/// When the shapes do not fit together.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_bias: Option<Tensor<B, 2>>,
    scale: f64,
) -> Tensor<B, 4> {
    let [n, heads, dh, _] = q.dims();
    let [kn, kh, kd, l] = k.dims();
    assert_eq!(
        (kn, kh, kd),
        (n, heads, dh),
        "attention: k shape {:?}",
        k.dims()
    );
    assert_eq!(v.dims(), k.dims(), "attention: v shape");
    if let Some(b) = &key_bias {
        assert_eq!(b.dims(), [n, l], "attention: key bias shape");
    }
    let f32s = all_f32(&[Some(&q), Some(&k), Some(&v)])
        && key_bias.as_ref().is_none_or(|b| all_f32(&[Some(b)]));
    match path::<B>().filter(|_| f32s) {
        Some(Path::Inference) => tensor::<B, _, 4>(flex::attention_inference(
            prim(q),
            prim(k),
            prim(v),
            key_bias.map(prim),
            scale as f32,
        )),
        Some(Path::Autodiff) => tensor::<B, _, 4>(flex::attention_autodiff(
            prim(q),
            prim(k),
            prim(v),
            key_bias.map(|b| flex::inner(prim(b))),
            scale as f32,
        )),
        None => generic::attention(q, k, v, key_bias, scale),
    }
}

#[cfg(test)]
mod tests;
