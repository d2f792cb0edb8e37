//! CLIP's vision tower: patch convolution, class token, position embeddings, pre-LayerNorm,
//! the transformer, and the post-LayerNorm on the class token.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::config::ClipVisionConfig;
use crate::layers::{layer_norm_from, layer_norm_into, to_burn, to_host, Encoder, EncoderShape};
use crate::layout::take;
use crate::weights::WeightMap;

/// `vision_model.*` of a HF `CLIPModel`.
#[derive(Module, Debug)]
pub struct VisionTransformer<B: Backend> {
    /// Patch embedding: stride = kernel = patch size, no bias.
    pub patch_embedding: Conv2d<B>,
    /// [width]
    pub class_embedding: Param<Tensor<B, 1>>,
    /// [grid² + 1, width]
    pub position_embedding: Param<Tensor<B, 2>>,
    pub pre_layrnorm: LayerNorm<B>,
    pub encoder: Encoder<B>,
    pub post_layernorm: LayerNorm<B>,
}

impl<B: Backend> VisionTransformer<B> {
    /// `pixel_values`: [batch, channels, image_size, image_size] (CLIP-normalised) →
    /// the post-LayerNorm class token, [batch, width].
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 2> {
        let patches = self.patch_embedding.forward(pixel_values);
        let [batch, width, gh, gw] = patches.dims();
        let patches = patches.reshape([batch, width, gh * gw]).swap_dims(1, 2);
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, width])
            .expand([batch, 1, width]);
        let x =
            Tensor::cat(vec![class, patches], 1) + self.position_embedding.val().unsqueeze::<3>();
        let x = self.encoder.forward(self.pre_layrnorm.forward(x), None);
        let class_out = x.slice([0..batch, 0..1]).reshape([batch, width]);
        self.post_layernorm.forward(class_out)
    }

    pub(crate) fn from_weights(
        map: &mut WeightMap,
        config: &ClipVisionConfig,
        device: &B::Device,
    ) -> Self {
        let p = config.patch_size;
        let mut patch_embedding =
            Conv2dConfig::new([config.num_channels, config.hidden_size], [p, p])
                .with_stride([p, p])
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device);
        patch_embedding.weight = Param::from_tensor(to_burn(
            take(map, "vision_model.embeddings.patch_embedding.weight"),
            device,
        ));
        let shape = EncoderShape {
            layers: config.num_hidden_layers,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps,
            activation: config.hidden_act,
        };
        let eps = config.layer_norm_eps;
        Self {
            patch_embedding,
            class_embedding: Param::from_tensor(to_burn(
                take(map, "vision_model.embeddings.class_embedding"),
                device,
            )),
            position_embedding: Param::from_tensor(to_burn(
                take(map, "vision_model.embeddings.position_embedding.weight"),
                device,
            )),
            pre_layrnorm: layer_norm_from(map, "vision_model.pre_layrnorm", eps, device),
            encoder: Encoder::from_weights(map, "vision_model.encoder", &shape, device),
            post_layernorm: layer_norm_from(map, "vision_model.post_layernorm", eps, device),
        }
    }

    pub(crate) fn to_weights(&self, out: &mut WeightMap) {
        out.insert(
            "vision_model.embeddings.patch_embedding.weight".into(),
            to_host(self.patch_embedding.weight.val()),
        );
        out.insert(
            "vision_model.embeddings.class_embedding".into(),
            to_host(self.class_embedding.val()),
        );
        out.insert(
            "vision_model.embeddings.position_embedding.weight".into(),
            to_host(self.position_embedding.val()),
        );
        layer_norm_into(&self.pre_layrnorm, "vision_model.pre_layrnorm", out);
        self.encoder.to_weights("vision_model.encoder", out);
        layer_norm_into(&self.post_layernorm, "vision_model.post_layernorm", out);
    }
}
