//! `unclip pipeline assemble`: copies a CLIP folder and the native exports of a prior, a
//! decoder and up to two upsamplers into one pipeline folder, with a `pipeline.json` holding
//! each stage's sampling defaults (taken from its export's `diffusion.sampling`, overridable
//! later per call). Every file is written atomically; the folder is checked by loading it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use unclip_diffusion::SamplingConfig;
use unclip_train::reload::read_meta;
use unclip_train::Stage;

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
    Ok(AssembleReport {
        out: opts.out.clone(),
        files: files + 1,
        bytes,
        sides: p.sides(),
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
