//! ADM attention block with text/CLIP context as extra keys and values (GLIDE's `encoder_kv`,
//! diffusers' `Attention(added_kv_proj_dim=…)` + `AttnAddedKVProcessor`).

use burn::module::Module;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::blocks::{group_norm, ZeroLinear};
use super::norm::group_norm_forward;

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

/// `Wᵀ·x + b` for `x [N, in, S]` (channel-major tokens) and a burn `Linear` weight `[in, out]`:
/// `[N, out, S]`, no transpose of the activations.
fn project_cm<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 3> {
    let n = x.dims()[0];
    let out = weight.dims()[1];
    let y = weight.transpose().unsqueeze::<3>().matmul(x);
    match bias {
        // `[N, out, 1]`, materialised: a per-row scalar add (SIMD) instead of a broadcast over
        // batch and tokens (a scalar strided loop on the CPU backend).
        Some(b) => y + b.reshape([1, out]).repeat_dim(0, n).reshape([n, out, 1]),
        None => y,
    }
}

impl<B: Backend> AttentionBlock<B> {
    /// `x [N, C, H, W]`; `context [N, L, D]` and its mask `[N, L]` (true = attend). Without a
    /// context (or without context projections) only the spatial tokens are keys.
    ///
    /// Computed channel-major (`[N, heads, dh, tokens]`, the layout of `x`) by
    /// [`unclip_kernels::attention`]; a context mask becomes an additive key bias (0, or
    /// −10 000 at padded tokens).
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        context: Option<&Tensor<B, 3>>,
        mask: Option<&Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let (heads, s) = (self.heads, h * w);
        let dh = c / heads;
        let device = x.device();
        let tokens =
            group_norm_forward(&self.norm, x.clone(), None, false, None).reshape([n, c, s]);
        let lin = |l: &Linear<B>, t: Tensor<B, 3>| {
            project_cm(t, l.weight.val(), l.bias.as_ref().map(|b| b.val()))
        };
        let split = |t: Tensor<B, 3>| {
            let len = t.dims()[2];
            t.reshape([n, heads, dh, len])
        };
        let q = split(lin(&self.to_q, tokens.clone()));
        let mut k = split(lin(&self.to_k, tokens.clone()));
        let mut v = split(lin(&self.to_v, tokens));
        let mut key_bias = None;
        if let (Some(ctx), Some(ak), Some(av)) = (context, &self.add_k, &self.add_v) {
            let l = ctx.dims()[1];
            // [N, L, C] → [N, heads, dh, L] (small: L context tokens).
            let ctx_cm = |t: Tensor<B, 3>| t.reshape([n, l, heads, dh]).permute([0, 2, 3, 1]);
            k = Tensor::cat(vec![ctx_cm(ak.forward(ctx.clone())), k], 3);
            v = Tensor::cat(vec![ctx_cm(av.forward(ctx.clone())), v], 3);
            if let Some(m) = mask {
                let ctx_bias =
                    Tensor::<B, 2>::zeros([n, l], &device).mask_fill(m.clone().bool_not(), MASKED);
                key_bias = Some(Tensor::cat(
                    vec![ctx_bias, Tensor::zeros([n, s], &device)],
                    1,
                ));
            }
        }
        let scale = (dh as f64).powf(-0.5);
        let out = unclip_kernels::attention(q, k, v, key_bias, scale).reshape([n, c, s]);
        let out = project_cm(out, self.to_out.weight.val(), Some(self.to_out.bias.val()));
        x + out.reshape([n, c, h, w])
    }
}
