//! The diffusion prior of unCLIP: a decoder-only transformer that predicts a (standardised) CLIP
//! image embedding from a noised one, conditioned on the caption (Karlo / diffusers
//! `PriorTransformer`).
//!
//! Tokens, in order: the `L` per-token text encodings projected (`encoder_hidden_states_proj`),
//! the pooled text embedding projected (`embedding_proj`), the timestep embedding (sinusoid of
//! width `width` in [cos, sin] order — diffusers' `flip_sin_to_cos=True`, shift 0 — then
//! Linear(width → time_embed_dim) → SiLU → Linear(time_embed_dim → width); `time_embed_dim`
//! defaults to `width`), the noised image embedding projected (`proj_in`)
//! and a learned query token (`prd_embedding`). A learned positional embedding over the `L + 4`
//! tokens is added. Pre-LN blocks (diffusers' `BasicTransformerBlock`: LayerNorm → self-attention
//! with biases → residual; LayerNorm → Linear(4·width) → exact GELU → Linear → residual), then
//! `norm_out` and `proj_to_clip_embeddings` at the last token give the prediction.
//!
//! Attention bias, as diffusers builds it: `-10000` on every key after the query (causal) plus
//! `-10000` on every padded text key (so a padded key after the query gets `-20000`); the 4
//! trailing tokens are never padding. Unlike diffusers, which applies no mask at all when it is
//! given no `attention_mask`, the causal part is always applied here (diffusers' unCLIP pipeline
//! always passes a mask).
//!
//! Dropout (diffusers' sites: after the attention output projection and after the GELU of the
//! feed-forward) is [`KeyedDropout`], active only when the caller passes a [`NoiseKey`].
//!
//! `clip_mean` / `clip_std` (`[D]`, defaults 0 and 1) are stored with the model as parameters
//! that require no gradient, so they travel in records and in the diffusers export; see
//! [`PriorTransformer::standardize`].
//!
//! Parameters that diffusers initialises to zero (`positional_embedding`, `prd_embedding`) are
//! constructed as zeros here too, so [`crate::keyed_init`] accepts the model.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::{timestep_embedding, KeyedDropout, NoiseKey};

mod diffusers;
#[cfg(test)]
mod tests;

pub use diffusers::{config_from_diffusers, prior_from_diffusers, prior_to_diffusers};

/// The tokens after the text encodings: pooled text, timestep, x_t, prd.
const TRAILING_TOKENS: usize = 4;
/// diffusers' additive mask value.
const MASK_VALUE: f32 = -10_000.0;

/// Shape of a [`PriorTransformer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorConfig {
    /// D: width of the CLIP image / pooled text embedding (input x_t, condition and output).
    pub embed_dim: usize,
    /// Width of the transformer (diffusers' `num_attention_heads · attention_head_dim`).
    pub width: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// L: number of text-encoding tokens (77 for CLIP).
    pub text_len: usize,
    /// W_text: width of the per-token CLIP text encodings.
    pub text_width: usize,
    /// Dropout probability (attention output and feed-forward), applied only with a key.
    pub dropout: f64,
    /// Hidden width of the timestep MLP (diffusers' `time_embed_dim`); `None` = `width`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_embed_dim: Option<usize>,
    /// Hidden width of each block's MLP as a multiple of `width`; `None` = 4 (diffusers'
    /// only value; the diffusers layout refuses others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ff_mult: Option<usize>,
}

impl PriorConfig {
    /// The hidden width of the blocks' MLPs: `ff_mult · width` (4 · width when unset).
    pub fn ff_width(&self) -> usize {
        self.ff_mult.unwrap_or(4) * self.width
    }

    /// The hidden width of the timestep MLP: `time_embed_dim`, or `width` when unset.
    pub fn time_width(&self) -> usize {
        self.time_embed_dim.unwrap_or(self.width)
    }

    fn check(&self) -> Result<(), String> {
        let nonzero = [
            ("embed_dim", self.embed_dim),
            ("width", self.width),
            ("depth", self.depth),
            ("heads", self.heads),
            ("text_len", self.text_len),
            ("text_width", self.text_width),
            ("time_embed_dim", self.time_width()),
            ("ff_mult", self.ff_mult.unwrap_or(4)),
        ];
        if let Some((name, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("prior config: {name} must be > 0"));
        }
        if self.width.checked_rem(self.heads) != Some(0) {
            return Err(format!(
                "prior config: width {} is not a multiple of heads {}",
                self.width, self.heads
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "prior config: dropout {} not in [0, 1)",
                self.dropout
            ));
        }
        Ok(())
    }

