//! Rebuilding a stage's network from its native export (`config.json` + `model.safetensors`,
//! see [`crate::export`]) on any backend, for inference: the export's `model:` and
//! `diffusion:` sections rebuild the stage exactly as training validated it, the network is
//! built from it and the exported weights replace every parameter. No run config, shards,
//! stores or autodiff are involved. [`reexport`] writes such an export again in another layout
//! through the stage's own `export` (what `unclip pipeline assemble --layout diffusers` uses).

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use unclip_diffusion::DiffusionConfig;
use unclip_models::{Decoder, PriorTransformer, Upsampler};

use crate::decoder::{DecoderModelConfig, DecoderStage};
use crate::export::{load_safetensors, ExportLayout, ExportMeta, ExportReport, EXPORT_FORMAT};
use crate::prior::{PriorModelConfig, PriorStage};
use crate::text::{ClipDims, TextCond};
use crate::upsampler::{UpsamplerModelConfig, UpsamplerStage};
use crate::{Stage, StageError};

/// A stage rebuilt from an export: the validated stage, the network with the exported
/// weights, and the export's `config.json`.
pub struct Reloaded<S, M> {
    pub stage: S,
    pub model: M,
    pub meta: Value,
}

fn read_json(path: &Path) -> Result<Value, StageError> {
    let text = std::fs::read_to_string(path).map_err(|e| StageError::io("cannot read", path, e))?;
    serde_json::from_str(&text).map_err(|e| StageError::Export {
        path: path.to_path_buf(),
        why: format!("not JSON: {e}"),
    })
}

/// The export's `config.json`, checked to be an unclip export of `stage`.
pub fn read_meta(dir: &Path, stage: Stage) -> Result<Value, StageError> {
    let path = dir.join("config.json");
    let meta = read_json(&path)?;
    if meta["format"] != EXPORT_FORMAT {
        return Err(StageError::Export {
            path,
            why: format!(
                "not an unclip export (no `format: {EXPORT_FORMAT}`); a diffusers-layout export \
                 cannot be loaded here: export with `--layout native`"
            ),
        });
    }
    if meta["stage"] != stage.name() {
        return Err(StageError::Export {
            path: dir.to_path_buf(),
            why: format!(
                "holds a `{}` export, not `{}`",
                meta["stage"].as_str().unwrap_or("?"),
                stage.name()
            ),
        });
    }
    Ok(meta)
}

/// The [`ExportMeta`] recorded in an export's `config.json`.
pub fn export_meta(meta: &Value) -> Result<ExportMeta, StageError> {
    let bad = |k: &str, e: &dyn std::fmt::Display| {
        StageError::Input(format!("the export's config.json: {k}: {e}"))
    };
    Ok(ExportMeta {
        format: EXPORT_FORMAT,
        stage: serde_json::from_value(meta["stage"].clone()).map_err(|e| bad("stage", &e))?,
        model: meta["model"].clone(),
        diffusion: serde_json::from_value(meta["diffusion"].clone())
            .map_err(|e| bad("diffusion", &e))?,
        image_size: meta["image_size"].as_u64().unwrap_or_default(),
        step: meta["step"].as_u64().unwrap_or_default(),
        config_hash: meta["config_hash"].as_str().unwrap_or_default().to_owned(),
        source: meta["source"].as_str().unwrap_or_default().to_owned(),
        weights: if meta["weights"] == "model" {
            "model"
        } else {
            "ema"
        },
        dtype: meta["dtype"]
            .as_str()
            .unwrap_or("f32")
            .parse()
            .map_err(|e: String| bad("dtype", &e))?,
    })
}

/// What an export's `config.json` says about its stage: the `model:` section (after `patch`),
/// the image side and the diffusion.
struct Sections<C> {
    model: C,
    image_size: usize,
    diffusion: DiffusionConfig,
    meta: Value,
}

fn sections<C: DeserializeOwned>(
    dir: &Path,
    stage: Stage,
    patch: impl FnOnce(&mut Value) -> Result<(), StageError>,
) -> Result<Sections<C>, StageError> {
    let meta = read_meta(dir, stage)?;
    let mut model = meta["model"].clone();
    patch(&mut model)?;
    let bad = |what: &str, e: &dyn std::fmt::Display| StageError::Export {
        path: dir.join("config.json"),
        why: format!("the export's {what}: {e}"),
    };
    let model: C = serde_json::from_value(model).map_err(|e| bad("model section", &e))?;
    let diffusion: DiffusionConfig =
        serde_json::from_value(meta["diffusion"].clone()).map_err(|e| bad("diffusion", &e))?;
    let image_size = meta["image_size"]
        .as_u64()
        .filter(|&s| s > 0)
        .ok_or_else(|| bad("image_size", &"missing"))? as usize;
    Ok(Sections {
        model,
        image_size,
        diffusion,
        meta,
    })
}

/// `model` with the weights of `dir/model.safetensors` (every parameter, by name and shape).
fn load_weights<B: Backend, M: Module<B>>(dir: &Path, model: M) -> Result<M, StageError> {
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).map_err(|e| StageError::io("cannot read", &weights, e))?;
    load_safetensors::<B, M>(model, &bytes).map_err(|why| StageError::Export { path: weights, why })
}

