//! The ADM residual block and the zero-initialised layers of the UNet.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::avg_pool2d;
use burn::tensor::Tensor;
use unclip_kernels::conv3x3 as conv3x3_forward;

use super::norm::group_norm_forward;
use crate::dropout::{KeyedDropout, NoiseKey};

/// Epsilon of every GroupNorm / LayerNorm of the UNet (ADM and diffusers' Karlo configs).
pub(crate) const NORM_EPS: f64 = 1e-5;

pub(crate) fn group_norm<B: Backend>(
    groups: usize,
    channels: usize,
    d: &B::Device,
) -> GroupNorm<B> {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(NORM_EPS)
        .init(d)
}

pub(crate) fn conv3x3<B: Backend>(cin: usize, cout: usize, d: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(d)
}

/// A 3×3 convolution (padding 1) whose weight and bias start at zero (ADM's `zero_module`).
///
/// Its own type rather than `Conv2d` so that [`crate::keyed_init`] keeps it constant.
#[derive(Module, Debug)]
pub struct ZeroConv2d<B: Backend> {
    /// `[out, in, 3, 3]` (PyTorch layout).
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> ZeroConv2d<B> {
    pub fn new(cin: usize, cout: usize, d: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::zeros([cout, cin, 3, 3], d)),
            bias: Param::from_tensor(Tensor::zeros([cout], d)),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv3x3_forward(x, self.weight.val(), Some(self.bias.val()))
    }
}

/// A 1×1 convolution as one matrix product per sample (`W [out, in] · x [in, H·W]`): burn's
/// 1×1 `conv2d` backward goes through a transposed convolution; a matmul's backward is two
/// matmuls.
pub(crate) fn conv1x1<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, cin, h, w] = x.dims();
    let [cout, wcin, kh, kw] = conv.weight.dims();
    assert_eq!(
        (wcin, kh, kw),
        (cin, 1, 1),
        "conv1x1: weight {:?}",
        conv.weight.dims()
    );
    let y = conv
        .weight
        .val()
        .reshape([1, cout, cin])
        .matmul(x.reshape([n, cin, h * w]));
    let y = match &conv.bias {
        Some(b) => y + b.val().reshape([1, cout, 1]),
        None => y,
    };
    y.reshape([n, cout, h, w])
}

/// A linear layer whose weight and bias start at zero; weight stored `[in, out]` like burn's
/// `Linear`. Its own type so that [`crate::keyed_init`] keeps it constant.
#[derive(Module, Debug)]
pub struct ZeroLinear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> ZeroLinear<B> {
    pub fn new(din: usize, dout: usize, d: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::zeros([din, dout], d)),
            bias: Param::from_tensor(Tensor::zeros([dout], d)),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        burn::tensor::module::linear(x, self.weight.val(), Some(self.bias.val()))
    }
}

/// Resampling done inside a residual block (ADM `resblock_updown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resample {
    #[default]
    None,
    /// Nearest-neighbour ×2.
    Up,
    /// 2×2 average pooling.
    Down,
}

/// Nearest-neighbour ×2 upsampling, exact (every pixel copied into a 2×2 square).
pub(crate) fn upsample_nearest2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h, 1, w, 1])
        .repeat_dim(3, 2)
        .repeat_dim(5, 2)
        .reshape([n, c, 2 * h, 2 * w])
}

pub(crate) fn downsample_avg2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    avg_pool2d(x, [2, 2], [2, 2], [0, 0], true, false)
}

/// ADM ResBlock: `GN → SiLU → [resample] → conv3×3`; `emb → SiLU → Linear`; with scale-shift
/// `GN(h)·(1+scale)+shift`, else `GN(h + emb)`; `→ SiLU → dropout → zero conv3×3`; plus the
/// (resampled, 1×1-projected when channels change) input.
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    /// `emb → 2·C_out` (scale-shift) or `C_out`.
    pub emb_proj: Linear<B>,
    pub norm2: GroupNorm<B>,
    pub dropout: KeyedDropout,
    pub conv2: ZeroConv2d<B>,
    /// 1×1 projection of the input when the channel count changes.
    pub skip: Option<Conv2d<B>>,
    #[module(skip)]
    pub resample: Resample,
    pub scale_shift: bool,
    pub out_channels: usize,
}

pub(crate) struct ResBlockSpec {
    pub cin: usize,
    pub cout: usize,
    pub emb_dim: usize,
    pub groups: usize,
    pub dropout: f64,
    pub scale_shift: bool,
    pub resample: Resample,
}

impl ResBlockSpec {
    pub fn init<B: Backend>(&self, d: &B::Device) -> ResBlock<B> {
        let emb_out = if self.scale_shift {
            2 * self.cout
        } else {
            self.cout
        };
        ResBlock {
            norm1: group_norm(self.groups, self.cin, d),
            conv1: conv3x3(self.cin, self.cout, d),
            emb_proj: LinearConfig::new(self.emb_dim, emb_out).init(d),
            norm2: group_norm(self.groups, self.cout, d),
            dropout: KeyedDropout::new(self.dropout),
            conv2: ZeroConv2d::new(self.cout, self.cout, d),
            skip: (self.cin != self.cout)
                .then(|| Conv2dConfig::new([self.cin, self.cout], [1, 1]).init(d)),
            resample: self.resample,
            scale_shift: self.scale_shift,
            out_channels: self.cout,
        }
    }
}

impl<B: Backend> ResBlock<B> {
    /// `x [N, C_in, H, W]`, `emb [N, E]` (before its SiLU); `site` names the dropout call site.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        emb: Tensor<B, 2>,
        key: Option<&NoiseKey>,
        site: &str,
    ) -> Tensor<B, 4> {
        let mut h = group_norm_forward(&self.norm1, x.clone(), None, true, None);
        let mut x = x;
        match self.resample {
            Resample::None => {}
            Resample::Up => {
                h = upsample_nearest2(h);
                x = upsample_nearest2(x);
            }
            Resample::Down => {
                h = downsample_avg2(h);
                x = downsample_avg2(x);
            }
        }
        let h = conv3x3_forward(
            h,
            self.conv1.weight.val(),
            self.conv1.bias.as_ref().map(|b| b.val()),
        );
        let [n, c, _, _] = h.dims();
        let e = self.emb_proj.forward(silu(emb));
        // SiLU and dropout fused into the second norm.
        let mask = self.dropout.mask(h.dims(), key, site, &h.device());
        let h = if self.scale_shift {
            let scale = e.clone().slice([0..n, 0..c]);
            let shift = e.slice([0..n, c..2 * c]);
            group_norm_forward(&self.norm2, h, Some((scale, shift)), true, mask)
        } else {
            group_norm_forward(&self.norm2, h + e.reshape([n, c, 1, 1]), None, true, mask)
        };
        let h = self.conv2.forward(h);
        let x = match &self.skip {
            Some(conv) => conv1x1(conv, x),
            None => x,
        };
        x + h
    }
}
