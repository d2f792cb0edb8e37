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

use std::collections::{BTreeMap, BTreeSet};

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{timestep_embedding, KeyedDropout, NoiseKey};

/// The tokens after the text encodings: pooled text, timestep, x_t, prd.
const TRAILING_TOKENS: usize = 4;
/// diffusers' additive mask value.
const MASK_VALUE: f32 = -10_000.0;
/// The diffusers version whose `PriorTransformer` layout [`prior_to_diffusers`] writes.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

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

// ---------------------------------------------------------------------------------------------
// diffusers layout

/// The diffusers `config.json` fields we know, with diffusers' defaults.
const DIFFUSERS_FIELDS: &[&str] = &[
    "num_attention_heads",
    "attention_head_dim",
    "num_layers",
    "embedding_dim",
    "num_embeddings",
    "additional_embeddings",
    "dropout",
    "time_embed_act_fn",
    "norm_in_type",
    "embedding_proj_norm_type",
    "encoder_hid_proj_type",
    "added_emb_type",
    "time_embed_dim",
    "embedding_proj_dim",
    "clip_embed_dim",
];

/// diffusers' `PriorTransformer` `config.json` and tensors (diffusers keys, PyTorch layouts:
/// Linear weights `[out, in]`, `positional_embedding` `[1, L+4, width]`, `prd_embedding`
/// `[1, 1, width]`, `clip_mean`/`clip_std` `[1, D]`; f32). Write the tensors with safetensors
/// as `diffusion_pytorch_model.safetensors` next to the config.
///
/// Errors when diffusers cannot represent the model: its `encoder_hidden_states_proj` reads
/// `embedding_dim` channels, so `text_width` must equal `embed_dim`.
#[allow(clippy::type_complexity)]
pub fn prior_to_diffusers<B: Backend>(
    m: &PriorTransformer<B>,
) -> Result<(Value, Vec<(String, TensorData)>), String> {
    let c = &m.config;
    if c.ff_width() != 4 * c.width {
        return Err(format!(
            "diffusers' PriorTransformer has MLPs of 4 x width; this prior has ff_mult {}",
            c.ff_width() / c.width
        ));
    }
    if c.text_width != c.embed_dim {
        return Err(format!(
            "diffusers' PriorTransformer cannot hold text_width {} != embed_dim {}: its \
             encoder_hidden_states_proj takes embedding_dim inputs",
            c.text_width, c.embed_dim
        ));
    }
    let config = json!({
        "_class_name": "PriorTransformer",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_attention_heads": c.heads,
        "attention_head_dim": c.width / c.heads,
        "num_layers": c.depth,
        "embedding_dim": c.embed_dim,
        "num_embeddings": c.text_len,
        "additional_embeddings": TRAILING_TOKENS,
        "dropout": c.dropout,
        "time_embed_act_fn": "silu",
        "norm_in_type": null,
        "embedding_proj_norm_type": null,
        "encoder_hid_proj_type": "linear",
        "added_emb_type": "prd",
        // diffusers' save_pretrained writes the constructor argument as given: null when it was
        // left to default to the inner width.
        "time_embed_dim": c.time_embed_dim,
        "embedding_proj_dim": null,
        "clip_embed_dim": null,
    });
    let mut out = Vec::new();
    let (w, d, l) = (c.width, c.embed_dim, c.text_len);
    push_linear(
        &mut out,
        "time_embedding.linear_1",
        &m.time_embedding.linear_1,
    );
    push_linear(
        &mut out,
        "time_embedding.linear_2",
        &m.time_embedding.linear_2,
    );
    push_linear(&mut out, "proj_in", &m.proj_in);
    push_linear(&mut out, "embedding_proj", &m.embedding_proj);
    push_linear(
        &mut out,
        "encoder_hidden_states_proj",
        &m.encoder_hidden_states_proj,
    );
    push(
        &mut out,
        "positional_embedding",
        m.positional_embedding.val(),
        &[1, l + TRAILING_TOKENS, w],
    );
    push(&mut out, "prd_embedding", m.prd_embedding.val(), &[1, 1, w]);
    for (i, b) in m.transformer_blocks.iter().enumerate() {
        let p = format!("transformer_blocks.{i}");
        push_norm(&mut out, &format!("{p}.norm1"), &b.norm1);
        push_linear(&mut out, &format!("{p}.attn1.to_q"), &b.attn1.to_q);
        push_linear(&mut out, &format!("{p}.attn1.to_k"), &b.attn1.to_k);
        push_linear(&mut out, &format!("{p}.attn1.to_v"), &b.attn1.to_v);
        push_linear(&mut out, &format!("{p}.attn1.to_out.0"), &b.attn1.to_out);
        push_norm(&mut out, &format!("{p}.norm3"), &b.norm3);
        push_linear(&mut out, &format!("{p}.ff.net.0.proj"), &b.ff.proj);
        push_linear(&mut out, &format!("{p}.ff.net.2"), &b.ff.out);
    }
    push_norm(&mut out, "norm_out", &m.norm_out);
    push_linear(
        &mut out,
        "proj_to_clip_embeddings",
        &m.proj_to_clip_embeddings,
    );
    push(&mut out, "clip_mean", m.clip_mean.val(), &[1, d]);
    push(&mut out, "clip_std", m.clip_std.val(), &[1, d]);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((config, out))
}

