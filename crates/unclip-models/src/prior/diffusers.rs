//! The diffusers layout of the prior: `PriorTransformer`'s `config.json` fields and state-dict
//! keys / PyTorch shapes, both ways, through the shared PyTorch layout reader and writer.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use serde_json::{json, Value};
use unclip_layout::{Tensors, TorchReader, TorchWriter};

use super::{
    PriorAttention, PriorBlock, PriorConfig, PriorFeedForward, PriorTimeEmbedding,
    PriorTransformer, TRAILING_TOKENS,
};
use crate::{KeyedDropout, DIFFUSERS_VERSION};

/// The diffusers `config.json` fields we know, with diffusers' defaults.
const DIFFUSERS_FIELDS: &[&str] = &[
    "num_attention_heads",
    "attention_head_dim",
    "num_layers",
    "embedding_dim",
    "num_embeddings",
    "additional_embeddings",
    "dropout",
    "time_embed_act_fn",
    "norm_in_type",
    "embedding_proj_norm_type",
    "encoder_hid_proj_type",
    "added_emb_type",
    "time_embed_dim",
    "embedding_proj_dim",
    "clip_embed_dim",
];

/// diffusers' `PriorTransformer` `config.json` and tensors (diffusers keys, PyTorch layouts:
/// Linear weights `[out, in]`, `positional_embedding` `[1, L+4, width]`, `prd_embedding`
/// `[1, 1, width]`, `clip_mean`/`clip_std` `[1, D]`; f32). Write the tensors with safetensors
/// as `diffusion_pytorch_model.safetensors` next to the config.
///
/// Errors when diffusers cannot represent the model: its `encoder_hidden_states_proj` reads
/// `embedding_dim` channels, so `text_width` must equal `embed_dim`.
pub fn prior_to_diffusers<B: Backend>(m: &PriorTransformer<B>) -> Result<(Value, Tensors), String> {
    let c = &m.config;
    if c.ff_width() != 4 * c.width {
        return Err(format!(
            "diffusers' PriorTransformer has MLPs of 4 x width; this prior has ff_mult {}",
            c.ff_width() / c.width
        ));
    }
    if c.text_width != c.embed_dim {
        return Err(format!(
            "diffusers' PriorTransformer cannot hold text_width {} != embed_dim {}: its \
             encoder_hidden_states_proj takes embedding_dim inputs",
            c.text_width, c.embed_dim
        ));
    }
    let config = json!({
        "_class_name": "PriorTransformer",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_attention_heads": c.heads,
        "attention_head_dim": c.width / c.heads,
        "num_layers": c.depth,
        "embedding_dim": c.embed_dim,
        "num_embeddings": c.text_len,
        "additional_embeddings": TRAILING_TOKENS,
        "dropout": c.dropout,
        "time_embed_act_fn": "silu",
        "norm_in_type": null,
        "embedding_proj_norm_type": null,
        "encoder_hid_proj_type": "linear",
        "added_emb_type": "prd",
        // diffusers' save_pretrained writes the constructor argument as given: null when it was
        // left to default to the inner width.
        "time_embed_dim": c.time_embed_dim,
        "embedding_proj_dim": null,
        "clip_embed_dim": null,
    });
    let mut out = TorchWriter::new();
    let (w, d, l) = (c.width, c.embed_dim, c.text_len);
    out.linear("time_embedding.linear_1", &m.time_embedding.linear_1);
    out.linear("time_embedding.linear_2", &m.time_embedding.linear_2);
    out.linear("proj_in", &m.proj_in);
    out.linear("embedding_proj", &m.embedding_proj);
    out.linear("encoder_hidden_states_proj", &m.encoder_hidden_states_proj);
    out.reshaped(
        "positional_embedding",
        m.positional_embedding.val(),
        &[1, l + TRAILING_TOKENS, w],
    );
    out.reshaped("prd_embedding", m.prd_embedding.val(), &[1, 1, w]);
    for (i, b) in m.transformer_blocks.iter().enumerate() {
        let p = format!("transformer_blocks.{i}");
        out.layer_norm(&format!("{p}.norm1"), &b.norm1);
        out.linear(&format!("{p}.attn1.to_q"), &b.attn1.to_q);
        out.linear(&format!("{p}.attn1.to_k"), &b.attn1.to_k);
        out.linear(&format!("{p}.attn1.to_v"), &b.attn1.to_v);
        out.linear(&format!("{p}.attn1.to_out.0"), &b.attn1.to_out);
        out.layer_norm(&format!("{p}.norm3"), &b.norm3);
        out.linear(&format!("{p}.ff.net.0.proj"), &b.ff.proj);
        out.linear(&format!("{p}.ff.net.2"), &b.ff.out);
    }
    out.layer_norm("norm_out", &m.norm_out);
    out.linear("proj_to_clip_embeddings", &m.proj_to_clip_embeddings);
    out.reshaped("clip_mean", m.clip_mean.val(), &[1, d]);
    out.reshaped("clip_std", m.clip_std.val(), &[1, d]);
    Ok((config, out.into_tensors()))
}

