//! The ADM / GLIDE UNet of unCLIP, one implementation for both image stages:
//!
//! * the **decoder** (64 px, CLIP-conditioned): attention at the lower levels with the
//!   [`ClipConditioning`] context as extra keys/values, the CLIP additive embedding
//!   (`class_embed`), learned variance (6 output channels) — diffusers' `UNet2DConditionModel`
//!   in Karlo's block types (`ResnetDownsampleBlock2D`, `SimpleCrossAttn{Down,Up}Block2D`,
//!   `UNetMidBlock2DSimpleCrossAttn`, `ResnetUpsampleBlock2D`) + `UnCLIPTextProjModel`;
//! * the **super-resolution upsamplers**: no attention and no context, 6 input channels
//!   (x_t and the upsampled low-res image) — diffusers' `UNet2DModel` with
//!   `ResnetDownsampleBlock2D` / `ResnetUpsampleBlock2D`, `add_attention = false`.
//!
//! Layout (diffusers' channel bookkeeping): `conv_in` → per level `num_res_blocks` ResBlocks
//! (each followed by an attention block at attention levels) and, except at the last level, a
//! downsampling ResBlock; every output is kept as a skip → middle Res–[Attn]–Res → per level,
//! in reverse, `num_res_blocks + 1` ResBlocks on `cat(h, skip)` (+ attention) and, except at
//! level 0, an upsampling ResBlock → GroupNorm → SiLU → zero-initialised `conv_out`.
//! Timestep: sinusoid(model_channels) in ADM's [cos, sin] order → Linear → SiLU → Linear.
//!
//! Zero-initialised at construction (ADM): each ResBlock's last conv, each attention
//! out-projection and the output conv; they are their own types ([`ZeroConv2d`],
//! [`ZeroLinear`]) so [`crate::keyed_init`] keeps them zero. The only dropout is
//! [`KeyedDropout`](crate::KeyedDropout) inside the ResBlocks, active only with a
//! [`NoiseKey`].

mod attention;
mod blocks;
mod clip;
mod diffusers;
mod norm;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::GroupNorm;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use crate::dropout::NoiseKey;
use crate::timestep::{TimestepMlp, TimestepMlpConfig};

pub use attention::AttentionBlock;
pub use blocks::{ResBlock, Resample, ZeroConv2d, ZeroLinear};
pub use clip::{ClipCondConfig, ClipConditioning};
pub use diffusers::{
    text_proj_from_diffusers, text_proj_to_diffusers, unet_from_diffusers, unet_to_diffusers,
};

use attention::attention_block;
use blocks::{conv3x3, group_norm, ResBlockSpec};

fn default_true() -> bool {
    true
}

/// Architecture of a [`UNet`]. Level `i` has `model_channels · channel_mult[i]` channels and
/// works at `1/2^i` of the input resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub model_channels: usize,
    pub channel_mult: Vec<usize>,
    /// ResBlocks per level on the way down (`num_res_blocks + 1` on the way up).
    pub num_res_blocks: usize,
    /// Per level: attention blocks after each ResBlock.
    pub attention_levels: Vec<bool>,
    /// Channels per attention head (64 in ADM / Karlo).
    pub head_channels: usize,
    /// ResBlock dropout probability (applied only when a [`NoiseKey`] is given).
    pub dropout: f64,
    /// GroupNorm groups (32 in ADM).
    pub groups: usize,
    /// Width of the context tokens (diffusers `cross_attention_dim`); `None`: no context, the
    /// attention blocks (if any) attend to spatial tokens only.
    pub context_dim: Option<usize>,
    /// Whether `forward` takes an additive embedding of `time_embed_dim` (the CLIP embedding
    /// of the decoder; diffusers `class_embed_type = "identity"`).
    pub class_embed: bool,
    /// Attention block between the two middle ResBlocks.
    pub mid_attention: bool,
    /// ADM `use_scale_shift_norm`: `GN(h)·(1+scale)+shift` (diffusers "scale_shift"); false:
    /// `GN(h + emb)` (diffusers "default", used by Karlo's super-resolution model).
    #[serde(default = "default_true")]
    pub scale_shift: bool,
    /// Nominal training resolution, metadata only (diffusers `sample_size`).
    #[serde(default)]
    pub sample_size: Option<usize>,
}

impl UNetConfig {
    /// `4 · model_channels`: width of the timestep (and additive CLIP) embedding.
    pub fn time_embed_dim(&self) -> usize {
        4 * self.model_channels
    }