fn push<B: Backend, const N: usize>(
    out: &mut Vec<(String, TensorData)>,
    key: &str,
    t: Tensor<B, N>,
    shape: &[usize],
) {
    let data = t.into_data().convert::<f32>();
    let values: Vec<f32> = data.to_vec().expect("f32 tensor data");
    out.push((key.to_string(), TensorData::new(values, shape.to_vec())));
}

fn push_linear<B: Backend>(out: &mut Vec<(String, TensorData)>, prefix: &str, l: &Linear<B>) {
    let w = l.weight.val().transpose();
    let shape = w.dims();
    push(out, &format!("{prefix}.weight"), w, &shape);
    if let Some(b) = &l.bias {
        let shape = b.val().dims();
        push(out, &format!("{prefix}.bias"), b.val(), &shape);
    }
}

fn push_norm<B: Backend>(out: &mut Vec<(String, TensorData)>, prefix: &str, n: &LayerNorm<B>) {
    let shape = n.gamma.val().dims();
    push(out, &format!("{prefix}.weight"), n.gamma.val(), &shape);
    if let Some(b) = &n.beta {
        push(out, &format!("{prefix}.bias"), b.val(), &shape);
    }
}

/// Reads a diffusers `PriorTransformer` (`config.json` value and its tensors by key, any float
/// dtype) into our model. Fields missing from the config take diffusers' defaults (older
/// configs such as Karlo's omit the newer ones).
///
/// Supported: `time_embed_act_fn` "silu", `norm_in_type` null, `embedding_proj_norm_type`
/// null, `encoder_hid_proj_type` "linear", `added_emb_type` "prd", `additional_embeddings` 4,
/// any `time_embed_dim` (null → `None`, i.e. the inner width; an integer is kept as given, so
/// the export writes the same value back; 0 means the inner width, as in diffusers),
/// `embedding_proj_dim` / `clip_embed_dim` null or `embedding_dim` — the Karlo configuration
/// plus the timestep-MLP width. Anything else, an unknown config field, a missing
/// or unexpected tensor, or a wrong shape is an error naming the culprits. The non-persistent
/// `causal_attention_mask` buffer is ignored if a checkpoint carries it.
pub fn prior_from_diffusers<B: Backend>(
    config: &Value,
    tensors: &BTreeMap<String, TensorData>,
    device: &B::Device,
) -> Result<PriorTransformer<B>, String> {
    let c = config_from_diffusers(config)?;
    let mut ld = Loader {
        tensors,
        used: BTreeSet::new(),
        errors: Vec::new(),
        device,
    };
    let (w, d, l, tw) = (c.width, c.embed_dim, c.text_len, c.text_width);
    let te = c.time_width();
    let time_embedding = PriorTimeEmbedding {
        linear_1: ld.linear("time_embedding.linear_1", w, te),
        linear_2: ld.linear("time_embedding.linear_2", te, w),
    };
    let proj_in = ld.linear("proj_in", d, w);
    let embedding_proj = ld.linear("embedding_proj", d, w);
    let encoder_hidden_states_proj = ld.linear("encoder_hidden_states_proj", tw, w);
    let positional_embedding = ld.param::<2>(
        "positional_embedding",
        &[1, l + TRAILING_TOKENS, w],
        [l + TRAILING_TOKENS, w],
    );
    let prd_embedding = ld.param::<1>("prd_embedding", &[1, 1, w], [w]);
    let transformer_blocks = (0..c.depth)
        .map(|i| {
            let p = format!("transformer_blocks.{i}");
            PriorBlock {
                norm1: ld.norm(&format!("{p}.norm1"), w),
                attn1: PriorAttention {
                    to_q: ld.linear(&format!("{p}.attn1.to_q"), w, w),
                    to_k: ld.linear(&format!("{p}.attn1.to_k"), w, w),
                    to_v: ld.linear(&format!("{p}.attn1.to_v"), w, w),
                    to_out: ld.linear(&format!("{p}.attn1.to_out.0"), w, w),
                    heads: c.heads,
                },
                norm3: ld.norm(&format!("{p}.norm3"), w),
                ff: PriorFeedForward {
                    proj: ld.linear(&format!("{p}.ff.net.0.proj"), w, 4 * w),
                    out: ld.linear(&format!("{p}.ff.net.2"), 4 * w, w),
                },
                dropout: KeyedDropout::new(c.dropout),
            }
        })
        .collect();
    let norm_out = ld.norm("norm_out", w);
    let proj_to_clip_embeddings = ld.linear("proj_to_clip_embeddings", w, d);
    let clip_mean = ld
        .param::<1>("clip_mean", &[1, d], [d])
        .set_require_grad(false);
    let clip_std = ld
        .param::<1>("clip_std", &[1, d], [d])
        .set_require_grad(false);

    let unknown: Vec<&String> = tensors
        .keys()
        .filter(|k| !ld.used.contains(*k) && k.as_str() != "causal_attention_mask")
        .collect();
    if !unknown.is_empty() {
        ld.errors.push(format!(
            "unexpected tensors (not part of the supported PriorTransformer): {}",
            unknown
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !ld.errors.is_empty() {
        return Err(format!(
            "diffusers PriorTransformer: {}",
            ld.errors.join("; ")
        ));
    }
    Ok(PriorTransformer {
        time_embedding,
        proj_in,
        embedding_proj,
        encoder_hidden_states_proj,
        positional_embedding,
        prd_embedding,
        transformer_blocks,
        norm_out,
        proj_to_clip_embeddings,
        clip_mean,
        clip_std,
        config: c,
    })
}

/// Our config from a diffusers `PriorTransformer` config (see [`prior_from_diffusers`]).
pub fn config_from_diffusers(config: &Value) -> Result<PriorConfig, String> {
    let obj = config
        .as_object()
        .ok_or("diffusers prior config: not a JSON object")?;
    if let Some(name) = obj.get("_class_name") {
        if name != "PriorTransformer" {
            return Err(format!(
                "diffusers prior config: _class_name is {name}, expected \"PriorTransformer\""
            ));
        }
    }
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with('_') && !DIFFUSERS_FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "diffusers prior config: unsupported fields {}",
            unknown.join(", ")
        ));
    }
    let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);
    let int = |k: &str, default: usize| -> Result<usize, String> {
        match obj.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| format!("diffusers prior config: {k} = {v} is not an integer")),
        }
    };
    // Optional integer fields: null (or absent) means "the default size".
    let opt_int = |k: &str| -> Result<Option<usize>, String> {
        match get(k) {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| format!("diffusers prior config: {k} = {v} is not an integer")),
        }
    };
    // String options: (field, diffusers default, the only value we support).
    let strings: [(&str, Option<&str>, Option<&str>); 5] = [
        ("time_embed_act_fn", Some("silu"), Some("silu")),
        ("norm_in_type", None, None),
        ("embedding_proj_norm_type", None, None),
        ("encoder_hid_proj_type", Some("linear"), Some("linear")),
        ("added_emb_type", Some("prd"), Some("prd")),
    ];
    for (k, default, supported) in strings {
        let value = match obj.get(k) {
            None => default,
            Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(v) => return Err(format!("diffusers prior config: {k} = {v} is not a string")),
        };
        if value != supported {
            return Err(format!(
                "diffusers prior config: {k} = {value:?} is not supported (only {supported:?})"
            ));
        }
    }
    let heads = int("num_attention_heads", 32)?;
    let head_dim = int("attention_head_dim", 64)?;
    let embed_dim = int("embedding_dim", 768)?;
    let width = heads * head_dim;
    let additional = int("additional_embeddings", 4)?;
    if additional != TRAILING_TOKENS {
        return Err(format!(
            "diffusers prior config: additional_embeddings = {additional} is not supported \
             (only {TRAILING_TOKENS}: pooled text, timestep, x_t, prd)"
        ));
    }
    for (k, want) in [
        ("embedding_proj_dim", embed_dim),
        ("clip_embed_dim", embed_dim),
    ] {
        if let Some(v) = opt_int(k)? {
            if v != want {
                return Err(format!(
                    "diffusers prior config: {k} = {v} is not supported (only null or {want})"
                ));
            }
        }
    }
    let dropout = match obj.get("dropout") {
        None => 0.0,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("diffusers prior config: dropout = {v} is not a number"))?,
    };
    let c = PriorConfig {
        embed_dim,
        width,
        depth: int("num_layers", 20)?,
        heads,
        text_len: int("num_embeddings", 77)?,
        text_width: embed_dim,
        dropout,
        // diffusers: `time_embed_dim or inner_dim`, so 0 is the default too.
        time_embed_dim: opt_int("time_embed_dim")?.filter(|&v| v != 0),
        ff_mult: None,
    };
    c.check()
        .map_err(|e| format!("diffusers prior config: {e}"))?;
    Ok(c)
}