/// Reads a diffusers `PriorTransformer` (`config.json` value and its tensors by key, any float
/// dtype) into our model. Fields missing from the config take diffusers' defaults (older
/// configs such as Karlo's omit the newer ones).
///
/// Supported: `time_embed_act_fn` "silu", `norm_in_type` null, `embedding_proj_norm_type`
/// null, `encoder_hid_proj_type` "linear", `added_emb_type` "prd", `additional_embeddings` 4,
/// any `time_embed_dim` (null → `None`, i.e. the inner width; an integer is kept as given, so
/// the export writes the same value back; 0 means the inner width, as in diffusers),
/// `embedding_proj_dim` / `clip_embed_dim` null or `embedding_dim` — the Karlo configuration
/// plus the timestep-MLP width. Anything else, an unknown config field, a missing
/// or unexpected tensor, or a wrong shape is an error naming the culprits. The non-persistent
/// `causal_attention_mask` buffer is ignored if a checkpoint carries it.
pub fn prior_from_diffusers<B: Backend>(
    config: &Value,
    tensors: &Tensors,
    device: &B::Device,
) -> Result<PriorTransformer<B>, String> {
    let c = config_from_diffusers(config)?;
    let mut ld = TorchReader::<B>::new(tensors, device);
    let (w, d, l, tw) = (c.width, c.embed_dim, c.text_len, c.text_width);
    let te = c.time_width();
    let time_embedding = PriorTimeEmbedding {
        linear_1: ld.new_linear("time_embedding.linear_1", w, te),
        linear_2: ld.new_linear("time_embedding.linear_2", te, w),
    };
    let proj_in = ld.new_linear("proj_in", d, w);
    let embedding_proj = ld.new_linear("embedding_proj", d, w);
    let encoder_hidden_states_proj = ld.new_linear("encoder_hidden_states_proj", tw, w);
    let positional_embedding = Param::from_tensor(ld.tensor::<2>(
        "positional_embedding",
        &[1, l + TRAILING_TOKENS, w],
        [l + TRAILING_TOKENS, w],
    ));
    let prd_embedding = Param::from_tensor(ld.tensor::<1>("prd_embedding", &[1, 1, w], [w]));
    let transformer_blocks = (0..c.depth)
        .map(|i| {
            let p = format!("transformer_blocks.{i}");
            PriorBlock {
                norm1: norm(&mut ld, &format!("{p}.norm1"), w),
                attn1: PriorAttention {
                    to_q: ld.new_linear(&format!("{p}.attn1.to_q"), w, w),
                    to_k: ld.new_linear(&format!("{p}.attn1.to_k"), w, w),
                    to_v: ld.new_linear(&format!("{p}.attn1.to_v"), w, w),
                    to_out: ld.new_linear(&format!("{p}.attn1.to_out.0"), w, w),
                    heads: c.heads,
                },
                norm3: norm(&mut ld, &format!("{p}.norm3"), w),
                ff: PriorFeedForward {
                    proj: ld.new_linear(&format!("{p}.ff.net.0.proj"), w, 4 * w),
                    out: ld.new_linear(&format!("{p}.ff.net.2"), 4 * w, w),
                },
                dropout: KeyedDropout::new(c.dropout),
            }
        })
        .collect();
    let norm_out = norm(&mut ld, "norm_out", w);
    let proj_to_clip_embeddings = ld.new_linear("proj_to_clip_embeddings", w, d);
    let clip_mean =
        Param::from_tensor(ld.tensor::<1>("clip_mean", &[1, d], [d])).set_require_grad(false);
    let clip_std =
        Param::from_tensor(ld.tensor::<1>("clip_std", &[1, d], [d])).set_require_grad(false);

    let unknown: Vec<&str> = ld
        .unused()
        .into_iter()
        .filter(|k| *k != "causal_attention_mask")
        .collect();
    if !unknown.is_empty() {
        ld.error(format!(
            "unexpected tensors (not part of the supported PriorTransformer): {}",
            unknown.join(", ")
        ));
    }
    if !ld.errors().is_empty() {
        return Err(format!(
            "diffusers PriorTransformer: {}",
            ld.errors().join("; ")
        ));
    }
    Ok(PriorTransformer {
        time_embedding,
        proj_in,
        embedding_proj,
        encoder_hidden_states_proj,
        positional_embedding,
        prd_embedding,
        transformer_blocks,
        norm_out,
        proj_to_clip_embeddings,
        clip_mean,
        clip_std,
        config: c,
    })
}