/// The CLIP-conditioned stages' `model:` section as inference needs it: the CLIP sizes
/// (recorded by the export; `dims` fills them in for older exports) and encodings from the
/// caller (never a frozen CLIP run per batch).
fn clip_conditioned(model: &mut Value, dims: ClipDims) -> Result<(), StageError> {
    for (k, v) in [
        ("embed_dim", dims.embed_dim),
        ("text_width", dims.text_width),
        ("text_len", dims.text_len),
    ] {
        match model[k].as_u64() {
            None => model[k] = json!(v),
            Some(have) if have as usize != v => {
                return Err(StageError::Input(format!(
                    "the export was trained with CLIP {k} {have}, the given CLIP has {v}: use \
                     the CLIP its embeddings were made with"
                )))
            }
            Some(_) => {}
        }
    }
    if model["text_encodings"] == "on_the_fly" {
        model["text_encodings"] = json!("store");
    }
    model["clip"] = Value::Null;
    Ok(())
}

fn prior_stage(dir: &Path, dims: ClipDims) -> Result<(PriorStage, Value), StageError> {
    let s = sections::<PriorModelConfig>(dir, Stage::Prior, |m| clip_conditioned(m, dims))?;
    let text = TextCond::zeros(dims, s.model.text_encodings);
    let d = dims.embed_dim;
    // The statistics are weights of the export; these only build the network.
    let unit = (vec![0.0; d], vec![1.0; d]);
    let stage = PriorStage::new(&s.model, text, unit, &s.diffusion)?;
    Ok((stage, s.meta))
}

fn decoder_stage(dir: &Path, dims: ClipDims) -> Result<(DecoderStage, Value), StageError> {
    let s = sections::<DecoderModelConfig>(dir, Stage::Decoder, |m| clip_conditioned(m, dims))?;
    let stage = DecoderStage::new(&s.model, dims, s.image_size, &s.diffusion)?;
    Ok((stage, s.meta))
}

fn upsampler_stage(dir: &Path) -> Result<(UpsamplerStage, Value), StageError> {
    let s = sections::<UpsamplerModelConfig>(dir, Stage::Upsampler, |_| Ok(()))?;
    let stage = UpsamplerStage::new(&s.model, s.image_size, &s.diffusion)?;
    Ok((stage, s.meta))
}

/// The prior exported in `dir`, for a CLIP of sizes `dims`.
pub fn prior<B: Backend>(
    dir: &Path,
    dims: ClipDims,
    device: &B::Device,
) -> Result<Reloaded<PriorStage, PriorTransformer<B>>, StageError> {
    let (stage, meta) = prior_stage(dir, dims)?;
    let model = stage
        .net
        .init(device)
        .with_stats(&stage.stats.0, &stage.stats.1);
    let model = load_weights::<B, _>(dir, model)?;
    Ok(Reloaded { stage, model, meta })
}

/// The decoder exported in `dir`, for a CLIP of sizes `dims`.
pub fn decoder<B: Backend>(
    dir: &Path,
    dims: ClipDims,
    device: &B::Device,
) -> Result<Reloaded<DecoderStage, Decoder<B>>, StageError> {
    let (stage, meta) = decoder_stage(dir, dims)?;
    let model = load_weights::<B, _>(dir, stage.init(device))?;
    Ok(Reloaded { stage, model, meta })
}

/// The upsampler exported in `dir`.
pub fn upsampler<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<Reloaded<UpsamplerStage, Upsampler<B>>, StageError> {
    let (stage, meta) = upsampler_stage(dir)?;
    let model = load_weights::<B, _>(dir, stage.init(device))?;
    Ok(Reloaded { stage, model, meta })
}

/// Re-exports the native export in `dir` (a prior, decoder or upsampler; `dims` are the
/// CLIP sizes of the CLIP-conditioned stages) into `out` in another `layout`, through the
/// stage's own `export` — the same code as `unclip export --layout …` of its checkpoint.
pub fn reexport(
    dir: &Path,
    stage: Stage,
    dims: ClipDims,
    out: &Path,
    layout: ExportLayout,
) -> Result<ExportReport, StageError> {
    type B = burn::backend::Flex;
    let device = Default::default();
    std::fs::create_dir_all(out).map_err(|e| StageError::io("cannot create", out, e))?;
    match stage {
        Stage::Prior => {
            let r = prior::<B>(dir, dims, &device)?;
            r.stage
                .export(&r.model, &export_meta(&r.meta)?, out, layout)
        }
        Stage::Decoder => {
            let r = decoder::<B>(dir, dims, &device)?;
            r.stage
                .export(&r.model, &export_meta(&r.meta)?, out, layout)
        }
        Stage::Upsampler => {
            let r = upsampler::<B>(dir, &device)?;
            r.stage
                .export(&r.model, &export_meta(&r.meta)?, out, layout)
        }
        other => Err(StageError::Input(format!(
            "cannot re-export a `{}` export",
            other.name()
        ))),
    }
}