    /// Builds the model with burn's default initialisers for the Linear layers (redraw them with
    /// [`crate::keyed_init`]), LayerNorms at 1/0, zero positional embedding and prd token,
    /// `clip_mean` 0 and `clip_std` 1.
    ///
    /// # Panics
    /// On an invalid config (a zero size, `width % heads != 0`, dropout outside [0, 1)).
    pub fn init<B: Backend>(&self, device: &B::Device) -> PriorTransformer<B> {
        if let Err(e) = self.check() {
            panic!("{e}");
        }
        let (w, d, te) = (self.width, self.embed_dim, self.time_width());
        let linear = |i: usize, o: usize| LinearConfig::new(i, o).init(device);
        let blocks = (0..self.depth)
            .map(|_| PriorBlock {
                norm1: LayerNormConfig::new(w).init(device),
                attn1: PriorAttention {
                    to_q: linear(w, w),
                    to_k: linear(w, w),
                    to_v: linear(w, w),
                    to_out: linear(w, w),
                    heads: self.heads,
                },
                norm3: LayerNormConfig::new(w).init(device),
                ff: PriorFeedForward {
                    proj: linear(w, self.ff_width()),
                    out: linear(self.ff_width(), w),
                },
                dropout: KeyedDropout::new(self.dropout),
            })
            .collect();
        PriorTransformer {
            time_embedding: PriorTimeEmbedding {
                linear_1: linear(w, te),
                linear_2: linear(te, w),
            },
            proj_in: linear(d, w),
            embedding_proj: linear(d, w),
            encoder_hidden_states_proj: linear(self.text_width, w),
            positional_embedding: Param::from_tensor(Tensor::zeros(
                [self.text_len + TRAILING_TOKENS, w],
                device,
            )),
            prd_embedding: Param::from_tensor(Tensor::zeros([w], device)),
            transformer_blocks: blocks,
            norm_out: LayerNormConfig::new(w).init(device),
            proj_to_clip_embeddings: linear(w, d),
            clip_mean: constant_param(Tensor::zeros([d], device)),
            clip_std: constant_param(Tensor::ones([d], device)),
            config: self.clone(),
        }
    }

    /// Number of scalars in the model built by [`PriorConfig::init`] (what burn's
    /// `Module::num_params` reports), `clip_mean` and `clip_std` included.
    pub fn num_params(&self) -> usize {
        let (w, d, l, tw) = (self.width, self.embed_dim, self.text_len, self.text_width);
        let te = self.time_width();
        let linear = |i: usize, o: usize| i * o + o;
        let f = self.ff_width();
        let block = 2 * w + 4 * linear(w, w) + 2 * w + linear(w, f) + linear(f, w);
        linear(w, te)
            + linear(te, w)
            + 2 * linear(d, w)
            + linear(tw, w)
            + (l + TRAILING_TOKENS) * w
            + w
            + self.depth * block
            + 2 * w
            + linear(w, d)
            + 2 * d
    }
}

fn constant_param<B: Backend, const N: usize>(t: Tensor<B, N>) -> Param<Tensor<B, N>> {
    Param::from_tensor(t).set_require_grad(false)
}

/// diffusers' `TimestepEmbedding(width, time_embed_dim, out_dim=width)` as the prior uses it:
/// Linear(width, time_embed_dim) → SiLU → Linear(time_embed_dim, width) on the width-wide
/// sinusoid.
#[derive(Module, Debug)]
pub struct PriorTimeEmbedding<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

/// Multi-head self-attention with biases (diffusers `attn1`: `to_q`, `to_k`, `to_v`,
/// `to_out.0`).
#[derive(Module, Debug)]
pub struct PriorAttention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub to_out: Linear<B>,
    pub heads: usize,
}

impl<B: Backend> PriorAttention<B> {
    /// `x` [N, S, W], `bias` [N, 1, S, S] added to the scaled scores.
    fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let [n, s, w] = x.dims();
        let h = self.heads;
        let dh = w / h;
        let split = |t: Tensor<B, 3>| t.reshape([n, s, h, dh]).swap_dims(1, 2);
        let q = split(self.to_q.forward(x.clone()));
        let k = split(self.to_k.forward(x.clone()));
        let v = split(self.to_v.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (dh as f64).sqrt());
        let probs = softmax(scores + bias.expand([n, h, s, s]), 3);
        let o = probs.matmul(v).swap_dims(1, 2).reshape([n, s, w]);
        self.to_out.forward(o)
    }
}