/// Our config from a diffusers `PriorTransformer` config (see [`prior_from_diffusers`]).
pub fn config_from_diffusers(config: &Value) -> Result<PriorConfig, String> {
    let obj = config
        .as_object()
        .ok_or("diffusers prior config: not a JSON object")?;
    if let Some(name) = obj.get("_class_name") {
        if name != "PriorTransformer" {
            return Err(format!(
                "diffusers prior config: _class_name is {name}, expected \"PriorTransformer\""
            ));
        }
    }
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with('_') && !DIFFUSERS_FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "diffusers prior config: unsupported fields {}",
            unknown.join(", ")
        ));
    }
    let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);
    let int = |k: &str, default: usize| -> Result<usize, String> {
        match obj.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| format!("diffusers prior config: {k} = {v} is not an integer")),
        }
    };
    // Optional integer fields: null (or absent) means "the default size".
    let opt_int = |k: &str| -> Result<Option<usize>, String> {
        match get(k) {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| format!("diffusers prior config: {k} = {v} is not an integer")),
        }
    };
    // String options: (field, diffusers default, the only value we support).
    let strings: [(&str, Option<&str>, Option<&str>); 5] = [
        ("time_embed_act_fn", Some("silu"), Some("silu")),
        ("norm_in_type", None, None),
        ("embedding_proj_norm_type", None, None),
        ("encoder_hid_proj_type", Some("linear"), Some("linear")),
        ("added_emb_type", Some("prd"), Some("prd")),
    ];
    for (k, default, supported) in strings {
        let value = match obj.get(k) {
            None => default,
            Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(v) => return Err(format!("diffusers prior config: {k} = {v} is not a string")),
        };
        if value != supported {
            return Err(format!(
                "diffusers prior config: {k} = {value:?} is not supported (only {supported:?})"
            ));
        }
    }
    let heads = int("num_attention_heads", 32)?;
    let head_dim = int("attention_head_dim", 64)?;
    let embed_dim = int("embedding_dim", 768)?;
    let width = heads * head_dim;
    let additional = int("additional_embeddings", 4)?;
    if additional != TRAILING_TOKENS {
        return Err(format!(
            "diffusers prior config: additional_embeddings = {additional} is not supported \
             (only {TRAILING_TOKENS}: pooled text, timestep, x_t, prd)"
        ));
    }
    for (k, want) in [
        ("embedding_proj_dim", embed_dim),
        ("clip_embed_dim", embed_dim),
    ] {
        if let Some(v) = opt_int(k)? {
            if v != want {
                return Err(format!(
                    "diffusers prior config: {k} = {v} is not supported (only null or {want})"
                ));
            }
        }
    }
    let dropout = match obj.get("dropout") {
        None => 0.0,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("diffusers prior config: dropout = {v} is not a number"))?,
    };
    let c = PriorConfig {
        embed_dim,
        width,
        depth: int("num_layers", 20)?,
        heads,
        text_len: int("num_embeddings", 77)?,
        text_width: embed_dim,
        dropout,
        // diffusers: `time_embed_dim or inner_dim`, so 0 is the default too.
        time_embed_dim: opt_int("time_embed_dim")?.filter(|&v| v != 0),
        ff_mult: None,
    };
    c.check()
        .map_err(|e| format!("diffusers prior config: {e}"))?;
    Ok(c)
}

/// A LayerNorm of `dim` (diffusers' default epsilon) from `{prefix}.weight` / `{prefix}.bias`.
fn norm<B: Backend>(ld: &mut TorchReader<'_, B>, prefix: &str, dim: usize) -> LayerNorm<B> {
    let n = LayerNormConfig::new(dim).init(ld.device());
    ld.layer_norm(prefix, n)
}
