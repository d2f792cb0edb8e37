//! The pre-LayerNorm transformer both CLIP towers share: attention, MLP, residual blocks, and
//! the host ↔ burn conversions for the parameters they hold (Linear and LayerNorm through the
//! shared PyTorch layout module, `unclip-layout`).

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::activation::{gelu, sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};

use crate::config::Activation;
use crate::layout::take;
use crate::weights::{HostTensor, WeightMap};

/// A host tensor as a burn tensor of rank `D`.
pub(crate) fn to_burn<B: Backend, const D: usize>(
    t: HostTensor,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(torch(t), device)
}

/// A burn tensor back on the host as f32.
pub(crate) fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    host(unclip_layout::to_host(t))
}

fn torch(t: HostTensor) -> TensorData {
    TensorData::new(t.data, t.shape)
}

fn host(t: TensorData) -> HostTensor {
    let shape = t.shape.to_vec();
    HostTensor::new(
        shape,
        t.into_vec::<f32>().expect("converted tensor data is f32"),
    )
}

/// A Linear from PyTorch-layout (`[out, in]`) weights (the shared layout conversion).
pub(crate) fn linear_from<B: Backend>(
    map: &mut WeightMap,
    prefix: &str,
    bias: bool,
    device: &B::Device,
) -> Linear<B> {
    let weight = torch(take(map, &format!("{prefix}.weight")));
    let bias = bias.then(|| torch(take(map, &format!("{prefix}.bias"))));
    unclip_layout::linear_from_torch(weight, bias, device)
}

pub(crate) fn linear_into<B: Backend>(linear: &Linear<B>, prefix: &str, out: &mut WeightMap) {
    let (weight, bias) = unclip_layout::linear_to_torch(linear);
    out.insert(format!("{prefix}.weight"), host(weight));
    if let Some(bias) = bias {
        out.insert(format!("{prefix}.bias"), host(bias));
    }
}

pub(crate) fn layer_norm_from<B: Backend>(
    map: &mut WeightMap,
    prefix: &str,
    eps: f64,
    device: &B::Device,
) -> LayerNorm<B> {
    let weight = torch(take(map, &format!("{prefix}.weight")));
    let bias = torch(take(map, &format!("{prefix}.bias")));
    unclip_layout::layer_norm_from_torch(weight, Some(bias), eps, device)
}

pub(crate) fn layer_norm_into<B: Backend>(norm: &LayerNorm<B>, prefix: &str, out: &mut WeightMap) {
    let (weight, bias) = unclip_layout::layer_norm_to_torch(norm);
    out.insert(format!("{prefix}.weight"), host(weight));
    if let Some(bias) = bias {
        out.insert(format!("{prefix}.bias"), host(bias));
    }
}

pub(crate) fn embedding_from<B: Backend>(
    map: &mut WeightMap,
    key: &str,
    device: &B::Device,
) -> Embedding<B> {
    Embedding {
        weight: Param::from_tensor(to_burn(take(map, key), device)),
    }
}

/// Multi-head self-attention with separate q/k/v/out projections (HF naming), no dropout.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Backend> Attention<B> {
    /// `x`: [batch, len, width]; `mask`: [len, len], true where a query must not see a key.
    pub fn forward(&self, x: Tensor<B, 3>, mask: Option<Tensor<B, 2, Bool>>) -> Tensor<B, 3> {
        let [batch, len, width] = x.dims();
        let head_dim = width / self.num_heads;
        let heads = |t: Tensor<B, 3>| {
            t.reshape([batch, len, self.num_heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = heads(
            self.q_proj
                .forward(x.clone())
                .mul_scalar((head_dim as f64).powf(-0.5)),
        );
        let k = heads(self.k_proj.forward(x.clone()));
        let v = heads(self.v_proj.forward(x));
        let mut scores = q.matmul(k.swap_dims(2, 3));
        if let Some(mask) = mask {
            let mask = mask
                .unsqueeze::<4>()
                .expand([batch, self.num_heads, len, len]);
            scores = scores.mask_fill(mask, f32::NEG_INFINITY);
        }
        let context = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([batch, len, width]);
        self.out_proj.forward(context)
    }
}

/// fc1 → activation → fc2.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    #[module(skip)]
    pub quick_gelu: bool,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.fc1.forward(x);
        let h = if self.quick_gelu {
            h.clone() * sigmoid(h.mul_scalar(1.702))
        } else {
            gelu(h)
        };
        self.fc2.forward(h)
    }
}

