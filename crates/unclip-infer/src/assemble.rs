//! `unclip pipeline assemble`: copies a CLIP folder and the native exports of a prior, a
//! decoder and up to two upsamplers into one pipeline folder, with a `pipeline.json` holding
//! each stage's sampling defaults (taken from its export's `diffusion.sampling`, overridable
//! later per call). Every file is written atomically; the folder is checked by loading it.
//! With [`ExportLayout::Diffusers`] the folder also gets `diffusers/`, what diffusers'
//! `UnCLIPPipeline` loads (see [`diffusers`]).

mod diffusers;

use std::path::{Path, PathBuf};

use serde::Serialize;
use unclip_diffusion::SamplingConfig;
use unclip_stages::export::ExportLayout;
use unclip_stages::reload::read_meta;
use unclip_stages::text::ClipDims;
use unclip_stages::Stage;

pub use diffusers::DiffusersReport;

use crate::{pipeline_error, InferError, PipelineConfig, StageEntry, PIPELINE_FORMAT};

/// What to put together.
#[derive(Debug, Clone)]
pub struct AssembleOptions {
    /// HF-layout CLIP folder (`config.json`, `model.safetensors`, `tokenizer.json`).
    pub clip: PathBuf,
    pub prior: PathBuf,
    pub decoder: PathBuf,
    /// 0, 1 or 2 upsampler exports, lowest resolution first.
    pub upsamplers: Vec<PathBuf>,
    pub out: PathBuf,
    /// Replace the files of an existing pipeline folder.
    pub overwrite: bool,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct AssembleReport {
    pub out: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// Image side after each stage (decoder, upsamplers).
    pub sides: Vec<usize>,
    /// The `diffusers/` folder (`--layout diffusers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diffusers: Option<DiffusersReport>,
}

/// Copies the regular files of `from` into `to` (atomically each); returns (files, bytes).
fn copy_folder(from: &Path, to: &Path) -> Result<(usize, u64), InferError> {
    let entries = std::fs::read_dir(from).map_err(|e| pipeline_error(from, e))?;
    let (mut files, mut bytes) = (0, 0);
    let mut names: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name())
        .filter(|n| !unclip_fs::is_temporary(Path::new(n)))
        .collect();
    names.sort();
    for name in names {
        let src = from.join(&name);
        let data = std::fs::read(&src).map_err(|e| pipeline_error(&src, e))?;
        let dst = to.join(&name);
        unclip_fs::write_atomic(&dst, &data).map_err(|e| pipeline_error(&dst, e))?;
        files += 1;
        bytes += data.len() as u64;
    }
    Ok((files, bytes))
}

/// The sampling defaults recorded in an export's `config.json`.
fn sampling_of(meta: &serde_json::Value, dir: &Path) -> Result<SamplingConfig, InferError> {
    serde_json::from_value(meta["diffusion"]["sampling"].clone())
        .map_err(|e| pipeline_error(dir, format!("diffusion.sampling: {e}")))
}

/// Builds the pipeline folder `opts.out`.
pub fn assemble(opts: &AssembleOptions) -> Result<AssembleReport, InferError> {
    assemble_as(opts, ExportLayout::Native)
}

