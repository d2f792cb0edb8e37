//! The `config.json` side of the UNets' diffusers layouts: reading diffusers' field names into a
//! [`UNetConfig`] (refusing what this implementation does not compute) and writing the complete
//! config diffusers itself writes.

use serde_json::{json, Value};

use super::{DOWN_ATTN, DOWN_PLAIN, MID_ATTN, MID_PLAIN, UP_ATTN, UP_PLAIN};
use crate::unet::blocks::NORM_EPS;
use crate::unet::UNetConfig;
use crate::DIFFUSERS_VERSION;

fn field<'a>(cfg: &'a Value, key: &str) -> Option<&'a Value> {
    cfg.get(key).filter(|v| !v.is_null())
}

pub(super) fn usize_field(cfg: &Value, key: &str, default: Option<usize>) -> Result<usize, String> {
    match field(cfg, key) {
        None => default.ok_or_else(|| format!("config: {key} is required")),
        Some(v) => v
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| format!("config: {key} = {v} is not a non-negative integer")),
    }
}

/// An integer, or a list whose entries are all equal (diffusers allows per-block lists).
fn uniform_usize(cfg: &Value, key: &str, default: Option<usize>) -> Result<usize, String> {
    match field(cfg, key) {
        Some(Value::Array(items)) => {
            let vals: Vec<u64> = items.iter().filter_map(Value::as_u64).collect();
            match vals.first() {
                Some(&v0) if vals.len() == items.len() && vals.iter().all(|&v| v == v0) => {
                    Ok(v0 as usize)
                }
                _ => Err(format!(
                    "config: {key} must be one integer (or equal integers per block)"
                )),
            }
        }
        _ => usize_field(cfg, key, default),
    }
}

fn usize_list(cfg: &Value, key: &str) -> Result<Vec<usize>, String> {
    let items = field(cfg, key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("config: {key} must be a list"))?;
    items
        .iter()
        .map(|v| {
            v.as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| format!("config: {key} holds {v}, not an integer"))
        })
        .collect()
}

fn str_list(cfg: &Value, key: &str) -> Result<Vec<String>, String> {
    let items = field(cfg, key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("config: {key} must be a list"))?;
    items
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("config: {key} holds {v}, not a string"))
        })
        .collect()
}

fn str_field(cfg: &Value, key: &str, default: Option<&str>) -> Result<Option<String>, String> {
    match field(cfg, key) {
        None => Ok(default.map(str::to_string)),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("config: {key} = {v} is not a string")),
    }
}

fn f64_field(cfg: &Value, key: &str, default: f64) -> Result<f64, String> {
    match field(cfg, key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("config: {key} = {v} is not a number")),
    }
}

/// Fields that must hold diffusers' default (absent or null counts as the default); anything
/// else changes the computation in a way this implementation does not have.
fn require_defaults(cfg: &Value, fields: &[(&str, Value)]) -> Result<(), String> {
    for (key, want) in fields {
        let Some(got) = field(cfg, key) else { continue };
        let same = match (got.as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => got == want,
        };
        if !same {
            return Err(format!(
                "config: {key} = {got} is not supported (only {want})"
            ));
        }
    }
    Ok(())
}

pub(super) fn class_name(cfg: &Value) -> Result<String, String> {
    if !cfg.is_object() {
        return Err("config is not a JSON object".into());
    }
    str_field(cfg, "_class_name", None)?.ok_or_else(|| "config: _class_name is missing".into())
}

fn channels(cfg: &Value) -> Result<(usize, Vec<usize>), String> {
    let block = usize_list(cfg, "block_out_channels")?;
    let first = *block.first().ok_or("config: block_out_channels is empty")?;
    if first == 0 || block.iter().any(|c| c % first != 0) {
        return Err(format!(
            "config: block_out_channels {block:?} must be multiples of the first entry"
        ));
    }
    Ok((first, block.iter().map(|c| c / first).collect()))
}

