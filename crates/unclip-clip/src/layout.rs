//! Checkpoint key layouts: transformers' `CLIPModel` (our native naming) and open_clip's.
//!
//! The model is built from a HF-named [`WeightMap`]; open_clip files are checked in their own
//! names and then renamed, with q/k/v split out of `in_proj_*` and the `[W, P]` projections
//! transposed to HF's `[P, W]` Linear weights.

use crate::config::ClipConfig;
use crate::error::ClipError;
use crate::weights::{check_keys, HostTensor, WeightMap};

type Expected = Vec<(String, Vec<usize>)>;

/// Keys some exporters write that carry no learned state.
fn is_buffer(key: &str) -> bool {
    key.ends_with("position_ids") || key == "attn_mask" || key.ends_with(".attn_mask")
}

/// Every key of a HF `CLIPModel` state dict for `config`, with its shape.
pub fn hf_expected(config: &ClipConfig) -> Expected {
    let t = &config.text_config;
    let v = &config.vision_config;
    let p = config.projection_dim;
    let mut e: Expected = vec![
        ("logit_scale".into(), vec![]),
        ("text_projection.weight".into(), vec![p, t.hidden_size]),
        ("visual_projection.weight".into(), vec![p, v.hidden_size]),
        (
            "text_model.embeddings.token_embedding.weight".into(),
            vec![t.vocab_size, t.hidden_size],
        ),
        (
            "text_model.embeddings.position_embedding.weight".into(),
            vec![t.max_position_embeddings, t.hidden_size],
        ),
        (
            "text_model.final_layer_norm.weight".into(),
            vec![t.hidden_size],
        ),
        (
            "text_model.final_layer_norm.bias".into(),
            vec![t.hidden_size],
        ),
        (
            "vision_model.embeddings.class_embedding".into(),
            vec![v.hidden_size],
        ),
        (
            "vision_model.embeddings.patch_embedding.weight".into(),
            vec![v.hidden_size, v.num_channels, v.patch_size, v.patch_size],
        ),
        (
            "vision_model.embeddings.position_embedding.weight".into(),
            vec![config.grid_size() * config.grid_size() + 1, v.hidden_size],
        ),
        (
            "vision_model.pre_layrnorm.weight".into(),
            vec![v.hidden_size],
        ),
        ("vision_model.pre_layrnorm.bias".into(), vec![v.hidden_size]),
        (
            "vision_model.post_layernorm.weight".into(),
            vec![v.hidden_size],
        ),
        (
            "vision_model.post_layernorm.bias".into(),
            vec![v.hidden_size],
        ),
    ];
    for (tower, layers, w, inter) in [
        (
            "text_model",
            t.num_hidden_layers,
            t.hidden_size,
            t.intermediate_size,
        ),
        (
            "vision_model",
            v.num_hidden_layers,
            v.hidden_size,
            v.intermediate_size,
        ),
    ] {
        for i in 0..layers {
            let l = format!("{tower}.encoder.layers.{i}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                e.push((format!("{l}.self_attn.{proj}.weight"), vec![w, w]));
                e.push((format!("{l}.self_attn.{proj}.bias"), vec![w]));
            }
            for norm in ["layer_norm1", "layer_norm2"] {
                e.push((format!("{l}.{norm}.weight"), vec![w]));
                e.push((format!("{l}.{norm}.bias"), vec![w]));
            }
            e.push((format!("{l}.mlp.fc1.weight"), vec![inter, w]));
            e.push((format!("{l}.mlp.fc1.bias"), vec![inter]));
            e.push((format!("{l}.mlp.fc2.weight"), vec![w, inter]));
            e.push((format!("{l}.mlp.fc2.bias"), vec![w]));
        }
    }
    e
}

/// Check a HF-layout map against `config`.
pub fn check_hf(path: &str, config: &ClipConfig, map: &mut WeightMap) -> Result<(), ClipError> {
    check_keys(
        path,
        "transformers CLIPModel",
        map,
        &hf_expected(config),
        is_buffer,
    )
}

