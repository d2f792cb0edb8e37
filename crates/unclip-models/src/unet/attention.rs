//! ADM attention block with text/CLIP context as extra keys and values (GLIDE's `encoder_kv`,
//! diffusers' `Attention(added_kv_proj_dim=…)` + `AttnAddedKVProcessor`).

use burn::module::Module;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::blocks::{group_norm, ZeroLinear};

/// Additive bias of a masked context key (diffusers uses the same value).
const MASKED: f32 = -10_000.0;

/// `x + out(MHA(q = GN(x), keys/values = [context tokens, GN(x) tokens]))` with heads of
/// `head_channels`; `out` starts at zero.
#[derive(Module, Debug)]
pub struct AttentionBlock<B: Backend> {
    pub norm: GroupNorm<B>,
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    /// Context → keys / values; absent when the network has no context.
    pub add_k: Option<Linear<B>>,
    pub add_v: Option<Linear<B>>,
    pub to_out: ZeroLinear<B>,
    pub heads: usize,
}

pub(crate) fn attention_block<B: Backend>(
    channels: usize,
    head_channels: usize,
    groups: usize,
    context_dim: Option<usize>,
    d: &B::Device,
) -> AttentionBlock<B> {
    let lin = |i: usize, o: usize| LinearConfig::new(i, o).init(d);
    AttentionBlock {
        norm: group_norm(groups, channels, d),
        to_q: lin(channels, channels),
        to_k: lin(channels, channels),
        to_v: lin(channels, channels),
        add_k: context_dim.map(|c| lin(c, channels)),
        add_v: context_dim.map(|c| lin(c, channels)),
        to_out: ZeroLinear::new(channels, channels, d),
        heads: channels / head_channels,
    }
}

impl<B: Backend> AttentionBlock<B> {
    /// `x [N, C, H, W]`; `context [N, L, D]` and its mask `[N, L]` (true = attend). Without a
    /// context (or without context projections) only the spatial tokens are keys.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        context: Option<&Tensor<B, 3>>,
        mask: Option<&Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let (heads, s) = (self.heads, h * w);
        let dh = c / heads;
        let tokens = self
            .norm
            .forward(x.clone())
            .reshape([n, c, s])
            .swap_dims(1, 2);
        let split = |t: Tensor<B, 3>| {
            let len = t.dims()[1];
            t.reshape([n, len, heads, dh]).swap_dims(1, 2)
        };
        let q = split(self.to_q.forward(tokens.clone()));
        let mut k = split(self.to_k.forward(tokens.clone()));
        let mut v = split(self.to_v.forward(tokens));
        let mut bias = None;
        if let (Some(ctx), Some(ak), Some(av)) = (context, &self.add_k, &self.add_v) {
            let l = ctx.dims()[1];
            k = Tensor::cat(vec![split(ak.forward(ctx.clone())), k], 2);
            v = Tensor::cat(vec![split(av.forward(ctx.clone())), v], 2);
            if let Some(m) = mask {
                // [N, L] → additive bias over [context keys, spatial keys].
                let ctx_bias = Tensor::<B, 2>::zeros([n, l], &x.device())
                    .mask_fill(m.clone().bool_not(), MASKED);
                let full = Tensor::cat(vec![ctx_bias, Tensor::zeros([n, s], &x.device())], 1);
                bias = Some(full.reshape([n, 1, 1, l + s]));
            }
        }
        let scale = (dh as f64).powf(-0.5);
        let mut scores = q.matmul(k.swap_dims(2, 3)) * scale;
        if let Some(b) = bias {
            scores = scores + b;
        }
        let attn = softmax(scores, 3);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([n, s, c]);
        let out = self
            .to_out
            .forward(out)
            .swap_dims(1, 2)
            .reshape([n, c, h, w]);
        x + out
    }
}
