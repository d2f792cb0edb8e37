//! `unclip pipeline assemble --layout diffusers`: the pipeline also as a folder that diffusers'
//! `UnCLIPPipeline.from_pretrained(DIR, trust_remote_code=True)` loads — `model_index.json`,
//! the stages re-exported through their own diffusers exports (`prior/`, `decoder/` +
//! `text_proj/`, the one upsampler as `super_res_first/` and `super_res_last/`), an
//! `UnCLIPScheduler` config per stage, the CLIP text tower (`text_encoder/`) and its
//! tokenizer (`tokenizer/`).
//!
//! Two components carry a few lines of Python (hence `trust_remote_code`): our stages were
//! trained on L2-normalised CLIP text embeddings, while transformers'
//! `CLIPTextModelWithProjection` returns them unnormalised, so `text_encoder/` is a subclass
//! that normalises `text_embeds`; and diffusers ≥ 0.35 cannot resolve `UnCLIPTextProjModel` by
//! library name any more, so `text_proj/` names the module that holds it.
//!
//! Whatever the pipeline would compute differently from ours is refused with the reason
//! ([`plan`]); what only differs in how the sampler is driven is listed in the folder's
//! `unclip_pipeline.json` (`notes`), with the call arguments that match `pipeline.json`.

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};
use unclip_stages::export::ExportLayout;
use unclip_stages::reload::reexport;
use unclip_stages::text::ClipDims;
use unclip_stages::Stage;

use unclip_models::DIFFUSERS_VERSION;

use super::copy_folder;
use crate::{pipeline_error, InferError};

mod plan;

pub(crate) use plan::plan;
use plan::Plan;

/// `text_encoder/unclip_text_encoder.py`.
const TEXT_ENCODER_PY: &str = r#""""unclip's CLIP text tower for diffusers' UnCLIPPipeline (written by
`unclip pipeline assemble --layout diffusers`).

