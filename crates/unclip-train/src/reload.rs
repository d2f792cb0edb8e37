//! Rebuilding a stage's network from its native export (`config.json` + `model.safetensors`,
//! see [`crate::export`]) for inference: the run config is recreated from the export's
//! `model:` and `diffusion:` sections with `data.source: random` (no shards or stores are
//! needed), the task builds the network, and the exported weights replace its parameters.
//! [`reexport`] writes such an export again in another layout through the stage's own
//! `export` (what `unclip pipeline assemble --layout diffusers` uses).

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde_json::{json, Value};

use crate::config::{ModelSection, RunConfig, Stage};
use crate::export::{ExportLayout, ExportMeta, ExportReport};
use crate::launch::TaskFactory;
use crate::tasks::cond::ClipDims;
use crate::tasks::decoder::{DecoderModelConfig, DecoderSpec};
use crate::tasks::prior::{PriorModelConfig, PriorSpec};
use crate::tasks::upsampler::{UpsamplerModelConfig, UpsamplerSpec};
use crate::{TrainError, TrainTask};

/// The inference network of task `T` on backend `B` (its inner, non-autodiff backend).
pub type InferModel<B, T> = <<T as TrainTask<B>>::Model as AutodiffModule<B>>::InnerModule;

/// The stage of factory `F` rebuilt on backend `B`.
pub type ReloadedStage<F, B> = Reloaded<F, InferModel<B, <F as TaskFactory>::Task<B>>>;

/// A stage rebuilt from an export: its validated spec, the network, and `config.json`.
pub struct Reloaded<S, M> {
    pub spec: S,
    pub model: M,
    pub meta: Value,
}

fn read_json(path: &Path) -> Result<Value, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io("cannot read", path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Task(format!("{} is not JSON: {e}", path.display())))
}

/// The export's `config.json`, checked to be an unclip export of `stage`.
pub fn read_meta(dir: &Path, stage: Stage) -> Result<Value, TrainError> {
    let path = dir.join("config.json");
    let meta = read_json(&path)?;
    if meta["format"] != "unclip-export-1" {
        return Err(TrainError::Task(format!(
            "{} is not an unclip export (no `format: unclip-export-1`); a diffusers-layout \
             export cannot be loaded here: export with `--layout native`",
            path.display()
        )));
    }
    let want = serde_json::to_value(stage).unwrap_or_default();
    if meta["stage"] != want {
        return Err(TrainError::Task(format!(
            "{} holds a `{}` export, not `{}`",
            dir.display(),
            meta["stage"].as_str().unwrap_or("?"),
            want.as_str().unwrap_or("?")
        )));
    }
    Ok(meta)
}

/// A stage's task and training-side network rebuilt from the export in `dir` (weights
/// loaded), with its spec and `config.json`.
struct Rebuilt<B: AutodiffBackend, F: TaskFactory> {
    spec: F,
    task: F::Task<B>,
    model: <F::Task<B> as TrainTask<B>>::Model,
    meta: Value,
}

/// Rebuilds the export in `dir` with `make` (the stage's spec constructor) after `patch` has
/// adapted its `model:` section to `data.source: random`.
fn rebuild<B, C, F>(
    dir: &Path,
    stage: Stage,
    patch: impl FnOnce(&mut Value) -> Result<(), TrainError>,
    make: impl FnOnce(&RunConfig<C>) -> Result<F, TrainError>,
    device: &B::Device,
) -> Result<Rebuilt<B, F>, TrainError>
where
    B: AutodiffBackend,
    C: ModelSection,
    F: TaskFactory,
{
    let meta = read_meta(dir, stage)?;
    let mut model = meta["model"].clone();
    patch(&mut model)?;
    let run = json!({
        "stage": meta["stage"],
        "model": model,
        "diffusion": meta["diffusion"],
        "data": {"source": "random", "batch_size": 1, "image_size": meta["image_size"]},
    });
    let cfg: RunConfig<C> = serde_json::from_value(run)
        .map_err(|e| TrainError::Task(format!("{}: the export's config: {e}", dir.display())))?;
    let spec = make(&cfg)?;
    let task = spec.build::<B>(device)?;
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).map_err(|e| TrainError::io("cannot read", &weights, e))?;
    let model = crate::ema::renumber_params(task.init_model(device));
    let model = crate::export::load_safetensors::<B, _>(model, &bytes)
        .map_err(|e| TrainError::Task(format!("{}: {e}", weights.display())))?;
    Ok(Rebuilt {
        spec,
        task,
        model,
        meta,
    })
}

