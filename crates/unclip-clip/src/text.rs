//! CLIP's text tower: token + position embeddings, a causal transformer, the final LayerNorm,
//! and pooling at the first end-of-text token.

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::config::ClipTextConfig;
use crate::layers::{
    embedding_from, layer_norm_from, layer_norm_into, to_burn, to_host, Encoder, EncoderShape,
};
use crate::weights::WeightMap;

/// `text_model.*` of a HF `CLIPModel`.
#[derive(Module, Debug)]
pub struct TextTransformer<B: Backend> {
    pub token_embedding: Embedding<B>,
    /// [max_position_embeddings, width]
    pub position_embedding: Param<Tensor<B, 2>>,
    pub encoder: Encoder<B>,
    pub final_layer_norm: LayerNorm<B>,
    #[module(skip)]
    pub eos_token_id: u32,
}

/// What the text tower gives for a batch of token rows.
#[derive(Debug, Clone)]
pub struct TextFeatures<B: Backend> {
    /// Last hidden states after the final LayerNorm: [batch, len, width].
    pub encodings: Tensor<B, 3>,
    /// The encoding at each row's first end-of-text token: [batch, width].
    pub pooled: Tensor<B, 2>,
    /// True up to and including the end-of-text token: [batch, len].
    pub mask: Tensor<B, 2, Bool>,
}

/// Where a row is pooled: its first `eos` id. transformers' legacy `eos_token_id == 2`, or a row
/// without the id, falls back to the first largest id (CLIP's end token is its largest id).
pub fn pool_position(ids: &[u32], eos: u32) -> usize {
    if eos != 2 {
        if let Some(p) = ids.iter().position(|&t| t == eos) {
            return p;
        }
    }
    let max = ids.iter().copied().max().unwrap_or(0);
    ids.iter().position(|&t| t == max).unwrap_or(0)
}

impl<B: Backend> TextTransformer<B> {
    /// `ids`: equally long rows (at most `max_position_embeddings`) of token ids.
    ///
    /// # Panics
    /// If the rows differ in length or are longer than the position table.
    pub fn forward(&self, ids: &[Vec<u32>]) -> TextFeatures<B> {
        let device = self.position_embedding.device();
        let batch = ids.len();
        let len = ids.first().map_or(0, Vec::len);
        assert!(
            ids.iter().all(|r| r.len() == len),
            "token rows must have equal length"
        );
        let flat: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, len]), &device);
        let positions = self
            .position_embedding
            .val()
            .narrow(0, 0, len)
            .unsqueeze::<3>();
        let x = self.token_embedding.forward(tokens) + positions;
        let causal = Tensor::<B, 2, Bool>::tril_mask([len, len], 0, &device);
        let encodings = self
            .final_layer_norm
            .forward(self.encoder.forward(x, Some(causal)));
        let width = encodings.dims()[2];

        let pools: Vec<usize> = ids
            .iter()
            .map(|r| pool_position(r, self.eos_token_id))
            .collect();
        let index: Vec<i64> = pools
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p as i64, width))
            .collect();
        let index =
            Tensor::<B, 3, Int>::from_data(TensorData::new(index, [batch, 1, width]), &device);
        let pooled = encodings.clone().gather(1, index).reshape([batch, width]);
        let mask: Vec<bool> = pools
            .iter()
            .flat_map(|&p| (0..len).map(move |i| i <= p))
            .collect();
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [batch, len]), &device);
        TextFeatures {
            encodings,
            pooled,
            mask,
        }
    }

    pub(crate) fn from_weights(
        map: &mut WeightMap,
        config: &ClipTextConfig,
        device: &B::Device,
    ) -> Self {
        let shape = EncoderShape {
            layers: config.num_hidden_layers,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps,
            activation: config.hidden_act,
        };
        Self {
            token_embedding: embedding_from(
                map,
                "text_model.embeddings.token_embedding.weight",
                device,
            ),
            position_embedding: Param::from_tensor(to_burn(
                crate::layout::take(map, "text_model.embeddings.position_embedding.weight"),
                device,
            )),
            encoder: Encoder::from_weights(map, "text_model.encoder", &shape, device),
            final_layer_norm: layer_norm_from(
                map,
                "text_model.final_layer_norm",
                config.layer_norm_eps,
                device,
            ),
            eos_token_id: config.eos_token_id,
        }
    }

    pub(crate) fn to_weights(&self, out: &mut WeightMap) {
        out.insert(
            "text_model.embeddings.token_embedding.weight".into(),
            to_host(self.token_embedding.weight.val()),
        );
        out.insert(
            "text_model.embeddings.position_embedding.weight".into(),
            to_host(self.position_embedding.val()),
        );
        self.encoder.to_weights("text_model.encoder", out);
        layer_norm_into(&self.final_layer_norm, "text_model.final_layer_norm", out);
    }
}