/// Every key of an open_clip `CLIP` state dict for `config`, with its shape.
fn open_clip_expected(config: &ClipConfig) -> Expected {
    let t = &config.text_config;
    let v = &config.vision_config;
    let p = config.projection_dim;
    let mut e: Expected = vec![
        ("logit_scale".into(), vec![]),
        ("text_projection".into(), vec![t.hidden_size, p]),
        ("visual.proj".into(), vec![v.hidden_size, p]),
        (
            "token_embedding.weight".into(),
            vec![t.vocab_size, t.hidden_size],
        ),
        (
            "positional_embedding".into(),
            vec![t.max_position_embeddings, t.hidden_size],
        ),
        ("ln_final.weight".into(), vec![t.hidden_size]),
        ("ln_final.bias".into(), vec![t.hidden_size]),
        ("visual.class_embedding".into(), vec![v.hidden_size]),
        (
            "visual.conv1.weight".into(),
            vec![v.hidden_size, v.num_channels, v.patch_size, v.patch_size],
        ),
        (
            "visual.positional_embedding".into(),
            vec![config.grid_size() * config.grid_size() + 1, v.hidden_size],
        ),
        ("visual.ln_pre.weight".into(), vec![v.hidden_size]),
        ("visual.ln_pre.bias".into(), vec![v.hidden_size]),
        ("visual.ln_post.weight".into(), vec![v.hidden_size]),
        ("visual.ln_post.bias".into(), vec![v.hidden_size]),
    ];
    for (tower, layers, w, inter) in [
        ("", t.num_hidden_layers, t.hidden_size, t.intermediate_size),
        (
            "visual.",
            v.num_hidden_layers,
            v.hidden_size,
            v.intermediate_size,
        ),
    ] {
        for i in 0..layers {
            let l = format!("{tower}transformer.resblocks.{i}");
            e.push((format!("{l}.attn.in_proj_weight"), vec![3 * w, w]));
            e.push((format!("{l}.attn.in_proj_bias"), vec![3 * w]));
            e.push((format!("{l}.attn.out_proj.weight"), vec![w, w]));
            e.push((format!("{l}.attn.out_proj.bias"), vec![w]));
            for norm in ["ln_1", "ln_2"] {
                e.push((format!("{l}.{norm}.weight"), vec![w]));
                e.push((format!("{l}.{norm}.bias"), vec![w]));
            }
            e.push((format!("{l}.mlp.c_fc.weight"), vec![inter, w]));
            e.push((format!("{l}.mlp.c_fc.bias"), vec![inter]));
            e.push((format!("{l}.mlp.c_proj.weight"), vec![w, inter]));
            e.push((format!("{l}.mlp.c_proj.bias"), vec![w]));
        }
    }
    e
}

/// Check an open_clip map against `config` (in open_clip's names), then rename it to HF's.
pub fn open_clip_to_hf(
    path: &str,
    config: &ClipConfig,
    mut src: WeightMap,
) -> Result<WeightMap, ClipError> {
    check_keys(
        path,
        "open_clip",
        &mut src,
        &open_clip_expected(config),
        is_buffer,
    )?;
    let mut out = WeightMap::new();
    for (key, tensor) in src {
        if key == "text_projection" || key == "visual.proj" {
            let hf = if key == "text_projection" {
                "text_projection.weight"
            } else {
                "visual_projection.weight"
            };
            out.insert(hf.to_string(), tensor.transposed());
            continue;
        }
        let (tower, rest) = match key.strip_prefix("visual.") {
            Some(rest) => ("vision_model", rest),
            None => ("text_model", key.as_str()),
        };
        if let Some(block) = rest.strip_prefix("transformer.resblocks.") {
            let (index, part) = block
                .split_once('.')
                .expect("checked key has a block index");
            let l = format!("{tower}.encoder.layers.{index}");
            match part {
                "attn.in_proj_weight" | "attn.in_proj_bias" => {
                    let kind = if part.ends_with("weight") {
                        "weight"
                    } else {
                        "bias"
                    };
                    let w = tensor.shape[0] / 3;
                    for (j, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                        out.insert(
                            format!("{l}.self_attn.{proj}.{kind}"),
                            tensor.rows(j * w, w),
                        );
                    }
                }
                _ => {
                    let hf_part = part
                        .replace("attn.out_proj", "self_attn.out_proj")
                        .replace("ln_1", "layer_norm1")
                        .replace("ln_2", "layer_norm2")
                        .replace("mlp.c_fc", "mlp.fc1")
                        .replace("mlp.c_proj", "mlp.fc2");
                    out.insert(format!("{l}.{hf_part}"), tensor);
                }
            }
            continue;
        }
        let hf = match rest {
            "logit_scale" => "logit_scale".to_string(),
            "token_embedding.weight" => format!("{tower}.embeddings.token_embedding.weight"),
            "positional_embedding" => format!("{tower}.embeddings.position_embedding.weight"),
            "class_embedding" => format!("{tower}.embeddings.class_embedding"),
            "conv1.weight" => format!("{tower}.embeddings.patch_embedding.weight"),
            "ln_pre.weight" => format!("{tower}.pre_layrnorm.weight"),
            "ln_pre.bias" => format!("{tower}.pre_layrnorm.bias"),
            "ln_post.weight" => format!("{tower}.post_layernorm.weight"),
            "ln_post.bias" => format!("{tower}.post_layernorm.bias"),
            "ln_final.weight" => format!("{tower}.final_layer_norm.weight"),
            "ln_final.bias" => format!("{tower}.final_layer_norm.bias"),
            other => {
                unreachable!("key `{other}` passed the open_clip key check but has no HF name")
            }
        };
        out.insert(hf, tensor);
    }
    Ok(out)
}

/// A tensor the caller knows is in a checked map.
pub(crate) fn take(map: &mut WeightMap, key: &str) -> HostTensor {
    map.remove(key)
        .unwrap_or_else(|| panic!("`{key}` is in the checked key set"))
}
