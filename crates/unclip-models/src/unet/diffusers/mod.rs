//! diffusers layouts of the UNet and of the CLIP conditioning: `UNet2DConditionModel` (the
//! unCLIP decoder), `UNet2DModel` (the super-resolution stages) and `UnCLIPTextProjModel`,
//! with their `config.json` (diffusers' field names) and state-dict keys / PyTorch shapes.
//!
//! Import checks every config field that changes the computation (refusing values this
//! implementation does not have), requires every expected tensor with its exact shape and
//! refuses unknown tensors. Export writes the complete config diffusers itself writes (all
//! `register_to_config` fields, defaults included) and the full state dict.

use burn::tensor::backend::Backend;
use serde_json::{json, Value};
use unclip_layout::{Tensors, TorchReader, TorchWriter};

use super::blocks::{ResBlock, ZeroConv2d, ZeroLinear};
use super::{AttentionBlock, ClipCondConfig, ClipConditioning, Level, UNet, UNetConfig};
use crate::timestep::TimestepMlp;
use crate::DIFFUSERS_VERSION;

mod config;

use config::{class_name, condition_config, export_config, plain_config, usize_field};

const DOWN_PLAIN: &str = "ResnetDownsampleBlock2D";
const DOWN_ATTN: &str = "SimpleCrossAttnDownBlock2D";
const UP_PLAIN: &str = "ResnetUpsampleBlock2D";
const UP_ATTN: &str = "SimpleCrossAttnUpBlock2D";
const MID_ATTN: &str = "UNetMidBlock2DSimpleCrossAttn";
const MID_PLAIN: &str = "UNetMidBlock2D";

// ------------------------------------------------------------------ reading tensors

/// The UNet's blocks read through the shared PyTorch layout reader.
trait ReadBlocks<B: Backend> {
    fn zero_linear(&mut self, key: &str, l: ZeroLinear<B>) -> ZeroLinear<B>;
    fn zero_conv(&mut self, key: &str, c: ZeroConv2d<B>) -> ZeroConv2d<B>;
    fn res(&mut self, key: &str, r: ResBlock<B>) -> ResBlock<B>;
    fn attn(&mut self, key: &str, a: AttentionBlock<B>) -> AttentionBlock<B>;
    fn level(&mut self, key: &str, lv: Level<B>, resample: &str) -> Level<B>;
    fn time(&mut self, key: &str, t: TimestepMlp<B>) -> TimestepMlp<B>;
}

impl<B: Backend> ReadBlocks<B> for TorchReader<'_, B> {
    fn zero_linear(&mut self, key: &str, mut l: ZeroLinear<B>) -> ZeroLinear<B> {
        l.weight = self.linear_weight(&format!("{key}.weight"), l.weight);
        l.bias = self.param(&format!("{key}.bias"), l.bias);
        l
    }

    fn zero_conv(&mut self, key: &str, mut c: ZeroConv2d<B>) -> ZeroConv2d<B> {
        c.weight = self.param(&format!("{key}.weight"), c.weight);
        c.bias = self.param(&format!("{key}.bias"), c.bias);
        c
    }

    fn res(&mut self, key: &str, mut r: ResBlock<B>) -> ResBlock<B> {
        r.norm1 = self.group_norm(&format!("{key}.norm1"), r.norm1);
        r.conv1 = self.conv2d(&format!("{key}.conv1"), r.conv1);
        r.emb_proj = self.linear(&format!("{key}.time_emb_proj"), r.emb_proj);
        r.norm2 = self.group_norm(&format!("{key}.norm2"), r.norm2);
        r.conv2 = self.zero_conv(&format!("{key}.conv2"), r.conv2);
        r.skip = r
            .skip
            .map(|s| self.conv2d(&format!("{key}.conv_shortcut"), s));
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
}

// ------------------------------------------------------------------ writing tensors

/// The UNet's blocks written through the shared PyTorch layout writer.
trait WriteBlocks {
    fn zero_linear<B: Backend>(&mut self, key: &str, l: &ZeroLinear<B>);
    fn zero_conv<B: Backend>(&mut self, key: &str, c: &ZeroConv2d<B>);
    fn res<B: Backend>(&mut self, key: &str, r: &ResBlock<B>);
    fn attn<B: Backend>(&mut self, key: &str, a: &AttentionBlock<B>);
    fn level<B: Backend>(&mut self, key: &str, lv: &Level<B>, resample: &str);
}

impl WriteBlocks for TorchWriter {
    fn zero_linear<B: Backend>(&mut self, key: &str, l: &ZeroLinear<B>) {
        self.linear_weight(&format!("{key}.weight"), &l.weight);
        self.tensor(&format!("{key}.bias"), l.bias.val());
    }

    fn zero_conv<B: Backend>(&mut self, key: &str, c: &ZeroConv2d<B>) {
        self.tensor(&format!("{key}.weight"), c.weight.val());
        self.tensor(&format!("{key}.bias"), c.bias.val());
    }

    fn res<B: Backend>(&mut self, key: &str, r: &ResBlock<B>) {
        self.group_norm(&format!("{key}.norm1"), &r.norm1);
        self.conv2d(&format!("{key}.conv1"), &r.conv1);
        self.linear(&format!("{key}.time_emb_proj"), &r.emb_proj);
        self.group_norm(&format!("{key}.norm2"), &r.norm2);
        self.zero_conv(&format!("{key}.conv2"), &r.conv2);
        if let Some(s) = &r.skip {
            self.conv2d(&format!("{key}.conv_shortcut"), s);
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
    let mut r = TorchReader::<B>::new(tensors, device);
    unet.conv_in = r.conv2d("conv_in", unet.conv_in);
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
    let mut w = TorchWriter::new();
    w.conv2d("conv_in", &unet.conv_in);
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
    Ok((cfg, w.into_tensors()))
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
    let mut r = TorchReader::<B>::new(tensors, device);
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
    let mut w = TorchWriter::new();
    w.tensor(
        "learned_classifier_free_guidance_embeddings",
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
    Ok((cfg, w.into_tensors()))
}