struct Loader<'a, B: Backend> {
    tensors: &'a BTreeMap<String, TensorData>,
    used: BTreeSet<String>,
    errors: Vec<String>,
    device: &'a B::Device,
}

impl<B: Backend> Loader<'_, B> {
    /// The tensor `key` of PyTorch shape `torch_shape`, reshaped to `shape`; on an error a zero
    /// tensor (the error is recorded and the import fails at the end).
    fn tensor<const N: usize>(
        &mut self,
        key: &str,
        torch_shape: &[usize],
        shape: [usize; N],
    ) -> Tensor<B, N> {
        let zeros = || Tensor::zeros(shape, self.device);
        let Some(data) = self.tensors.get(key) else {
            self.errors.push(format!("missing tensor {key}"));
            return zeros();
        };
        self.used.insert(key.to_string());
        if data.shape.as_slice() != torch_shape {
            self.errors.push(format!(
                "tensor {key} has shape {:?}, expected {torch_shape:?}",
                data.shape.as_slice()
            ));
            return zeros();
        }
        let values: Vec<f32> = match data.clone().convert::<f32>().to_vec() {
            Ok(v) => v,
            Err(e) => {
                self.errors
                    .push(format!("tensor {key}: unreadable data ({e:?})"));
                return zeros();
            }
        };
        Tensor::from_data(TensorData::new(values, shape), self.device)
    }

    fn param<const N: usize>(
        &mut self,
        key: &str,
        torch_shape: &[usize],
        shape: [usize; N],
    ) -> Param<Tensor<B, N>> {
        Param::from_tensor(self.tensor(key, torch_shape, shape))
    }

    fn linear(&mut self, prefix: &str, d_in: usize, d_out: usize) -> Linear<B> {
        // Transposed on the host, so the weight is a contiguous [in, out] tensor like burn's own.
        let key = format!("{prefix}.weight");
        let weight = self.tensor::<2>(&key, &[d_out, d_in], [d_out, d_in]);
        let v: Vec<f32> = weight.into_data().to_vec().expect("f32 weight");
        let t: Vec<f32> = (0..d_in * d_out)
            .map(|k| v[(k % d_out) * d_in + k / d_out])
            .collect();
        let weight = Tensor::from_data(TensorData::new(t, [d_in, d_out]), self.device);
        let bias = self.tensor::<1>(&format!("{prefix}.bias"), &[d_out], [d_out]);
        Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        }
    }

    fn norm(&mut self, prefix: &str, dim: usize) -> LayerNorm<B> {
        let mut n = LayerNormConfig::new(dim).init(self.device);
        n.gamma = Param::from_tensor(self.tensor::<1>(&format!("{prefix}.weight"), &[dim], [dim]));
        n.beta = Some(Param::from_tensor(self.tensor::<1>(
            &format!("{prefix}.bias"),
            &[dim],
            [dim],
        )));
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use unclip_rng::KeyedRng;

    type B = Flex;

    fn small(dropout: f64) -> PriorConfig {
        PriorConfig {
            embed_dim: 6,
            width: 8,
            depth: 2,
            heads: 2,
            text_len: 5,
            text_width: 7,
            dropout,
            time_embed_dim: None,
            ff_mult: None,
        }
    }

    fn randn<const N: usize>(shape: [usize; N], stream: u64) -> Tensor<B, N> {
        let mut rng = KeyedRng::new(99, "prior-test", 0, stream);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal_f64() as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    /// A model whose every parameter is random (keyed Linear init; the constants are perturbed).
    fn model(c: &PriorConfig) -> PriorTransformer<B> {
        let mut m = crate::keyed_init(c.init::<B>(&Default::default()), 5).unwrap();
        let l = c.text_len + TRAILING_TOKENS;
        m.positional_embedding = Param::from_tensor(randn([l, c.width], 1) * 0.5);
        m.prd_embedding = Param::from_tensor(randn([c.width], 2) * 0.5);
        m
    }

    fn inputs(n: usize, c: &PriorConfig) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 3>) {
        (
            randn([n, c.embed_dim], 10),
            randn([n, c.embed_dim], 11),
            randn([n, c.text_len, c.text_width], 12),
        )
    }

    fn mask(rows: &[usize], len: usize) -> Tensor<B, 2, Bool> {
        let v: Vec<bool> = rows
            .iter()
            .flat_map(|&real| (0..len).map(move |j| j < real))
            .collect();
        Tensor::from_data(TensorData::new(v, [rows.len(), len]), &Default::default())
    }

    fn max_diff<const N: usize>(a: Tensor<B, N>, b: Tensor<B, N>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn padded_text_tokens_do_not_matter() {
        let c = small(0.0);
        let m = model(&c);
        let (x, te, enc) = inputs(2, &c);
        let t = [3.0, 500.0];
        let out = m.forward(
            x.clone(),
            &t,
            te.clone(),
            Some(enc.clone()),
            Some(mask(&[5, 2], 5)),
            None,
        );
        // Change text tokens 2.. of row 1 (padding there) and nothing of row 0.
        let noise = randn([1, 3, c.text_width], 20) * 3.0;
        let changed = enc.clone().slice_assign(
            [1..2, 2..5, 0..c.text_width],
            enc.clone().slice([1..2, 2..5, 0..c.text_width]) + noise,
        );
        let out2 = m.forward(
            x.clone(),
            &t,
            te.clone(),
            Some(changed.clone()),
            Some(mask(&[5, 2], 5)),
            None,
        );
        assert!(max_diff(out.clone(), out2) < 1e-6);
        // The same change with the tokens real does change row 1.
        let a = m.forward(x.clone(), &t, te.clone(), Some(enc), None, None);
        let b = m.forward(x, &t, te, Some(changed), None, None);
        let d = (a - b)
            .abs()
            .sum_dim(1)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(d[0] < 1e-6 && d[1] > 1e-3, "{d:?}");
    }

    #[test]
    fn attention_is_causal() {
        let c = small(0.0);
        let m = model(&c);
        let (x, te, enc) = inputs(2, &c);
        let t = [3.0, 500.0];
        let h = m.hidden_states(x.clone(), &t, te.clone(), Some(enc.clone()), None, None);
        let h2 = m.hidden_states(x + 1.0, &t, te, Some(enc), None, None);
        let (l, w) = (c.text_len, c.width);
        // Tokens before x_t (text, pooled text, time: 0..L+2) do not see x_t …
        let before = |h: Tensor<B, 3>| h.slice([0..2, 0..l + 2, 0..w]);
        assert!(max_diff(before(h.clone()), before(h2.clone())) < 1e-6);
        // … x_t and prd do.
        let after = |h: Tensor<B, 3>| h.slice([0..2, l + 2..l + 4, 0..w]);
        assert!(max_diff(after(h), after(h2)) > 1e-3);
    }

    #[test]
    fn no_text_encodings_equals_fully_masked_text() {
        let c = small(0.0);
        let m = model(&c);
        let (x, te, enc) = inputs(3, &c);
        let t = [0.0, 10.0, 999.0];
        let none = m.forward(x.clone(), &t, te.clone(), None, None, None);
        let masked = m.forward(x, &t, te, Some(enc), Some(mask(&[0, 0, 0], 5)), None);
        assert!(max_diff(none, masked) < 1e-5);
    }

    #[test]
    fn dropout_only_with_a_key() {
        let c = small(0.3);
        let m = model(&c);
        let (x, te, enc) = inputs(2, &c);
        let key = |step| NoiseKey {
            seed: 1,
            step,
            indices: vec![4, 9],
        };
        let run = |k: Option<&NoiseKey>| {
            m.forward(x.clone(), &[7.0], te.clone(), Some(enc.clone()), None, k)
        };
        let eval = run(None);
        let a = run(Some(&key(1)));
        assert!(max_diff(eval.clone(), a.clone()) > 1e-3);
        assert_eq!(a.clone().into_data(), run(Some(&key(1))).into_data());
        assert!(max_diff(a, run(Some(&key(2)))) > 1e-3);
        // Without dropout, a key changes nothing.
        let m0 = model(&small(0.0));
        let f = |k: Option<&NoiseKey>| {
            m0.forward(x.clone(), &[7.0], te.clone(), Some(enc.clone()), None, k)
        };
        assert_eq!(f(None).into_data(), f(Some(&key(1))).into_data());
    }

    #[test]
    fn num_params_matches_the_module() {
        let d = Default::default();
        let c = small(0.0);
        assert_eq!(c.num_params(), c.init::<B>(&d).num_params());
        let c = PriorConfig {
            time_embed_dim: Some(20),
            ff_mult: None,
            ..small(0.0)
        };
        assert_eq!(c.num_params(), c.init::<B>(&d).num_params());
        // Explicitly the width is the same model as the default.
        let same = PriorConfig {
            time_embed_dim: Some(8),
            ff_mult: None,
            ..small(0.0)
        };
        assert_eq!(same.num_params(), small(0.0).num_params());
        for time_embed_dim in [None, Some(2048)] {
            let big = PriorConfig {
                embed_dim: 512,
                width: 512,
                depth: 6,
                heads: 8,
                text_len: 77,
                text_width: 512,
                dropout: 0.0,
                time_embed_dim,
                ff_mult: None,
            };
            let n = big.init::<B>(&d).num_params();
            assert_eq!(big.num_params(), n);
            println!(
                "prior params at width 512, depth 6, D 512, W 512, 77 tokens, \
                 time_embed_dim {time_embed_dim:?}: {n}"
            );
        }
    }

    #[test]
    fn time_embed_dim_is_optional_in_serde() {
        let c = small(0.0);
        let v = serde_json::to_value(&c).unwrap();
        assert!(v.get("time_embed_dim").is_none(), "{v}");
        assert_eq!(serde_json::from_value::<PriorConfig>(v).unwrap(), c);
        let c = PriorConfig {
            time_embed_dim: Some(32),
            ff_mult: None,
            ..small(0.0)
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["time_embed_dim"], json!(32));
        assert_eq!(serde_json::from_value::<PriorConfig>(v).unwrap(), c);
        let zero = PriorConfig {
            time_embed_dim: Some(0),
            ff_mult: None,
            ..small(0.0)
        };
        assert!(zero.check().unwrap_err().contains("time_embed_dim"));
    }

    #[test]
    fn keyed_init_accepts_a_fresh_model_and_keeps_the_constants() {
        let c = small(0.0);
        let m = crate::keyed_init(c.init::<B>(&Default::default()), 3).unwrap();
        assert_eq!(m.positional_embedding.val().abs().max().into_scalar(), 0.0);
        assert_eq!(
            m.clip_std.val().into_data().to_vec::<f32>().unwrap(),
            vec![1.0; 6]
        );
        assert!(!m.clip_std.val().is_require_grad());
    }

    #[test]
    fn standardize_round_trip() {
        let c = small(0.0);
        let mean = [0.5, -1.0, 2.0, 0.0, 3.0, -0.25];
        let std = [2.0, 0.5, 1.0, 4.0, 0.25, 1.5];
        let m = c.init::<B>(&Default::default()).with_stats(&mean, &std);
        let z = randn([3, 6], 30);
        let s = m.standardize(z.clone());
        let row: Vec<f32> = s.clone().slice([0..1, 0..6]).into_data().to_vec().unwrap();
        let raw: Vec<f32> = z.clone().slice([0..1, 0..6]).into_data().to_vec().unwrap();
        for k in 0..6 {
            assert!((row[k] - (raw[k] - mean[k]) / std[k]).abs() < 1e-6);
        }
        assert!(max_diff(m.unstandardize(s), z) < 1e-6);
    }

    #[test]
    fn diffusers_round_trip_and_refusals() {
        let d = Default::default();
        let mut c = small(0.1);
        assert!(prior_to_diffusers(&c.init::<B>(&d))
            .unwrap_err()
            .contains("text_width"));
        c.text_width = c.embed_dim;
        let m = model(&c).with_stats(&[1.0; 6], &[2.0; 6]);
        let (cfg, tensors) = prior_to_diffusers(&m).unwrap();
        let map: BTreeMap<String, TensorData> = tensors.into_iter().collect();
        let back = prior_from_diffusers::<B>(&cfg, &map, &d).unwrap();
        assert_eq!(back.config, c);
        let (x, te, enc) = inputs(2, &c);
        let a = m.forward(x.clone(), &[5.0], te.clone(), Some(enc.clone()), None, None);
        let b = back.forward(x, &[5.0], te, Some(enc), None, None);
        assert_eq!(a.into_data(), b.into_data());
        assert_eq!(cfg["time_embed_dim"], Value::Null);

        // A wider timestep MLP travels both ways.
        let wide = PriorConfig {
            time_embed_dim: Some(32),
            ff_mult: None,
            ..c.clone()
        };
        let m = model(&wide);
        let (wcfg, tensors) = prior_to_diffusers(&m).unwrap();
        assert_eq!(wcfg["time_embed_dim"], json!(32));
        let wmap: BTreeMap<String, TensorData> = tensors.into_iter().collect();
        assert_eq!(
            wmap["time_embedding.linear_1.weight"].shape.as_slice(),
            &[32, 8]
        );
        assert_eq!(
            wmap["time_embedding.linear_2.weight"].shape.as_slice(),
            &[8, 32]
        );
        let back = prior_from_diffusers::<B>(&wcfg, &wmap, &d).unwrap();
        assert_eq!(back.config, wide);
        let (x, te, enc) = inputs(2, &wide);
        let a = m.forward(x.clone(), &[5.0], te.clone(), Some(enc.clone()), None, None);
        let b = back.forward(x, &[5.0], te, Some(enc), None, None);
        assert_eq!(a.into_data(), b.into_data());
        // The wide tensors under a default-width config are a shape error, not a panic.
        let mut narrow = wcfg.clone();
        narrow["time_embed_dim"] = Value::Null;
        assert!(prior_from_diffusers::<B>(&narrow, &wmap, &d)
            .unwrap_err()
            .contains("time_embedding.linear_1.weight"));
        // diffusers' `time_embed_dim or inner_dim`: 0 is the default width.
        let mut zero = cfg.clone();
        zero["time_embed_dim"] = json!(0);
        assert_eq!(config_from_diffusers(&zero).unwrap().time_embed_dim, None);

        let mut bad = cfg.clone();
        bad["norm_in_type"] = json!("layer");
        assert!(prior_from_diffusers::<B>(&bad, &map, &d)
            .unwrap_err()
            .contains("norm_in_type"));
        let mut bad = cfg.clone();
        bad["added_emb_type"] = Value::Null;
        assert!(prior_from_diffusers::<B>(&bad, &map, &d).is_err());
        // Karlo-style config: only the old fields, the rest from diffusers' defaults.
        let karlo = json!({"_class_name": "PriorTransformer", "num_attention_heads": 2,
            "attention_head_dim": 4, "num_layers": 2, "embedding_dim": 6, "num_embeddings": 5});
        let k = config_from_diffusers(&karlo).unwrap();
        assert_eq!((k.width, k.dropout, k.text_width), (8, 0.0, 6));
        assert_eq!(k.time_embed_dim, None);
    }
}
