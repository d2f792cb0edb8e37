//! diffusers layouts of the UNet and of the CLIP conditioning: `UNet2DConditionModel` (the
//! unCLIP decoder), `UNet2DModel` (the super-resolution stages) and `UnCLIPTextProjModel`,
//! with their `config.json` (diffusers' field names) and state-dict keys / PyTorch shapes.
//!
//! Import checks every config field that changes the computation (refusing values this
//! implementation does not have), requires every expected tensor with its exact shape and
//! refuses unknown tensors. Export writes the complete config diffusers itself writes (all
//! `register_to_config` fields, defaults included) and the full state dict.

use std::collections::{BTreeMap, BTreeSet};

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde_json::{json, Value};

use super::blocks::{ResBlock, ZeroConv2d, ZeroLinear, NORM_EPS};
use super::{AttentionBlock, ClipCondConfig, ClipConditioning, Level, UNet, UNetConfig};
use crate::timestep::TimestepMlp;

/// The diffusers release whose layout and config fields the export reproduces.
pub const DIFFUSERS_VERSION: &str = "0.42.1";

const DOWN_PLAIN: &str = "ResnetDownsampleBlock2D";
const DOWN_ATTN: &str = "SimpleCrossAttnDownBlock2D";
const UP_PLAIN: &str = "ResnetUpsampleBlock2D";
const UP_ATTN: &str = "SimpleCrossAttnUpBlock2D";
const MID_ATTN: &str = "UNetMidBlock2DSimpleCrossAttn";
const MID_PLAIN: &str = "UNetMidBlock2D";

type Tensors = BTreeMap<String, TensorData>;

// ------------------------------------------------------------------ reading tensors

struct Reader<'a, B: Backend> {
    src: &'a Tensors,
    used: BTreeSet<String>,
    errors: Vec<String>,
    device: B::Device,
}

impl<'a, B: Backend> Reader<'a, B> {
    fn new(src: &'a Tensors, device: &B::Device) -> Self {
        Self {
            src,
            used: BTreeSet::new(),
            errors: Vec::new(),
            device: device.clone(),
        }
    }