/// diffusers `ff`: `net.0.proj` Linear(W, 4W) → exact GELU → dropout → `net.2` Linear(4W, W).
#[derive(Module, Debug)]
pub struct PriorFeedForward<B: Backend> {
    pub proj: Linear<B>,
    pub out: Linear<B>,
}

/// Pre-LN transformer block (diffusers `BasicTransformerBlock` without cross-attention).
#[derive(Module, Debug)]
pub struct PriorBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn1: PriorAttention<B>,
    pub norm3: LayerNorm<B>,
    pub ff: PriorFeedForward<B>,
    pub dropout: KeyedDropout,
}

impl<B: Backend> PriorBlock<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        key: Option<&NoiseKey>,
        index: usize,
    ) -> Tensor<B, 3> {
        let a = self.attn1.forward(self.norm1.forward(x.clone()), bias);
        let a = self
            .dropout
            .forward(a, key, &format!("prior.block{index}.attn_out"));
        let x = x + a;
        let f = gelu(self.ff.proj.forward(self.norm3.forward(x.clone())));
        let f = self
            .dropout
            .forward(f, key, &format!("prior.block{index}.ff"));
        x + self.ff.out.forward(f)
    }
}

/// The unCLIP diffusion prior (see the module docs). Field names follow diffusers' keys.
#[derive(Module, Debug)]
pub struct PriorTransformer<B: Backend> {
    pub time_embedding: PriorTimeEmbedding<B>,
    pub proj_in: Linear<B>,
    pub embedding_proj: Linear<B>,
    pub encoder_hidden_states_proj: Linear<B>,
    /// [L + 4, width] (diffusers: [1, L + 4, width]).
    pub positional_embedding: Param<Tensor<B, 2>>,
    /// `[width]` (diffusers: `[1, 1, width]`).
    pub prd_embedding: Param<Tensor<B, 1>>,
    pub transformer_blocks: Vec<PriorBlock<B>>,
    pub norm_out: LayerNorm<B>,
    pub proj_to_clip_embeddings: Linear<B>,
    /// `[D]`, no gradient (diffusers: `[1, D]`).
    pub clip_mean: Param<Tensor<B, 1>>,
    /// `[D]`, no gradient (diffusers: `[1, D]`).
    pub clip_std: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub config: PriorConfig,
}

impl<B: Backend> PriorTransformer<B> {
    /// Predicted (standardised) image embedding `[N, D]`.
    ///
    /// * `x_t` `[N, D]`: the noised image embedding, in standardised space.
    /// * `t`: the original (un-respaced) timestep of each row; one value is broadcast to all rows.
    /// * `text_embed` `[N, D]`: the pooled CLIP text embedding.
    /// * `text_encodings` `Some([N, L, W_text])`: the per-token text encodings. `None` leaves the
    ///   `L` text tokens out of the sequence (the 4 trailing tokens keep their positional
    ///   embeddings `L..L+4`). That is what fully masking them does in diffusers' arithmetic too:
    ///   the trailing tokens give masked keys weight `exp(-10000)`, which is 0 in f32.
    /// * `text_mask` `[N, L]`, true = real token; `None` = every text token is real. Ignored
    ///   when `text_encodings` is `None`.
    /// * `key`: `Some` in training (dropout on), `None` in evaluation.
    ///
    /// # Panics
    /// On shapes that do not match the config (caller bugs).
    pub fn forward(
        &self,
        x_t: Tensor<B, 2>,
        t: &[f64],
        text_embed: Tensor<B, 2>,
        text_encodings: Option<Tensor<B, 3>>,
        text_mask: Option<Tensor<B, 2, Bool>>,
        key: Option<&NoiseKey>,
    ) -> Tensor<B, 2> {
        let h = self.hidden_states(x_t, t, text_embed, text_encodings, text_mask, key);
        let [n, s, w] = h.dims();
        let last = h.slice([0..n, s - 1..s, 0..w]).reshape([n, w]);
        self.proj_to_clip_embeddings
            .forward(self.norm_out.forward(last))
    }