unclip's prior and decoder were trained on L2-normalised CLIP text embeddings; transformers'
CLIPTextModelWithProjection returns them unnormalised. This subclass normalises `text_embeds`
and changes nothing else (`last_hidden_state` is the per-token encoding both sides use).
"""
from transformers import CLIPTextModelWithProjection


class UnclipCLIPTextModelWithProjection(CLIPTextModelWithProjection):
    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] / out[0].norm(dim=-1, keepdim=True),) + tuple(out[1:])
        out.text_embeds = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        return out
"#;

/// `text_proj/unclip_text_proj.py`.
const TEXT_PROJ_PY: &str = r#""""diffusers' own UnCLIPTextProjModel, importable from this folder (written by
`unclip pipeline assemble --layout diffusers`): diffusers >= 0.35 moved it under
`pipelines.deprecated` and no longer resolves it from a model_index.json entry."""
try:
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
except ImportError:  # diffusers before the unCLIP pipelines were deprecated
    from diffusers.pipelines.unclip.text_proj import UnCLIPTextProjModel

__all__ = ["UnCLIPTextProjModel"]
"#;

/// What `--layout diffusers` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct DiffusersReport {
    pub dir: std::path::PathBuf,
    /// Keyword arguments of `UnCLIPPipeline.__call__` that sample as `pipeline.json` does.
    pub call: Value,
    /// Where the diffusers pipeline samples differently from ours (nothing that changes the
    /// networks' outputs: those cases are refused).
    pub notes: Vec<String>,
}

fn write_json(path: &Path, value: &Value) -> Result<u64, InferError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    write_file(path, text.as_bytes())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<u64, InferError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| pipeline_error(parent, e))?;
    }
    unclip_fs::write_atomic(path, bytes).map_err(|e| pipeline_error(path, e))?;
    Ok(bytes.len() as u64)
}

fn read_json(path: &Path) -> Result<Value, InferError> {
    let text = std::fs::read_to_string(path).map_err(|e| pipeline_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| pipeline_error(path, e))
}

/// `text_encoder/`: the text tower of the HF CLIP folder `clip` (config and weights) as a
/// `CLIPTextModelWithProjection`, plus the normalising subclass.
fn text_encoder(clip: &Path, out: &Path) -> Result<(usize, u64), InferError> {
    let config_path = clip.join("config.json");
    let full = read_json(&config_path)?;
    let mut config = full["text_config"].clone();
    let Some(c) = config.as_object_mut() else {
        return Err(pipeline_error(&config_path, "no text_config"));
    };
    c.insert(
        "architectures".into(),
        json!(["UnclipCLIPTextModelWithProjection"]),
    );
    c.insert("model_type".into(), json!("clip_text_model"));
    if let Some(p) = full.get("projection_dim") {
        c.insert("projection_dim".into(), p.clone());
    }
    c.entry("bos_token_id")
        .or_insert(json!(unclip_clip::START_OF_TEXT));
    c.entry("eos_token_id")
        .or_insert(json!(unclip_clip::END_OF_TEXT));
    let weights_path = clip.join("model.safetensors");
    let bytes = std::fs::read(&weights_path).map_err(|e| pipeline_error(&weights_path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| pipeline_error(&weights_path, e))?;
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| k.starts_with("text_model.") || k.starts_with("text_projection."))
        .collect();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    if !views.iter().any(|(k, _)| k == "text_projection.weight") {
        return Err(pipeline_error(
            &weights_path,
            "no text_projection.weight: not an HF CLIPModel",
        ));
    }
    let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let text = safetensors::serialize(views, Some(metadata))
        .map_err(|e| pipeline_error(&weights_path, e))?;
    let mut written = write_file(&out.join("model.safetensors"), &text)?;
    written += write_json(&out.join("config.json"), &config)?;
    written += write_file(
        &out.join("unclip_text_encoder.py"),
        TEXT_ENCODER_PY.as_bytes(),
    )?;
    Ok((3, written))
}

/// `tokenizer/`: CLIP's tokenizer as transformers' `CLIPTokenizer` loads it — `tokenizer.json`
/// and, for tokenizers without the `tokenizers` backend, `vocab.json` + `merges.txt` taken
/// from it.
fn tokenizer(clip: &Path, text_len: usize, out: &Path) -> Result<(usize, u64), InferError> {
    let path = clip.join("tokenizer.json");
    let text = if path.is_file() {
        std::fs::read_to_string(&path).map_err(|e| pipeline_error(&path, e))?
    } else {
        unclip_clip::BUNDLED_TOKENIZER_JSON.to_owned()
    };
    let tok: Value = serde_json::from_str(&text).map_err(|e| pipeline_error(&path, e))?;
    let model = &tok["model"];
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| pipeline_error(&path, "no BPE merges"))?;
    let mut merges_txt = String::from("#version: 0.2\n");
    for m in merges {
        let line = match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => pair
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            _ => {
                return Err(pipeline_error(
                    &path,
                    "a BPE merge is neither text nor a pair",
                ))
            }
        };
        merges_txt.push_str(&line);
        merges_txt.push('\n');
    }
    if !model["vocab"].is_object() {
        return Err(pipeline_error(&path, "no BPE vocabulary"));
    }
    let special = json!({
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    });
    let mut config = special.clone();
    for (k, v) in [
        ("tokenizer_class", json!("CLIPTokenizer")),
        ("model_max_length", json!(text_len)),
        ("do_lower_case", json!(true)),
        ("errors", json!("replace")),
        ("clean_up_tokenization_spaces", json!(false)),
    ] {
        config[k] = v;
    }
    let mut written = write_file(&out.join("tokenizer.json"), text.as_bytes())?;
    written += write_json(&out.join("vocab.json"), &model["vocab"])?;
    written += write_file(&out.join("merges.txt"), merges_txt.as_bytes())?;
    written += write_json(&out.join("tokenizer_config.json"), &config)?;
    written += write_json(&out.join("special_tokens_map.json"), &special)?;
    Ok((5, written))
}

/// Sets `sample_size` (the side UnCLIPPipeline generates at) in a diffusers UNet config.
fn set_sample_size(dir: &Path, side: usize) -> Result<(), InferError> {
    let path = dir.join("config.json");
    let mut config = read_json(&path)?;
    config["sample_size"] = json!(side);
    write_json(&path, &config).map(|_| ())
}

/// Gives the diffusers UNet in `dir` (ε output, fixed variance) 3 more output channels —
/// `conv_out` rows of zeros with bias −1 — so that UnCLIPPipeline, which splits the decoder's
/// output into ε and a variance value v under guidance, reads v = −1: UnCLIPScheduler's
/// `learned_range` variance is then `exp(log σ²_posterior)`, exactly the `fixed_small`
/// variance, and the ε channels are untouched.
fn widen_conv_out(dir: &Path) -> Result<(), InferError> {
    use safetensors::tensor::{Dtype, TensorView};
    let config_path = dir.join("config.json");
    let mut config = read_json(&config_path)?;
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| pipeline_error(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| pipeline_error(&path, e))?;
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let (dtype, mut shape, mut data) =
            (view.dtype(), view.shape().to_vec(), view.data().to_vec());
        let minus_one: &[u8] = match dtype {
            Dtype::F32 => &[0x00, 0x00, 0x80, 0xBF],
            Dtype::F16 => &[0x00, 0xBC],
            Dtype::BF16 => &[0x80, 0xBF],
            other => return Err(pipeline_error(&path, format!("{name}: dtype {other:?}"))),
        };
        if name == "conv_out.weight" {
            // [3, C, k, k] → [6, C, k, k], the new rows zero.
            data.resize(2 * data.len(), 0);
            shape[0] *= 2;
        } else if name == "conv_out.bias" {
            let n = shape[0];
            for _ in 0..n {
                data.extend_from_slice(minus_one);
            }
            shape[0] *= 2;
        }
        tensors.push((name, dtype, shape, data));
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| pipeline_error(&path, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let widened =
        safetensors::serialize(views, Some(metadata)).map_err(|e| pipeline_error(&path, e))?;
    write_file(&path, &widened)?;
    let out = config["out_channels"].as_u64().unwrap_or(3);
    config["out_channels"] = json!(2 * out);
    write_json(&config_path, &config).map(|_| ())
}

/// Writes the diffusers folder `out` from the native pipeline folder `native` (already
/// written and loaded: its CLIP has sizes `dims`, its images the sides `sides`).
pub(crate) fn write(
    plan: Plan,
    native: &Path,
    dims: ClipDims,
    sides: &[usize],
    out: &Path,
) -> Result<(DiffusersReport, usize, u64), InferError> {
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| pipeline_error(out, e))?;
    }
    let staging = out.join(".staging");
    let (mut files, mut bytes) = (0, 0);
    let mut add = |(f, b): (usize, u64)| {
        files += f;
        bytes += b;
    };
    for (stage, name) in [
        (Stage::Prior, "prior"),
        (Stage::Decoder, "decoder"),
        (Stage::Upsampler, "upsampler-1"),
    ] {
        reexport(
            &native.join(name),
            stage,
            dims,
            &staging.join(name),
            ExportLayout::Diffusers,
        )?;
    }
    let upsampler = staging.join("upsampler-1/unet");
    for (from, to) in [
        (staging.join("prior"), "prior"),
        (staging.join("decoder/unet"), "decoder"),
        (staging.join("decoder/text_proj"), "text_proj"),
        (upsampler.clone(), "super_res_first"),
        (upsampler, "super_res_last"),
    ] {
        add(copy_folder(&from, &out.join(to))?);
    }
    std::fs::remove_dir_all(&staging).map_err(|e| pipeline_error(&staging, e))?;
    set_sample_size(&out.join("decoder"), sides[0])?;
    if plan.widen_decoder {
        widen_conv_out(&out.join("decoder"))?;
    }
    for sr in ["super_res_first", "super_res_last"] {
        set_sample_size(&out.join(sr), sides[1])?;
    }
    add((
        1,
        write_file(
            &out.join("text_proj/unclip_text_proj.py"),
            TEXT_PROJ_PY.as_bytes(),
        )?,
    ));
    add(text_encoder(
        &native.join("clip"),
        &out.join("text_encoder"),
    )?);
    add(tokenizer(
        &native.join("clip"),
        dims.text_len,
        &out.join("tokenizer"),
    )?);
    for (name, config) in &plan.schedulers {
        add((
            1,
            write_json(&out.join(name).join("scheduler_config.json"), config)?,
        ));
    }
    let index = json!({
        "_class_name": "UnCLIPPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "decoder": ["diffusers", "UNet2DConditionModel"],
        "decoder_scheduler": ["diffusers", "UnCLIPScheduler"],
        "prior": ["diffusers", "PriorTransformer"],
        "prior_scheduler": ["diffusers", "UnCLIPScheduler"],
        "super_res_first": ["diffusers", "UNet2DModel"],
        "super_res_last": ["diffusers", "UNet2DModel"],
        "super_res_scheduler": ["diffusers", "UnCLIPScheduler"],
        "text_encoder": ["unclip_text_encoder", "UnclipCLIPTextModelWithProjection"],
        "text_proj": ["unclip_text_proj", "UnCLIPTextProjModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    });
    add((1, write_json(&out.join("model_index.json"), &index)?));
    let report = DiffusersReport {
        dir: out.to_path_buf(),
        call: plan.call,
        notes: plan.notes,
    };
    let info = json!({
        "format": "unclip-diffusers-pipeline-1",
        "trust_remote_code": true,
        "call": report.call,
        "notes": report.notes,
    });
    add((1, write_json(&out.join("unclip_pipeline.json"), &info)?));
    Ok((report, files, bytes))
}
