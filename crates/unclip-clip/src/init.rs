//! Seeded random initialisation, following transformers' `CLIPModel` init scheme, drawn from
//! the project's keyed RNG (one stream per tensor name), so a seed always gives the same weights
//! regardless of tensor order or backend.

use burn::tensor::backend::Backend;
use unclip_rng::KeyedRng;

use crate::config::ClipConfig;
use crate::layout::hf_expected;
use crate::model::Clip;
use crate::weights::{HostTensor, WeightMap};

/// The standard deviation transformers initialises `key` with; `None` for LayerNorms and
/// biases (ones / zeros) and the logit scale.
fn init_std(config: &ClipConfig, key: &str) -> Option<f64> {
    let f = config.initializer_factor;
    let (width, layers) = if key.starts_with("vision_model") || key.starts_with("visual_projection")
    {
        (
            config.vision_config.hidden_size,
            config.vision_config.num_hidden_layers,
        )
    } else {
        (
            config.text_config.hidden_size,
            config.text_config.num_hidden_layers,
        )
    };
    let w = width as f64;
    let in_proj_std = w.powf(-0.5) * (2.0 * layers as f64).powf(-0.5) * f;
    if key.ends_with(".bias")
        || key.contains("layer_norm")
        || key.contains("layrnorm")
        || key == "logit_scale"
    {
        return None;
    }
    Some(
        if key.contains("token_embedding")
            || key.starts_with("text_model.embeddings.position_embedding")
        {
            0.02 * f
        } else if key.ends_with("class_embedding") {
            w.powf(-0.5) * f
        } else if key.contains("patch_embedding")
            || key.starts_with("vision_model.embeddings.position_embedding")
        {
            0.02 * f
        } else if key.contains("self_attn.out_proj") {
            w.powf(-0.5) * f
        } else if key.contains("self_attn.") || key.contains("mlp.fc2") {
            in_proj_std
        } else if key.contains("mlp.fc1") {
            (2.0 * w).powf(-0.5) * f
        } else {
            // text_projection / visual_projection
            w.powf(-0.5) * f
        },
    )
}

/// A freshly initialised HF-layout weight map for `config`, a pure function of `seed`.
pub fn init_random_weights(config: &ClipConfig, seed: u64) -> WeightMap {
    hf_expected(config)
        .into_iter()
        .map(|(key, shape)| {
            let n: usize = shape.iter().product();
            let data = match init_std(config, &key) {
                Some(std) => {
                    let mut rng = KeyedRng::new(seed, &format!("clip-init/{key}"), 0, 0);
                    let mut v = vec![0.0f32; n];
                    rng.fill_normal_f32(&mut v);
                    v.iter_mut().for_each(|x| *x *= std as f32);
                    v
                }
                None if key == "logit_scale" => vec![config.logit_scale_init_value as f32],
                None if key.ends_with(".weight") => vec![1.0; n],
                None => vec![0.0; n],
            };
            (key, HostTensor::new(shape, data))
        })
        .collect()
}

/// A seeded random-init CLIP (see [`init_random_weights`]).
pub fn init_random<B: Backend>(config: &ClipConfig, seed: u64, device: &B::Device) -> Clip<B> {
    Clip::from_hf_weights(
        config,
        init_random_weights(config, seed),
        "<random init>",
        device,
    )
    .expect("random init produces exactly the expected keys")
}