fn scale_shift(cfg: &Value) -> Result<bool, String> {
    match str_field(cfg, "resnet_time_scale_shift", Some("default"))?.as_deref() {
        Some("scale_shift") => Ok(true),
        Some("default") => Ok(false),
        other => Err(format!(
            "config: resnet_time_scale_shift {other:?} is not supported (default, scale_shift)"
        )),
    }
}

fn class_embed(cfg: &Value) -> Result<bool, String> {
    match str_field(cfg, "class_embed_type", None)?.as_deref() {
        None => Ok(false),
        Some("identity") => Ok(true),
        Some(other) => Err(format!(
            "config: class_embed_type {other:?} is not supported (null, identity)"
        )),
    }
}

fn check_eps(cfg: &Value) -> Result<(), String> {
    let eps = f64_field(cfg, "norm_eps", 1e-5)?;
    if (eps - NORM_EPS).abs() > 1e-12 {
        return Err(format!(
            "config: norm_eps = {eps} is not supported (only 1e-5)"
        ));
    }
    Ok(())
}

fn common_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("act_fn", json!("silu")),
        ("center_input_sample", json!(false)),
        ("flip_sin_to_cos", json!(true)),
        ("freq_shift", json!(0)),
        ("time_embedding_type", json!("positional")),
        ("mid_block_scale_factor", json!(1)),
        ("num_class_embeds", Value::Null),
        ("time_embedding_dim", Value::Null),
    ]
}

pub(super) fn condition_config(cfg: &Value) -> Result<UNetConfig, String> {
    let mut defaults = common_defaults();
    defaults.extend([
        ("resnet_out_scale_factor", json!(1.0)),
        ("resnet_skip_time_act", json!(false)),
        ("only_cross_attention", json!(false)),
        ("mid_block_only_cross_attention", json!(false)),
        ("cross_attention_norm", Value::Null),
        ("encoder_hid_dim", Value::Null),
        ("encoder_hid_dim_type", Value::Null),
        ("addition_embed_type", Value::Null),
        ("time_embedding_act_fn", Value::Null),
        ("timestep_post_act", Value::Null),
        ("time_cond_proj_dim", Value::Null),
        ("conv_in_kernel", json!(3)),
        ("conv_out_kernel", json!(3)),
        ("class_embeddings_concat", json!(false)),
        ("num_attention_heads", Value::Null),
        ("projection_class_embeddings_input_dim", Value::Null),
    ]);
    require_defaults(cfg, &defaults)?;
    check_eps(cfg)?;
    let (model_channels, channel_mult) = channels(cfg)?;
    let down = str_list(cfg, "down_block_types")?;
    let up = str_list(cfg, "up_block_types")?;
    if down.len() != channel_mult.len() || up.len() != down.len() {
        return Err("config: block type lists and block_out_channels differ in length".into());
    }
    let mut attention_levels = Vec::new();
    for (l, d) in down.iter().enumerate() {
        let attn = match d.as_str() {
            DOWN_PLAIN => false,
            DOWN_ATTN => true,
            other => return Err(format!("config: down block type {other} is not supported")),
        };
        let want_up = if attn { UP_ATTN } else { UP_PLAIN };
        if up[up.len() - 1 - l] != want_up {
            return Err(format!(
                "config: up_block_types must mirror down_block_types ({want_up} expected at {})",
                up.len() - 1 - l
            ));
        }
        attention_levels.push(attn);
    }
    match str_field(cfg, "mid_block_type", Some("UNetMidBlock2DCrossAttn"))?.as_deref() {
        Some(MID_ATTN) => {}
        other => {
            return Err(format!(
                "config: mid_block_type {other:?} is not supported ({MID_ATTN})"
            ))
        }
    }
    let unet = UNetConfig {
        in_channels: usize_field(cfg, "in_channels", Some(4))?,
        out_channels: usize_field(cfg, "out_channels", Some(4))?,
        model_channels,
        channel_mult,
        num_res_blocks: uniform_usize(cfg, "layers_per_block", Some(2))?,
        attention_levels,
        head_channels: uniform_usize(cfg, "attention_head_dim", Some(8))?,
        dropout: f64_field(cfg, "dropout", 0.0)?,
        groups: usize_field(cfg, "norm_num_groups", Some(32))?,
        context_dim: Some(uniform_usize(cfg, "cross_attention_dim", Some(1280))?),
        class_embed: class_embed(cfg)?,
        mid_attention: true,
        scale_shift: scale_shift(cfg)?,
        sample_size: field(cfg, "sample_size")
            .and_then(Value::as_u64)
            .map(|v| v as usize),
    };
    unet.validate()?;
    Ok(unet)
}