    /// Channels of each level.
    pub fn level_channels(&self) -> Vec<usize> {
        self.channel_mult
            .iter()
            .map(|m| m * self.model_channels)
            .collect()
    }

    /// Checks that the sizes fit together (what [`UNetConfig::init`] would otherwise panic on).
    pub fn validate(&self) -> Result<(), String> {
        let ch = self.level_channels();
        if ch.is_empty() {
            return Err("channel_mult is empty".into());
        }
        if self.attention_levels.len() != ch.len() {
            return Err(format!(
                "attention_levels has {} entries for {} levels",
                self.attention_levels.len(),
                ch.len()
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || ch.contains(&0) {
            return Err("channel counts must be positive".into());
        }
        if self.num_res_blocks == 0 {
            return Err("num_res_blocks must be at least 1".into());
        }
        if self.groups == 0 || ch.iter().any(|c| c % self.groups != 0) {
            return Err(format!(
                "level channels {ch:?} are not all divisible by groups = {}",
                self.groups
            ));
        }
        let attn_any = self.mid_attention || self.attention_levels.iter().any(|&a| a);
        if attn_any {
            let attn_ch = ch
                .iter()
                .zip(&self.attention_levels)
                .filter(|(_, &a)| a)
                .map(|(c, _)| *c)
                .chain(self.mid_attention.then(|| *ch.last().unwrap()));
            for c in attn_ch {
                if self.head_channels == 0 || c % self.head_channels != 0 {
                    return Err(format!(
                        "{c} channels are not divisible by head_channels = {}",
                        self.head_channels
                    ));
                }
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// Builds the network (random weights from burn's initialisers; redraw them with
    /// [`crate::keyed_init`]).
    ///
    /// # Panics
    /// When [`UNetConfig::validate`] fails.
    pub fn init<B: Backend>(&self, device: &B::Device) -> UNet<B> {
        if let Err(e) = self.validate() {
            panic!("invalid UNetConfig: {e}");
        }
        let ch = self.level_channels();
        let levels = ch.len();
        let emb_dim = self.time_embed_dim();
        let res = |cin: usize, cout: usize, resample: Resample| {
            ResBlockSpec {
                cin,
                cout,
                emb_dim,
                groups: self.groups,
                dropout: self.dropout,
                scale_shift: self.scale_shift,
                resample,
            }
            .init::<B>(device)
        };
        let attn = |c: usize| {
            attention_block::<B>(c, self.head_channels, self.groups, self.context_dim, device)
        };
        let mut down = Vec::with_capacity(levels);
        let mut prev = ch[0];
        for (l, &c) in ch.iter().enumerate() {
            let resnets: Vec<_> = (0..self.num_res_blocks)
                .map(|j| res(if j == 0 { prev } else { c }, c, Resample::None))
                .collect();
            let attentions = if self.attention_levels[l] {
                (0..self.num_res_blocks).map(|_| attn(c)).collect()
            } else {
                Vec::new()
            };
            let resample = (l + 1 < levels).then(|| res(c, c, Resample::Down));
            down.push(Level {
                resnets,
                attentions,
                resample,
            });
            prev = c;
        }
        let top = ch[levels - 1];
        let mid = Mid {
            res1: res(top, top, Resample::None),
            attention: self.mid_attention.then(|| attn(top)),
            res2: res(top, top, Resample::None),
        };
        let mut up = Vec::with_capacity(levels);
        let mut prev = top;
        for l in (0..levels).rev() {
            let c = ch[l];
            let skip_last = ch[l.saturating_sub(1)];
            let resnets: Vec<_> = (0..=self.num_res_blocks)
                .map(|j| {
                    let cin = if j == 0 { prev } else { c };
                    let skip = if j == self.num_res_blocks {
                        skip_last
                    } else {
                        c
                    };
                    res(cin + skip, c, Resample::None)
                })
                .collect();
            let attentions = if self.attention_levels[l] {
                (0..=self.num_res_blocks).map(|_| attn(c)).collect()
            } else {
                Vec::new()
            };
            let resample = (l > 0).then(|| res(c, c, Resample::Up));
            up.push(Level {
                resnets,
                attentions,
                resample,
            });
            prev = c;
        }
        UNet {
            conv_in: conv3x3(self.in_channels, ch[0], device),
            time_embed: TimestepMlpConfig::new(self.model_channels).init(device),
            down,
            mid,
            up,
            norm_out: group_norm(self.groups, ch[0], device),
            conv_out: ZeroConv2d::new(ch[0], self.out_channels, device),
            class_embed: self.class_embed,
            has_context: self.context_dim.is_some(),
        }
    }
}

/// One resolution level: ResBlocks, their attention blocks (empty when the level has none)
/// and the resampling ResBlock (down: after the level; up: after the level, towards level−1).
#[derive(Module, Debug)]
pub struct Level<B: Backend> {
    pub resnets: Vec<ResBlock<B>>,
    pub attentions: Vec<AttentionBlock<B>>,
    pub resample: Option<ResBlock<B>>,
}

#[derive(Module, Debug)]
pub struct Mid<B: Backend> {
    pub res1: ResBlock<B>,
    pub attention: Option<AttentionBlock<B>>,
    pub res2: ResBlock<B>,
}

/// The ADM UNet (see the module docs); build it with [`UNetConfig::init`] or
/// [`unet_from_diffusers`].
#[derive(Module, Debug)]
pub struct UNet<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub time_embed: TimestepMlp<B>,
    /// Down path, level 0 first.
    pub down: Vec<Level<B>>,
    pub mid: Mid<B>,
    /// Up path, deepest level first (diffusers' `up_blocks` order).
    pub up: Vec<Level<B>>,
    pub norm_out: GroupNorm<B>,
    pub conv_out: ZeroConv2d<B>,
    pub class_embed: bool,
    pub has_context: bool,
}

impl<B: Backend> UNet<B> {
    /// `x [N, in, H, W]` (H, W divisible by `2^(levels−1)`), `t` the (un-respaced) timestep of
    /// each row, `emb_add [N, time_embed_dim]` added to the timestep embedding (used only when
    /// the config has `class_embed`), `context [N, L, context_dim]` with `context_mask [N, L]`
    /// (true = attend; the image tokens of [`ClipConditioning`] are always true), `key` for
    /// dropout (None = evaluation). Returns `[N, out, H, W]`.
    ///
    /// # Panics
    /// When `t` has a length other than N or the shapes do not fit the config.
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        t: &[f64],
        emb_add: Option<Tensor<B, 2>>,
        context: Option<Tensor<B, 3>>,
        context_mask: Option<Tensor<B, 2, Bool>>,
        key: Option<&NoiseKey>,
    ) -> Tensor<B, 4> {
        let device = x.device();
        assert_eq!(t.len(), x.dims()[0], "one timestep per batch row");
        let mut emb = self.time_embed.forward(t, &device);
        if let (true, Some(e)) = (self.class_embed, emb_add) {
            emb = emb + e;
        }
        let context = if self.has_context { context } else { None };
        let ctx = context.as_ref();
        let mask = context_mask.as_ref();
        let mut h = unclip_kernels::conv3x3(
            x,
            self.conv_in.weight.val(),
            self.conv_in.bias.as_ref().map(|b| b.val()),
        );
        let mut skips = vec![h.clone()];
        for (l, level) in self.down.iter().enumerate() {
            for (j, res) in level.resnets.iter().enumerate() {
                h = res.forward(h, emb.clone(), key, &format!("unet.down.{l}.{j}"));
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(h, ctx, mask);
                }
                skips.push(h.clone());
            }
            if let Some(rs) = &level.resample {
                h = rs.forward(h, emb.clone(), key, &format!("unet.down.{l}.resample"));
                skips.push(h.clone());
            }
        }
        h = self.mid.res1.forward(h, emb.clone(), key, "unet.mid.0");
        if let Some(attn) = &self.mid.attention {
            h = attn.forward(h, ctx, mask);
        }
        h = self.mid.res2.forward(h, emb.clone(), key, "unet.mid.1");
        for (i, level) in self.up.iter().enumerate() {
            for (j, res) in level.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up ResBlock");
                h = Tensor::cat(vec![h, skip], 1);
                h = res.forward(h, emb.clone(), key, &format!("unet.up.{i}.{j}"));
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(h, ctx, mask);
                }
            }
            if let Some(rs) = &level.resample {
                h = rs.forward(h, emb.clone(), key, &format!("unet.up.{i}.resample"));
            }
        }
        self.conv_out.forward(norm::group_norm_forward(
            &self.norm_out,
            h,
            None,
            true,
            None,
        ))
    }
}

#[cfg(test)]
mod tests;