/// One pre-LayerNorm residual block.
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    pub layer_norm1: LayerNorm<B>,
    pub self_attn: Attention<B>,
    pub layer_norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> EncoderLayer<B> {
    pub fn forward(&self, x: Tensor<B, 3>, mask: Option<Tensor<B, 2, Bool>>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), mask);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// A stack of [`EncoderLayer`]s (`<tower>.encoder.layers.N` in HF keys).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub layers: Vec<EncoderLayer<B>>,
}

/// Shape of one tower's encoder.
pub(crate) struct EncoderShape {
    pub layers: usize,
    pub heads: usize,
    pub eps: f64,
    pub activation: Activation,
}

impl<B: Backend> Encoder<B> {
    pub fn forward(&self, mut x: Tensor<B, 3>, mask: Option<Tensor<B, 2, Bool>>) -> Tensor<B, 3> {
        for layer in &self.layers {
            x = layer.forward(x, mask.clone());
        }
        x
    }

    pub(crate) fn from_weights(
        map: &mut WeightMap,
        prefix: &str,
        shape: &EncoderShape,
        device: &B::Device,
    ) -> Self {
        let layers = (0..shape.layers)
            .map(|i| {
                let l = format!("{prefix}.layers.{i}");
                EncoderLayer {
                    layer_norm1: layer_norm_from(
                        map,
                        &format!("{l}.layer_norm1"),
                        shape.eps,
                        device,
                    ),
                    self_attn: Attention {
                        q_proj: linear_from(map, &format!("{l}.self_attn.q_proj"), true, device),
                        k_proj: linear_from(map, &format!("{l}.self_attn.k_proj"), true, device),
                        v_proj: linear_from(map, &format!("{l}.self_attn.v_proj"), true, device),
                        out_proj: linear_from(
                            map,
                            &format!("{l}.self_attn.out_proj"),
                            true,
                            device,
                        ),
                        num_heads: shape.heads,
                    },
                    layer_norm2: layer_norm_from(
                        map,
                        &format!("{l}.layer_norm2"),
                        shape.eps,
                        device,
                    ),
                    mlp: Mlp {
                        fc1: linear_from(map, &format!("{l}.mlp.fc1"), true, device),
                        fc2: linear_from(map, &format!("{l}.mlp.fc2"), true, device),
                        quick_gelu: shape.activation == Activation::QuickGelu,
                    },
                }
            })
            .collect();
        Self { layers }
    }

    pub(crate) fn to_weights(&self, prefix: &str, out: &mut WeightMap) {
        for (i, layer) in self.layers.iter().enumerate() {
            let l = format!("{prefix}.layers.{i}");
            layer_norm_into(&layer.layer_norm1, &format!("{l}.layer_norm1"), out);
            let a = &layer.self_attn;
            linear_into(&a.q_proj, &format!("{l}.self_attn.q_proj"), out);
            linear_into(&a.k_proj, &format!("{l}.self_attn.k_proj"), out);
            linear_into(&a.v_proj, &format!("{l}.self_attn.v_proj"), out);
            linear_into(&a.out_proj, &format!("{l}.self_attn.out_proj"), out);
            layer_norm_into(&layer.layer_norm2, &format!("{l}.layer_norm2"), out);
            linear_into(&layer.mlp.fc1, &format!("{l}.mlp.fc1"), out);
            linear_into(&layer.mlp.fc2, &format!("{l}.mlp.fc2"), out);
        }
    }
}