/// [`rebuild`] for inference: the spec and the network on the inner backend.
fn reload<B, C, F>(
    dir: &Path,
    stage: Stage,
    patch: impl FnOnce(&mut Value) -> Result<(), TrainError>,
    make: impl FnOnce(&RunConfig<C>) -> Result<F, TrainError>,
    device: &B::Device,
) -> Result<ReloadedStage<F, B>, TrainError>
where
    B: AutodiffBackend,
    C: ModelSection,
    F: TaskFactory,
{
    let r = rebuild::<B, C, F>(dir, stage, patch, make, device)?;
    Ok(Reloaded {
        spec: r.spec,
        model: r.model.valid(),
        meta: r.meta,
    })
}

/// The [`ExportMeta`] recorded in an export's `config.json`.
fn export_meta(meta: &Value) -> Result<ExportMeta, TrainError> {
    let bad = |k: &str, e: &dyn std::fmt::Display| {
        TrainError::Task(format!("the export's config.json: {k}: {e}"))
    };
    Ok(ExportMeta {
        format: "unclip-export-1",
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

/// Re-exports the native export in `dir` (a prior, decoder or upsampler; `dims` are the
/// CLIP sizes of the CLIP-conditioned stages) into `out` in another `layout`, through the
/// stage's own `export` — the same code as `unclip export --layout …` of its checkpoint.
pub fn reexport(
    dir: &Path,
    stage: Stage,
    dims: ClipDims,
    out: &Path,
    layout: ExportLayout,
) -> Result<ExportReport, TrainError> {
    type B = burn::backend::Autodiff<burn::backend::Flex>;
    let device = Default::default();
    std::fs::create_dir_all(out).map_err(|e| TrainError::io("cannot create", out, e))?;
    fn write<B: AutodiffBackend, F: TaskFactory>(
        r: Rebuilt<B, F>,
        out: &Path,
        layout: ExportLayout,
    ) -> Result<ExportReport, TrainError> {
        let meta = export_meta(&r.meta)?;
        r.task.export(&r.model, &meta, out, layout)
    }
    match stage {
        Stage::Prior => write(
            rebuild::<B, PriorModelConfig, _>(
                dir,
                stage,
                |m| clip_conditioned(m, dims),
                PriorSpec::new,
                &device,
            )?,
            out,
            layout,
        ),
        Stage::Decoder => write(
            rebuild::<B, DecoderModelConfig, _>(
                dir,
                stage,
                |m| clip_conditioned(m, dims),
                DecoderSpec::new,
                &device,
            )?,
            out,
            layout,
        ),
        Stage::Upsampler => write(
            rebuild::<B, UpsamplerModelConfig, _>(
                dir,
                stage,
                |_| Ok(()),
                UpsamplerSpec::new,
                &device,
            )?,
            out,
            layout,
        ),
        other => Err(TrainError::Task(format!(
            "cannot re-export a `{}` export",
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ))),
    }
}

/// The CLIP-conditioned stages' `model:` section for `data.source: random`: the CLIP sizes
/// (recorded by the export; `dims` fills them in for older exports) and encodings given as
/// a (random) store instead of a frozen CLIP run per batch.
fn clip_conditioned(model: &mut Value, dims: ClipDims) -> Result<(), TrainError> {
    for (k, v) in [
        ("embed_dim", dims.embed_dim),
        ("text_width", dims.text_width),
        ("text_len", dims.text_len),
    ] {
        match model[k].as_u64() {
            None => model[k] = json!(v),
            Some(have) if have as usize != v => {
                return Err(TrainError::Task(format!(
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

/// The prior exported in `dir`, for a CLIP of sizes `dims`.
pub fn prior<B: AutodiffBackend>(
    dir: &Path,
    dims: ClipDims,
    device: &B::Device,
) -> Result<ReloadedStage<PriorSpec, B>, TrainError> {
    reload::<B, PriorModelConfig, _>(
        dir,
        Stage::Prior,
        |m| clip_conditioned(m, dims),
        PriorSpec::new,
        device,
    )
}

/// The decoder exported in `dir`, for a CLIP of sizes `dims`.
pub fn decoder<B: AutodiffBackend>(
    dir: &Path,
    dims: ClipDims,
    device: &B::Device,
) -> Result<ReloadedStage<DecoderSpec, B>, TrainError> {
    reload::<B, DecoderModelConfig, _>(
        dir,
        Stage::Decoder,
        |m| clip_conditioned(m, dims),
        DecoderSpec::new,
        device,
    )
}

/// The upsampler exported in `dir`.
pub fn upsampler<B: AutodiffBackend>(
    dir: &Path,
    device: &B::Device,
) -> Result<ReloadedStage<UpsamplerSpec, B>, TrainError> {
    reload::<B, UpsamplerModelConfig, _>(
        dir,
        Stage::Upsampler,
        |_| Ok(()),
        UpsamplerSpec::new,
        device,
    )
}
