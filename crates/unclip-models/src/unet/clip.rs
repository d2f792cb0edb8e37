//! CLIP conditioning of the unCLIP decoder (Karlo's, diffusers' `UnCLIPTextProjModel`).

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::blocks::NORM_EPS;

/// Sizes of [`ClipConditioning`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipCondConfig {
    /// Width D of the CLIP image embedding and of the pooled text embedding.
    pub clip_dim: usize,
    /// Width W of the per-token CLIP text encodings (diffusers requires W = D).
    pub text_width: usize,
    /// The UNet's time-embedding width ([`super::UNetConfig::time_embed_dim`]).
    pub time_embed_dim: usize,
    /// Width of the context tokens (the UNet's `context_dim`).
    pub context_dim: usize,
    /// Number of context tokens made from the image embedding (4 in the paper and Karlo).
    pub extra_tokens: usize,
}

/// Turns (image embedding, pooled text, text encodings) into the decoder's additive embedding
/// and context:
/// * `emb_add = embedding_proj(text_embed) + image_to_time(z_img)`;
/// * context = `extra_tokens` tokens from `extra_tokens_proj(z_img)` (reshaped channel-major:
///   token `j`, channel `c` is output `c·extra_tokens + j`), then
///   `LayerNorm(text_proj(text_encodings))`;
/// * z_img rows flagged in `drop_image` are replaced by the learned null embedding (zeros at
///   construction, so [`crate::keyed_init`] keeps it).
#[derive(Module, Debug)]
pub struct ClipConditioning<B: Backend> {
    /// diffusers `learned_classifier_free_guidance_embeddings`, `[D]`.
    pub null_image_embed: Param<Tensor<B, 1>>,
    /// diffusers `embedding_proj`: pooled text → time embedding.
    pub embedding_proj: Linear<B>,
    /// diffusers `clip_image_embeddings_project_to_time_embeddings`.
    pub image_to_time: Linear<B>,
    /// diffusers `clip_extra_context_tokens_proj`: D → extra_tokens·context_dim.
    pub extra_tokens_proj: Linear<B>,
    /// diffusers `encoder_hidden_states_proj`: W → context_dim.
    pub text_proj: Linear<B>,
    /// diffusers `text_encoder_hidden_states_norm`.
    pub text_norm: LayerNorm<B>,
    pub extra_tokens: usize,
    pub context_dim: usize,
}

impl ClipCondConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipConditioning<B> {
        let lin = |i: usize, o: usize| LinearConfig::new(i, o).init(device);
        ClipConditioning {
            null_image_embed: Param::from_tensor(Tensor::zeros([self.clip_dim], device)),
            embedding_proj: lin(self.clip_dim, self.time_embed_dim),
            image_to_time: lin(self.clip_dim, self.time_embed_dim),
            extra_tokens_proj: lin(self.clip_dim, self.extra_tokens * self.context_dim),
            text_proj: lin(self.text_width, self.context_dim),
            text_norm: LayerNormConfig::new(self.context_dim)
                .with_epsilon(NORM_EPS)
                .init(device),
            extra_tokens: self.extra_tokens,
            context_dim: self.context_dim,
        }
    }
}

impl<B: Backend> ClipConditioning<B> {
    /// `image_embed [N, D]` (rows with `drop_image[i]` replaced by the null embedding; a
    /// shorter `drop_image` leaves the remaining rows), pooled `text_embed [N, D]`,
    /// `text_encodings [N, L, W]`, `text_mask [N, L]` (true = real token).
    /// Returns `(emb_add [N, time_embed_dim], context [N, extra+L, context_dim],
    /// context_mask [N, extra+L])`, the mask with `extra` leading true entries.
    pub fn forward(
        &self,
        image_embed: Tensor<B, 2>,
        drop_image: &[bool],
        text_embed: Tensor<B, 2>,
        text_encodings: Tensor<B, 3>,
        text_mask: Tensor<B, 2, Bool>,
    ) -> (Tensor<B, 2>, Tensor<B, 3>, Tensor<B, 2, Bool>) {
        let device = image_embed.device();
        let [n, d] = image_embed.dims();
        let image = if drop_image.iter().any(|&b| b) {
            let flags: Vec<bool> = (0..n)
                .map(|i| drop_image.get(i).copied().unwrap_or(false))
                .collect();
            let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(flags, [n, 1]), &device)
                .expand([n, d]);
            let null = self.null_image_embed.val().reshape([1, d]).expand([n, d]);
            image_embed.mask_where(mask, null)
        } else {
            image_embed
        };
        let emb_add =
            self.embedding_proj.forward(text_embed) + self.image_to_time.forward(image.clone());
        let (e, c) = (self.extra_tokens, self.context_dim);
        let extra = self
            .extra_tokens_proj
            .forward(image)
            .reshape([n, c, e])
            .swap_dims(1, 2);
        let text = self
            .text_norm
            .forward(self.text_proj.forward(text_encodings));
        let context = Tensor::cat(vec![extra, text], 1);
        let lead =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; n * e], [n, e]), &device);
        let mask = Tensor::cat(vec![lead, text_mask], 1);
        (emb_add, context, mask)
    }
}