    /// The output of the last block at every token, `[N, S, width]` (`S = L + 4`, or 4 without
    /// text encodings).
    fn hidden_states(
        &self,
        x_t: Tensor<B, 2>,
        t: &[f64],
        text_embed: Tensor<B, 2>,
        text_encodings: Option<Tensor<B, 3>>,
        text_mask: Option<Tensor<B, 2, Bool>>,
        key: Option<&NoiseKey>,
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let device = x_t.device();
        let [n, d] = x_t.dims();
        let w = c.width;
        assert_eq!(d, c.embed_dim, "prior: x_t width {d} != embed_dim");
        assert_eq!(
            text_embed.dims(),
            [n, c.embed_dim],
            "prior: text_embed shape"
        );
        let steps: Vec<f64> = match t.len() {
            1 => vec![t[0]; n],
            len if len == n => t.to_vec(),
            len => panic!("prior: {len} timesteps for a batch of {n}"),
        };
        let temb = timestep_embedding::<B>(&steps, w, 10_000.0, &device);
        let temb = self
            .time_embedding
            .linear_2
            .forward(silu(self.time_embedding.linear_1.forward(temb)));

        let mut tokens = Vec::with_capacity(5);
        let mut text_len = 0;
        if let Some(enc) = text_encodings {
            assert_eq!(
                enc.dims(),
                [n, c.text_len, c.text_width],
                "prior: text_encodings shape"
            );
            text_len = c.text_len;
            tokens.push(self.encoder_hidden_states_proj.forward(enc));
        }
        tokens.push(self.embedding_proj.forward(text_embed).unsqueeze_dim(1));
        tokens.push(temb.unsqueeze_dim(1));
        tokens.push(self.proj_in.forward(x_t).unsqueeze_dim(1));
        tokens.push(
            self.prd_embedding
                .val()
                .reshape([1, 1, w])
                .expand([n, 1, w]),
        );
        let s = text_len + TRAILING_TOKENS;
        let first = c.text_len - text_len;
        let pos = self
            .positional_embedding
            .val()
            .slice([first..c.text_len + TRAILING_TOKENS, 0..w])
            .unsqueeze_dim::<3>(0)
            .expand([n, s, w]);
        let mut x = Tensor::cat(tokens, 1) + pos;

        let bias = attention_bias::<B>(n, text_len, text_mask, &device);
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            x = block.forward(x, bias.clone(), key, i);
        }
        x
    }

    /// `(z − clip_mean) / clip_std`: raw CLIP image embedding → the model's space.
    pub fn standardize(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, d] = z.dims();
        let mean = self.clip_mean.val().reshape([1, d]).expand([n, d]);
        let std = self.clip_std.val().reshape([1, d]).expand([n, d]);
        (z - mean) / std
    }

    /// `z · clip_std + clip_mean` (diffusers' `post_process_latents`).
    pub fn unstandardize(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, d] = z.dims();
        let mean = self.clip_mean.val().reshape([1, d]).expand([n, d]);
        let std = self.clip_std.val().reshape([1, d]).expand([n, d]);
        z * std + mean
    }

    /// Sets `clip_mean` / `clip_std` (each of length D; keeps their parameter ids).
    ///
    /// # Panics
    /// When a slice's length is not D or a std is not positive and finite.
    pub fn with_stats(mut self, mean: &[f32], std: &[f32]) -> Self {
        let d = self.config.embed_dim;
        assert_eq!(mean.len(), d, "prior: clip_mean length");
        assert_eq!(std.len(), d, "prior: clip_std length");
        assert!(
            std.iter().all(|s| s.is_finite() && *s > 0.0),
            "prior: clip_std must be positive and finite"
        );
        let device = self.clip_mean.val().device();
        let make = |v: &[f32]| Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [d]), &device);
        self.clip_mean = Param::initialized(self.clip_mean.id, make(mean)).set_require_grad(false);
        self.clip_std = Param::initialized(self.clip_std.id, make(std)).set_require_grad(false);
        self
    }
}

/// `[N, 1, S, S]`: causal `-10000` above the diagonal plus `-10000` on padded text keys.
fn attention_bias<B: Backend>(
    n: usize,
    text_len: usize,
    text_mask: Option<Tensor<B, 2, Bool>>,
    device: &B::Device,
) -> Tensor<B, 4> {
    let s = text_len + TRAILING_TOKENS;
    let causal: Vec<f32> = (0..s * s)
        .map(|i| if i % s > i / s { MASK_VALUE } else { 0.0 })
        .collect();
    let causal = Tensor::<B, 2>::from_data(TensorData::new(causal, [s, s]), device)
        .reshape([1, 1, s, s])
        .expand([n, 1, s, s]);
    match text_mask {
        Some(mask) if text_len > 0 => {
            assert_eq!(mask.dims(), [n, text_len], "prior: text_mask shape");
            let pad = (mask.float().neg() + 1.0) * MASK_VALUE;
            let pad = Tensor::cat(vec![pad, Tensor::zeros([n, TRAILING_TOKENS], device)], 1);
            causal + pad.reshape([n, 1, 1, s]).expand([n, 1, s, s])
        }
        _ => causal,
    }
}