pub(super) fn plain_config(cfg: &Value) -> Result<UNetConfig, String> {
    require_defaults(cfg, &common_defaults())?;
    check_eps(cfg)?;
    let (model_channels, channel_mult) = channels(cfg)?;
    let down = str_list(cfg, "down_block_types")?;
    let up = str_list(cfg, "up_block_types")?;
    if down.len() != channel_mult.len() || up.len() != down.len() {
        return Err("config: block type lists and block_out_channels differ in length".into());
    }
    if let Some(d) = down.iter().find(|d| d.as_str() != DOWN_PLAIN) {
        return Err(format!(
            "config: down block type {d} is not supported ({DOWN_PLAIN})"
        ));
    }
    if let Some(u) = up.iter().find(|u| u.as_str() != UP_PLAIN) {
        return Err(format!(
            "config: up block type {u} is not supported ({UP_PLAIN})"
        ));
    }
    match str_field(cfg, "mid_block_type", Some(MID_PLAIN))?.as_deref() {
        Some(MID_PLAIN) => {}
        other => {
            return Err(format!(
                "config: mid_block_type {other:?} is not supported ({MID_PLAIN})"
            ))
        }
    }
    if field(cfg, "add_attention").and_then(Value::as_bool) != Some(false) {
        return Err("config: UNet2DModel needs add_attention = false (no attention)".into());
    }
    let levels = channel_mult.len();
    let unet = UNetConfig {
        in_channels: usize_field(cfg, "in_channels", Some(3))?,
        out_channels: usize_field(cfg, "out_channels", Some(3))?,
        model_channels,
        channel_mult,
        num_res_blocks: usize_field(cfg, "layers_per_block", Some(2))?,
        attention_levels: vec![false; levels],
        head_channels: usize_field(cfg, "attention_head_dim", Some(8))?,
        dropout: f64_field(cfg, "dropout", 0.0)?,
        groups: usize_field(cfg, "norm_num_groups", Some(32))?,
        context_dim: None,
        class_embed: class_embed(cfg)?,
        mid_attention: false,
        scale_shift: scale_shift(cfg)?,
        sample_size: field(cfg, "sample_size")
            .and_then(Value::as_u64)
            .map(|v| v as usize),
    };
    unet.validate()?;
    Ok(unet)
}

/// Which diffusers class a config exports to: `UNet2DConditionModel` when it has a context
/// (then with attention in the middle), `UNet2DModel` when it has neither context nor attention.
fn export_class(c: &UNetConfig) -> Result<&'static str, String> {
    let any_attn = c.mid_attention || c.attention_levels.iter().any(|&a| a);
    match (c.context_dim, any_attn) {
        (Some(_), _) if c.mid_attention => Ok("UNet2DConditionModel"),
        (Some(_), _) => Err(
            "diffusers' UNet2DConditionModel (Karlo block types) always has mid-block attention"
                .into(),
        ),
        (None, false) => Ok("UNet2DModel"),
        (None, true) => Err(
            "attention without a context has no diffusers layout here (UNet2DModel's attention \
             blocks differ)"
                .into(),
        ),
    }
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

