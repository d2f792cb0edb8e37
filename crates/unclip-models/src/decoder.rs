//! The unCLIP decoder network: the ADM [`UNet`] conditioned on a CLIP image embedding and a
//! caption through [`ClipConditioning`] (diffusers' `UNet2DConditionModel` +
//! `UnCLIPTextProjModel`, Karlo's decoder).
//!
//! [`DecoderInputs`] is exactly what the network receives for a batch: classifier-free
//! guidance replaces a row's image embedding by the learned null embedding and its caption by
//! the empty caption; the flags travel with the inputs so callers (and tests) can see which rows
//! were dropped. Sampling loops and the `model:` section live in the stage layer; the diffusers
//! layout of both halves is in [`crate::unet`]'s adapters.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};

use crate::{ClipCondConfig, ClipConditioning, NoiseKey, UNet, UNetConfig};

/// Shape of a [`Decoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub unet: UNetConfig,
    pub cond: ClipCondConfig,
}

impl DecoderConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Decoder<B> {
        Decoder {
            unet: self.unet.init(device),
            cond: self.cond.init(device),
        }
    }
}

/// The decoder network: CLIP conditioning + UNet.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub unet: UNet<B>,
    pub cond: ClipConditioning<B>,
}

/// Exactly what the decoder network receives for a batch (after the CFG drops).
#[derive(Debug, Clone)]
pub struct DecoderInputs<B: Backend> {
    /// Rows replaced by the learned null image embedding.
    pub drop_image: Vec<bool>,
    /// Rows replaced by the empty caption.
    pub drop_text: Vec<bool>,
    /// `[N, D]`, dropped rows = the null embedding.
    pub image_embed: Tensor<B, 2>,
    /// Pooled text embedding `[N, D]`, dropped rows = the empty caption's.
    pub text_embed: Tensor<B, 2>,
    /// `[N, L, W]`, dropped rows = the empty caption's encodings.
    pub text_encodings: Tensor<B, 3>,
    /// `[N, L]` (true = real token), dropped rows = the empty caption's mask.
    pub text_mask: Tensor<B, 2, Bool>,
}

impl<B: Backend> DecoderInputs<B> {
    /// `self` rows followed by `other` rows (the doubled batch of guidance).
    pub fn cat(&self, other: &Self) -> Self {
        let flags = |a: &[bool], b: &[bool]| a.iter().chain(b).copied().collect();
        Self {
            drop_image: flags(&self.drop_image, &other.drop_image),
            drop_text: flags(&self.drop_text, &other.drop_text),
            image_embed: Tensor::cat(vec![self.image_embed.clone(), other.image_embed.clone()], 0),
            text_embed: Tensor::cat(vec![self.text_embed.clone(), other.text_embed.clone()], 0),
            text_encodings: Tensor::cat(
                vec![self.text_encodings.clone(), other.text_encodings.clone()],
                0,
            ),
            text_mask: Tensor::cat(vec![self.text_mask.clone(), other.text_mask.clone()], 0),
        }
    }
}

/// A batch's caption side as the decoder takes it: pooled embedding `[N, D]`, per-token
/// encodings `[N, L, W]` and mask `[N, L]` (rows of dropped captions already replaced by the
/// empty caption's).
pub struct CaptionInputs<B: Backend> {
    pub text_embed: Tensor<B, 2>,
    pub text_encodings: Tensor<B, 3>,
    pub text_mask: Tensor<B, 2, Bool>,
}

impl<B: Backend> Decoder<B> {
    /// The network output for `x_t` at (un-respaced) timesteps `t`; dropout only with `key`.
    pub fn forward(
        &self,
        x_t: Tensor<B, 4>,
        t: &[usize],
        inputs: &DecoderInputs<B>,
        key: Option<&NoiseKey>,
    ) -> Tensor<B, 4> {
        let (emb, context, mask) = self.cond.forward(
            inputs.image_embed.clone(),
            &[],
            inputs.text_embed.clone(),
            inputs.text_encodings.clone(),
            inputs.text_mask.clone(),
        );
        let t: Vec<f64> = t.iter().map(|&s| s as f64).collect();
        self.unet
            .forward(x_t, &t, Some(emb), Some(context), Some(mask), key)
    }

    /// The inputs of CLIP image embeddings `image_embed` `[N, D]` and `caption`: rows flagged
    /// in `drop_image` get the learned null embedding (the caller has replaced dropped captions,
    /// flagged in `drop_text`), and both embeddings are multiplied by `embed_scale`.
    pub fn inputs(
        &self,
        image_embed: Tensor<B, 2>,
        drop_image: Vec<bool>,
        drop_text: Vec<bool>,
        caption: CaptionInputs<B>,
        embed_scale: f64,
    ) -> DecoderInputs<B> {
        let null = self.cond.null_image_embed.val();
        let image_embed = with_null(image_embed, null, &drop_image);
        let (image_embed, text_embed) = if embed_scale == 1.0 {
            (image_embed, caption.text_embed)
        } else {
            (image_embed * embed_scale, caption.text_embed * embed_scale)
        };
        DecoderInputs {
            image_embed,
            drop_image,
            drop_text,
            text_embed,
            text_encodings: caption.text_encodings,
            text_mask: caption.text_mask,
        }
    }
}

/// Rows flagged in `drop` of `image` replaced by `null` `[D]`.
fn with_null<B: Backend>(image: Tensor<B, 2>, null: Tensor<B, 1>, drop: &[bool]) -> Tensor<B, 2> {
    if !drop.iter().any(|&d| d) {
        return image;
    }
    let [n, d] = image.dims();
    let device = image.device();
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(drop.to_vec(), [n, 1]), &device)
        .expand([n, d]);
    image.mask_where(mask, null.reshape([1, d]).expand([n, d]))
}
