//! 3×3 convolution (stride 1, padding 1) as nine matmuls over shifted views, for the CPU
//! backend.
//!
//! burn-flex's `conv2d` is an im2col + gemm forward, but its gradient goes through burn's
//! generic fallbacks (a transposed convolution for the input, a convolution with the whole
//! image as kernel over dim-swapped copies for the weight), which cost about four forward
//! passes. Here the input is zero-padded once and flattened to `[N, C_in, (H+3)·(W+2)]`; in
//! that flat layout tap `(dy, dx)` of every output pixel is the same contiguous window shifted
//! by `dy·(W+2)+dx`, so the convolution is `Σ_taps W_tap · window_tap` — nine batched matmuls
//! whose right operand is a strided view (read in place, no im2col copy), and whose gradients
//! are matmuls too. The two extra columns per row are computed and cropped. Used for the
//! smaller images (see [`MAX_PIXELS`]), burn's conv otherwise. Same parameters
//! and layout (`[out, in, 3, 3]`), same result up to float rounding (the sum runs tap by tap).

use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::Tensor;

/// Below this many input or output channels the matmuls are too thin (the RGB `conv_in`, the
/// `conv_out` to 3 or 6 channels): burn's conv.
const MIN_CHANNELS: usize = 16;

/// Above this many pixels per image burn-flex's own convolution was faster in the training step
/// (decoder benchmark: shifted matmuls at 32² and 16², burn's conv at 64², 3.8 s/step against
/// 4.1 s with burn's conv everywhere and 4.3 s with shifted matmuls everywhere). The nine
/// `[N, C, (H+3)·(W+2)]` gradients of the windows cost more memory traffic than the transposed
/// convolution once the images are large.
const MAX_PIXELS: usize = 32 * 32;

/// `conv2d(x, weight, bias)` with a 3×3 kernel, stride 1, padding 1, no dilation or groups.
pub(crate) fn conv3x3_forward<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 4> {
    let [n, cin, h, w] = x.dims();
    let [cout, wcin, kh, kw] = weight.dims();
    assert_eq!(
        (wcin, kh, kw),
        (cin, 3, 3),
        "conv3x3: weight {:?}",
        weight.dims()
    );
    if cin < MIN_CHANNELS || cout < MIN_CHANNELS || h * w > MAX_PIXELS {
        return conv2d(x, weight, bias, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
    }
    let wp = w + 2;
    // One zero row more at the bottom, so that every shifted window of length h·wp fits.
    let flat = h * wp;
    // The reshape round trip is free forward; backward it turns the gradient of `x` (a strided
    // view into the padded gradient) into a contiguous tensor, which the elementwise backward
    // ops upstream need for their SIMD paths.
    let xp = x
        .reshape([n, cin, h * w])
        .reshape([n, cin, h, w])
        .pad((1, 1, 1, 2), PadMode::Constant(0.0))
        .reshape([n, cin, (h + 3) * wp]);
    // [out, in, 3, 3] → [9, out, in]: one contiguous matrix per tap.
    let taps = weight.permute([2, 3, 0, 1]).reshape([9, cout, cin]);
    let mut acc: Option<Tensor<B, 3>> = None;
    for dy in 0..3 {
        for dx in 0..3 {
            let k = dy * 3 + dx;
            let off = dy * wp + dx;
            let wk = taps.clone().slice([k..k + 1, 0..cout, 0..cin]);
            let window = xp.clone().slice([0..n, 0..cin, off..off + flat]);
            let y = wk.matmul(window);
            acc = Some(match acc {
                Some(a) => a + y,
                None => y,
            });
        }
    }
    let mut y = acc.expect("nine taps");
    if let Some(b) = bias {
        // `[N, out, 1]`, materialised: a per-row scalar add (SIMD on burn-flex).
        y = y + b.reshape([1, cout]).repeat_dim(0, n).reshape([n, cout, 1]);
    }
    // Drop the two padding columns of each row; the reshape through [N, out, H·W] makes the
    // result contiguous (the elementwise ops after it have fast paths only for that).
    y.reshape([n, cout, h, wp])
        .slice([0..n, 0..cout, 0..h, 0..w])
        .reshape([n, cout, h * w])
        .reshape([n, cout, h, w])
}