pub(super) fn export_config(c: &UNetConfig) -> Result<Value, String> {
    c.validate()?;
    let class = export_class(c)?;
    let block: Vec<usize> = c.level_channels();
    let scale_shift = if c.scale_shift {
        "scale_shift"
    } else {
        "default"
    };
    let class_embed = if c.class_embed {
        json!("identity")
    } else {
        Value::Null
    };
    let cfg = if class == "UNet2DConditionModel" {
        let down: Vec<&str> = c
            .attention_levels
            .iter()
            .map(|&a| if a { DOWN_ATTN } else { DOWN_PLAIN })
            .collect();
        let up: Vec<&str> = c
            .attention_levels
            .iter()
            .rev()
            .map(|&a| if a { UP_ATTN } else { UP_PLAIN })
            .collect();
        let head = json!({
            "_class_name": class,
            "_diffusers_version": DIFFUSERS_VERSION,
            "act_fn": "silu",
            "addition_embed_type": null,
            "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": null,
            "attention_head_dim": c.head_channels,
            "attention_type": "default",
            "block_out_channels": block,
            "center_input_sample": false,
            "class_embed_type": class_embed,
            "class_embeddings_concat": false,
            "conv_in_kernel": 3,
            "conv_out_kernel": 3,
            "cross_attention_dim": c.context_dim,
            "cross_attention_norm": null,
            "down_block_types": down,
            "downsample_padding": 1,
            "dropout": c.dropout,
            "dual_cross_attention": false,
        });
        let rest = json!({
            "encoder_hid_dim": null,
            "encoder_hid_dim_type": null,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "in_channels": c.in_channels,
            "layers_per_block": c.num_res_blocks,
            "mid_block_only_cross_attention": null,
            "mid_block_scale_factor": 1,
            "mid_block_type": MID_ATTN,
            "norm_eps": NORM_EPS,
            "norm_num_groups": c.groups,
            "num_attention_heads": null,
            "num_class_embeds": null,
            "only_cross_attention": false,
            "out_channels": c.out_channels,
            "projection_class_embeddings_input_dim": null,
            "resnet_out_scale_factor": 1.0,
            "resnet_skip_time_act": false,
            "resnet_time_scale_shift": scale_shift,
            "reverse_transformer_layers_per_block": null,
            "sample_size": c.sample_size,
            "time_cond_proj_dim": null,
            "time_embedding_act_fn": null,
            "time_embedding_dim": null,
            "time_embedding_type": "positional",
            "timestep_post_act": null,
            "transformer_layers_per_block": 1,
            "up_block_types": up,
            "upcast_attention": false,
            "use_linear_projection": false,
        });
        merge(head, rest)
    } else {
        let levels = block.len();
        json!({
            "_class_name": class,
            "_diffusers_version": DIFFUSERS_VERSION,
            "act_fn": "silu",
            "add_attention": false,
            "attention_head_dim": c.head_channels,
            "attn_norm_num_groups": null,
            "block_out_channels": block,
            "center_input_sample": false,
            "class_embed_type": class_embed,
            "down_block_types": vec![DOWN_PLAIN; levels],
            "downsample_padding": 1,
            "downsample_type": "conv",
            "dropout": c.dropout,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "in_channels": c.in_channels,
            "layers_per_block": c.num_res_blocks,
            "mid_block_scale_factor": 1,
            "mid_block_type": MID_PLAIN,
            "norm_eps": NORM_EPS,
            "norm_num_groups": c.groups,
            "num_class_embeds": null,
            "num_train_timesteps": null,
            "out_channels": c.out_channels,
            "resnet_time_scale_shift": scale_shift,
            "sample_size": c.sample_size,
            "time_embedding_dim": null,
            "time_embedding_type": "positional",
            "up_block_types": vec![UP_PLAIN; levels],
            "upsample_type": "conv",
        })
    };
    Ok(cfg)
}