/// Builds the pipeline folder `opts.out` and, for [`ExportLayout::Diffusers`], also
/// `opts.out/diffusers/` for diffusers' `UnCLIPPipeline` (refused, before anything is written,
/// where it could not compute what this pipeline does).
pub fn assemble_as(
    opts: &AssembleOptions,
    layout: ExportLayout,
) -> Result<AssembleReport, InferError> {
    if opts.upsamplers.len() > 2 {
        return Err(InferError::Invalid(format!(
            "at most two upsamplers (64→256, 256→1024), got {}",
            opts.upsamplers.len()
        )));
    }
    let marker = opts.out.join("pipeline.json");
    if marker.exists() && !opts.overwrite {
        return Err(pipeline_error(
            &opts.out,
            "already holds a pipeline; pass --overwrite to replace it",
        ));
    }
    for f in ["config.json", "model.safetensors"] {
        if !opts.clip.join(f).is_file() {
            return Err(pipeline_error(
                &opts.clip,
                format!("no {f}: the CLIP must be an HF-layout folder (e.g. `unclip export` of a CLIP run)"),
            ));
        }
    }
    let prior = read_meta(&opts.prior, Stage::Prior)?;
    let decoder = read_meta(&opts.decoder, Stage::Decoder)?;
    let ups = opts
        .upsamplers
        .iter()
        .map(|d| read_meta(d, Stage::Upsampler))
        .collect::<Result<Vec<_>, _>>()?;
    // Everything the diffusers layout cannot express is refused before anything is written.
    let diffusers_dir = opts.out.join("diffusers");
    let diffusers_plan = match layout {
        ExportLayout::Native => None,
        ExportLayout::Diffusers => {
            if diffusers_dir.exists() && !opts.overwrite {
                return Err(pipeline_error(
                    &diffusers_dir,
                    "already exists; pass --overwrite to replace it",
                ));
            }
            let config = unclip_clip::ClipConfig::from_file(opts.clip.join("config.json"))?;
            let dims = ClipDims {
                embed_dim: config.projection_dim,
                text_width: config.text_config.hidden_size,
                text_len: unclip_clip::CONTEXT_LENGTH,
            };
            Some(diffusers::plan(&prior, &decoder, &ups, dims)?)
        }
    };
    let mut plan = vec![
        ("clip".to_owned(), opts.clip.clone()),
        ("prior".to_owned(), opts.prior.clone()),
        ("decoder".to_owned(), opts.decoder.clone()),
    ];
    for (i, d) in opts.upsamplers.iter().enumerate() {
        plan.push((format!("upsampler-{}", i + 1), d.clone()));
    }
    let (mut files, mut bytes) = (0, 0);
    for (name, from) in &plan {
        let (f, b) = copy_folder(from, &opts.out.join(name))?;
        files += f;
        bytes += b;
    }
    let config = PipelineConfig {
        format: PIPELINE_FORMAT.into(),
        clip: "clip".into(),
        prior: StageEntry {
            path: "prior".into(),
            sampling: sampling_of(&prior, &opts.prior)?,
            n_candidates: prior["model"]["n_candidates"].as_u64().map(|n| n as usize),
        },
        decoder: StageEntry {
            path: "decoder".into(),
            sampling: sampling_of(&decoder, &opts.decoder)?,
            n_candidates: None,
        },
        upsamplers: ups
            .iter()
            .zip(&opts.upsamplers)
            .enumerate()
            .map(|(i, (m, d))| {
                Ok(StageEntry {
                    path: format!("upsampler-{}", i + 1),
                    sampling: sampling_of(m, d)?,
                    n_candidates: None,
                })
            })
            .collect::<Result<_, InferError>>()?,
    };
    let text = serde_json::to_string_pretty(&config).unwrap_or_default() + "\n";
    unclip_fs::write_atomic(&marker, text.as_bytes()).map_err(|e| pipeline_error(&marker, e))?;
    // Check that it loads (sizes chain, CLIP matches the stages) before reporting success.
    type B = burn::backend::Autodiff<burn::backend::Flex>;
    let p = crate::Pipeline::<B>::load(&opts.out, &Default::default())?;
    let sides = p.sides();
    let diffusers = match diffusers_plan {
        None => None,
        Some(plan) => {
            let (report, f, b) = diffusers::write(plan, &opts.out, p.dims, &sides, &diffusers_dir)?;
            files += f;
            bytes += b;
            Some(report)
        }
    };
    Ok(AssembleReport {
        out: opts.out.clone(),
        files: files + 1,
        bytes,
        sides,
        diffusers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_export(dir: &Path, stage: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let meta = serde_json::json!({"format": "unclip-export-1", "stage": stage});
        std::fs::write(dir.join("config.json"), meta.to_string()).unwrap();
    }

    fn opts(root: &Path) -> AssembleOptions {
        let clip = root.join("clip");
        std::fs::create_dir_all(&clip).unwrap();
        std::fs::write(clip.join("config.json"), "{}").unwrap();
        std::fs::write(clip.join("model.safetensors"), "").unwrap();
        AssembleOptions {
            clip,
            prior: root.join("prior"),
            decoder: root.join("decoder"),
            upsamplers: vec![],
            out: root.join("pipeline"),
            overwrite: false,
        }
    }

    #[test]
    fn refuses_a_wrong_stage_an_existing_pipeline_and_three_upsamplers() {
        let tmp = tempfile::tempdir().unwrap();
        let o = opts(tmp.path());
        fake_export(&o.prior, "prior");
        // The decoder folder holds an upsampler export.
        fake_export(&o.decoder, "upsampler");
        let e = assemble(&o).expect_err("refused").to_string();
        assert!(
            e.contains("holds a `upsampler` export, not `decoder`"),
            "{e}"
        );
        std::fs::remove_dir_all(&o.decoder).unwrap();
        std::fs::create_dir_all(&o.decoder).unwrap();
        std::fs::write(o.decoder.join("config.json"), r#"{"model": {}}"#).unwrap();
        let e = assemble(&o).expect_err("refused").to_string();
        assert!(e.contains("not an unclip export"), "{e}");
        std::fs::create_dir_all(&o.out).unwrap();
        std::fs::write(o.out.join("pipeline.json"), "{}").unwrap();
        let e = assemble(&o).expect_err("refused").to_string();
        assert!(e.contains("--overwrite"), "{e}");
        let mut three = o.clone();
        three.upsamplers = vec![o.prior.clone(); 3];
        let e = assemble(&three).expect_err("refused").to_string();
        assert!(e.contains("at most two upsamplers"), "{e}");
    }
}