    /// The tensor `key` as f32 with exactly `shape`, or None (error recorded).
    fn take<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Option<Tensor<B, D>> {
        let Some(data) = self.src.get(key) else {
            self.errors.push(format!("missing tensor {key} {shape:?}"));
            return None;
        };
        self.used.insert(key.to_string());
        if data.shape.as_slice() != shape.as_slice() {
            self.errors.push(format!(
                "tensor {key}: shape {:?}, expected {shape:?}",
                data.shape
            ));
            return None;
        }
        let values: Vec<f32> = match data.clone().convert::<f32>().to_vec() {
            Ok(v) => v,
            Err(e) => {
                self.errors
                    .push(format!("tensor {key}: unreadable ({e:?})"));
                return None;
            }
        };
        Some(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }

    fn param<const D: usize>(&mut self, key: &str, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let shape: [usize; D] = p.shape().dims();
        match self.take(key, shape) {
            Some(t) => Param::from_tensor(t),
            None => p,
        }
    }

    fn linear(&mut self, key: &str, mut l: Linear<B>) -> Linear<B> {
        let [din, dout] = l.weight.shape().dims();
        if let Some(w) = self.take::<2>(&format!("{key}.weight"), [dout, din]) {
            l.weight = Param::from_tensor(w.transpose());
        }
        l.bias = l.bias.map(|b| self.param(&format!("{key}.bias"), b));
        l
    }

    fn zero_linear(&mut self, key: &str, mut l: ZeroLinear<B>) -> ZeroLinear<B> {
        let [din, dout] = l.weight.shape().dims();
        if let Some(w) = self.take::<2>(&format!("{key}.weight"), [dout, din]) {
            l.weight = Param::from_tensor(w.transpose());
        }
        l.bias = self.param(&format!("{key}.bias"), l.bias);
        l
    }

    fn conv(&mut self, key: &str, mut c: Conv2d<B>) -> Conv2d<B> {
        c.weight = self.param(&format!("{key}.weight"), c.weight);
        c.bias = c.bias.map(|b| self.param(&format!("{key}.bias"), b));
        c
    }

    fn zero_conv(&mut self, key: &str, mut c: ZeroConv2d<B>) -> ZeroConv2d<B> {
        c.weight = self.param(&format!("{key}.weight"), c.weight);
        c.bias = self.param(&format!("{key}.bias"), c.bias);
        c
    }

    fn group_norm(&mut self, key: &str, mut n: GroupNorm<B>) -> GroupNorm<B> {
        n.gamma = n.gamma.map(|g| self.param(&format!("{key}.weight"), g));
        n.beta = n.beta.map(|b| self.param(&format!("{key}.bias"), b));
        n
    }

    fn layer_norm(&mut self, key: &str, mut n: LayerNorm<B>) -> LayerNorm<B> {
        n.gamma = self.param(&format!("{key}.weight"), n.gamma);
        n.beta = n.beta.map(|b| self.param(&format!("{key}.bias"), b));
        n
    }

    fn res(&mut self, key: &str, mut r: ResBlock<B>) -> ResBlock<B> {
        r.norm1 = self.group_norm(&format!("{key}.norm1"), r.norm1);
        r.conv1 = self.conv(&format!("{key}.conv1"), r.conv1);
        r.emb_proj = self.linear(&format!("{key}.time_emb_proj"), r.emb_proj);
        r.norm2 = self.group_norm(&format!("{key}.norm2"), r.norm2);
        r.conv2 = self.zero_conv(&format!("{key}.conv2"), r.conv2);
        r.skip = r
            .skip
            .map(|s| self.conv(&format!("{key}.conv_shortcut"), s));
        r
    }

    fn attn(&mut self, key: &str, mut a: AttentionBlock<B>) -> AttentionBlock<B> {
        a.norm = self.group_norm(&format!("{key}.group_norm"), a.norm);
        a.to_q = self.linear(&format!("{key}.to_q"), a.to_q);
        a.to_k = self.linear(&format!("{key}.to_k"), a.to_k);
        a.to_v = self.linear(&format!("{key}.to_v"), a.to_v);
        a.add_k = a
            .add_k
            .map(|l| self.linear(&format!("{key}.add_k_proj"), l));
        a.add_v = a
            .add_v
            .map(|l| self.linear(&format!("{key}.add_v_proj"), l));
        a.to_out = self.zero_linear(&format!("{key}.to_out.0"), a.to_out);
        a
    }

    fn level(&mut self, key: &str, mut lv: Level<B>, resample: &str) -> Level<B> {
        lv.resnets = std::mem::take(&mut lv.resnets)
            .into_iter()
            .enumerate()
            .map(|(j, r)| self.res(&format!("{key}.resnets.{j}"), r))
            .collect();
        lv.attentions = std::mem::take(&mut lv.attentions)
            .into_iter()
            .enumerate()
            .map(|(j, a)| self.attn(&format!("{key}.attentions.{j}"), a))
            .collect();
        lv.resample = lv
            .resample
            .map(|r| self.res(&format!("{key}.{resample}.0"), r));
        lv
    }

    fn time(&mut self, key: &str, mut t: TimestepMlp<B>) -> TimestepMlp<B> {
        t.linear_1 = self.linear(&format!("{key}.linear_1"), t.linear_1);
        t.linear_2 = self.linear(&format!("{key}.linear_2"), t.linear_2);
        t
    }

    fn finish(self) -> Result<(), String> {
        let mut errors = self.errors;
        errors.extend(
            self.src
                .keys()
                .filter(|k| !self.used.contains(*k))
                .map(|k| format!("unexpected tensor {k}")),
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

// ------------------------------------------------------------------ writing tensors

struct Writer {
    out: Tensors,
}

impl Writer {
    fn put<B: Backend, const D: usize>(&mut self, key: String, t: Tensor<B, D>) {
        self.out.insert(key, t.into_data().convert::<f32>());
    }

    fn linear<B: Backend>(&mut self, key: &str, l: &Linear<B>) {
        self.put(format!("{key}.weight"), l.weight.val().transpose());
        if let Some(b) = &l.bias {
            self.put(format!("{key}.bias"), b.val());
        }
    }

    fn zero_linear<B: Backend>(&mut self, key: &str, l: &ZeroLinear<B>) {
        self.put(format!("{key}.weight"), l.weight.val().transpose());
        self.put(format!("{key}.bias"), l.bias.val());
    }

    fn conv<B: Backend>(&mut self, key: &str, c: &Conv2d<B>) {
        self.put(format!("{key}.weight"), c.weight.val());
        if let Some(b) = &c.bias {
            self.put(format!("{key}.bias"), b.val());
        }
    }

    fn zero_conv<B: Backend>(&mut self, key: &str, c: &ZeroConv2d<B>) {
        self.put(format!("{key}.weight"), c.weight.val());
        self.put(format!("{key}.bias"), c.bias.val());
    }

    fn group_norm<B: Backend>(&mut self, key: &str, n: &GroupNorm<B>) {
        if let Some(g) = &n.gamma {
            self.put(format!("{key}.weight"), g.val());
        }
        if let Some(b) = &n.beta {
            self.put(format!("{key}.bias"), b.val());
        }
    }

    fn layer_norm<B: Backend>(&mut self, key: &str, n: &LayerNorm<B>) {
        self.put(format!("{key}.weight"), n.gamma.val());
        if let Some(b) = &n.beta {
            self.put(format!("{key}.bias"), b.val());
        }
    }

    fn res<B: Backend>(&mut self, key: &str, r: &ResBlock<B>) {
        self.group_norm(&format!("{key}.norm1"), &r.norm1);
        self.conv(&format!("{key}.conv1"), &r.conv1);
        self.linear(&format!("{key}.time_emb_proj"), &r.emb_proj);
        self.group_norm(&format!("{key}.norm2"), &r.norm2);
        self.zero_conv(&format!("{key}.conv2"), &r.conv2);
        if let Some(s) = &r.skip {
            self.conv(&format!("{key}.conv_shortcut"), s);
        }
    }

    fn attn<B: Backend>(&mut self, key: &str, a: &AttentionBlock<B>) {
        self.group_norm(&format!("{key}.group_norm"), &a.norm);
        self.linear(&format!("{key}.to_q"), &a.to_q);
        self.linear(&format!("{key}.to_k"), &a.to_k);
        self.linear(&format!("{key}.to_v"), &a.to_v);
        if let Some(l) = &a.add_k {
            self.linear(&format!("{key}.add_k_proj"), l);
        }
        if let Some(l) = &a.add_v {
            self.linear(&format!("{key}.add_v_proj"), l);
        }
        self.zero_linear(&format!("{key}.to_out.0"), &a.to_out);
    }

    fn level<B: Backend>(&mut self, key: &str, lv: &Level<B>, resample: &str) {
        for (j, r) in lv.resnets.iter().enumerate() {
            self.res(&format!("{key}.resnets.{j}"), r);
        }
        for (j, a) in lv.attentions.iter().enumerate() {
            self.attn(&format!("{key}.attentions.{j}"), a);
        }
        if let Some(r) = &lv.resample {
            self.res(&format!("{key}.{resample}.0"), r);
        }
    }
}

// ------------------------------------------------------------------ config fields

fn field<'a>(cfg: &'a Value, key: &str) -> Option<&'a Value> {
    cfg.get(key).filter(|v| !v.is_null())
}

fn usize_field(cfg: &Value, key: &str, default: Option<usize>) -> Result<usize, String> {
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

fn class_name(cfg: &Value) -> Result<String, String> {
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

fn condition_config(cfg: &Value) -> Result<UNetConfig, String> {
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

fn plain_config(cfg: &Value) -> Result<UNetConfig, String> {
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

fn export_config(c: &UNetConfig) -> Result<Value, String> {
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

// ------------------------------------------------------------------ public API

/// Reads a diffusers `UNet2DConditionModel` (unCLIP decoder, Karlo block types) or
/// `UNet2DModel` (super-resolution, ResNet blocks only, `add_attention = false`) from its
/// `config.json` (parsed) and state dict (PyTorch layouts, any float dtype). Returns the
/// network and the [`UNetConfig`] it was built from.
pub fn unet_from_diffusers<B: Backend>(
    config: &Value,
    tensors: &Tensors,
    device: &B::Device,
) -> Result<(UNet<B>, UNetConfig), String> {
    let cfg = match class_name(config)?.as_str() {
        "UNet2DConditionModel" => condition_config(config)?,
        "UNet2DModel" => plain_config(config)?,
        other => {
            return Err(format!(
                "config: _class_name {other} is not a supported UNet"
            ))
        }
    };
    let mut unet = cfg.init::<B>(device);
    let mut r = Reader::<B>::new(tensors, device);
    unet.conv_in = r.conv("conv_in", unet.conv_in);
    unet.time_embed = r.time("time_embedding", unet.time_embed);
    unet.down = std::mem::take(&mut unet.down)
        .into_iter()
        .enumerate()
        .map(|(i, lv)| r.level(&format!("down_blocks.{i}"), lv, "downsamplers"))
        .collect();
    unet.mid.res1 = r.res("mid_block.resnets.0", unet.mid.res1);
    unet.mid.attention = unet
        .mid
        .attention
        .map(|a| r.attn("mid_block.attentions.0", a));
    unet.mid.res2 = r.res("mid_block.resnets.1", unet.mid.res2);
    unet.up = std::mem::take(&mut unet.up)
        .into_iter()
        .enumerate()
        .map(|(i, lv)| r.level(&format!("up_blocks.{i}"), lv, "upsamplers"))
        .collect();
    unet.norm_out = r.group_norm("conv_norm_out", unet.norm_out);
    unet.conv_out = r.zero_conv("conv_out", unet.conv_out);
    r.finish()?;
    Ok((unet, cfg))
}

/// Writes `unet` (built from `config`) in diffusers' layout: the complete `config.json`
/// diffusers writes for that class and the state dict (f32, PyTorch layouts).
pub fn unet_to_diffusers<B: Backend>(
    unet: &UNet<B>,
    config: &UNetConfig,
) -> Result<(Value, Tensors), String> {
    let cfg = export_config(config)?;
    if unet.down.len() != config.channel_mult.len() {
        return Err("the network does not match its config".into());
    }
    let mut w = Writer {
        out: Tensors::new(),
    };
    w.conv("conv_in", &unet.conv_in);
    w.linear("time_embedding.linear_1", &unet.time_embed.linear_1);
    w.linear("time_embedding.linear_2", &unet.time_embed.linear_2);
    for (i, lv) in unet.down.iter().enumerate() {
        w.level(&format!("down_blocks.{i}"), lv, "downsamplers");
    }
    w.res("mid_block.resnets.0", &unet.mid.res1);
    if let Some(a) = &unet.mid.attention {
        w.attn("mid_block.attentions.0", a);
    }
    w.res("mid_block.resnets.1", &unet.mid.res2);
    for (i, lv) in unet.up.iter().enumerate() {
        w.level(&format!("up_blocks.{i}"), lv, "upsamplers");
    }
    w.group_norm("conv_norm_out", &unet.norm_out);
    w.zero_conv("conv_out", &unet.conv_out);
    Ok((cfg, w.out))
}

/// Reads a diffusers `UnCLIPTextProjModel` (config fields `clip_extra_context_tokens`,
/// `clip_embeddings_dim`, `time_embed_dim`, `cross_attention_dim`; its text width equals
/// `clip_embeddings_dim`).
pub fn text_proj_from_diffusers<B: Backend>(
    config: &Value,
    tensors: &Tensors,
    device: &B::Device,
) -> Result<(ClipConditioning<B>, ClipCondConfig), String> {
    let class = class_name(config)?;
    if class != "UnCLIPTextProjModel" {
        return Err(format!(
            "config: _class_name {class} is not UnCLIPTextProjModel"
        ));
    }
    let clip_dim = usize_field(config, "clip_embeddings_dim", Some(768))?;
    let cfg = ClipCondConfig {
        clip_dim,
        text_width: clip_dim,
        time_embed_dim: usize_field(config, "time_embed_dim", None)?,
        context_dim: usize_field(config, "cross_attention_dim", None)?,
        extra_tokens: usize_field(config, "clip_extra_context_tokens", Some(4))?,
    };
    if [
        cfg.clip_dim,
        cfg.time_embed_dim,
        cfg.context_dim,
        cfg.extra_tokens,
    ]
    .contains(&0)
    {
        return Err("config: UnCLIPTextProjModel sizes must be positive".into());
    }
    let mut m = cfg.init::<B>(device);
    let mut r = Reader::<B>::new(tensors, device);
    m.null_image_embed = r.param(
        "learned_classifier_free_guidance_embeddings",
        m.null_image_embed,
    );
    m.embedding_proj = r.linear("embedding_proj", m.embedding_proj);
    m.image_to_time = r.linear(
        "clip_image_embeddings_project_to_time_embeddings",
        m.image_to_time,
    );
    m.extra_tokens_proj = r.linear("clip_extra_context_tokens_proj", m.extra_tokens_proj);
    m.text_proj = r.linear("encoder_hidden_states_proj", m.text_proj);
    m.text_norm = r.layer_norm("text_encoder_hidden_states_norm", m.text_norm);
    r.finish()?;
    Ok((m, cfg))
}

/// Writes a [`ClipConditioning`] as a diffusers `UnCLIPTextProjModel` (config + state dict).
/// diffusers projects text encodings of width `clip_embeddings_dim`, so `text_width` must
/// equal `clip_dim`.
pub fn text_proj_to_diffusers<B: Backend>(
    m: &ClipConditioning<B>,
    config: &ClipCondConfig,
) -> Result<(Value, Tensors), String> {
    if config.text_width != config.clip_dim {
        return Err(format!(
            "UnCLIPTextProjModel needs text_width = clip_dim (got {} and {})",
            config.text_width, config.clip_dim
        ));
    }
    let cfg = json!({
        "_class_name": "UnCLIPTextProjModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "clip_embeddings_dim": config.clip_dim,
        "clip_extra_context_tokens": config.extra_tokens,
        "cross_attention_dim": config.context_dim,
        "time_embed_dim": config.time_embed_dim,
    });
    let mut w = Writer {
        out: Tensors::new(),
    };
    w.put(
        "learned_classifier_free_guidance_embeddings".into(),
        m.null_image_embed.val(),
    );
    w.linear("embedding_proj", &m.embedding_proj);
    w.linear(
        "clip_image_embeddings_project_to_time_embeddings",
        &m.image_to_time,
    );
    w.linear("clip_extra_context_tokens_proj", &m.extra_tokens_proj);
    w.linear("encoder_hidden_states_proj", &m.text_proj);
    w.layer_norm("text_encoder_hidden_states_norm", &m.text_norm);
    Ok((cfg, w.out))
}
