//! Checkpoints: one `step-N/` folder per save inside the run folder, written into a temporary
//! folder, fsynced and renamed, then announced by atomically rewriting the `latest` file.
//! An interrupted or failed save therefore never hides the last good checkpoint.
//!
//! A folder holds `model.mpk`, `ema.mpk` (when EMA is on), `optim.mpk` (burn's named
//! MessagePack records, which keep the parameter ids the optimizer state is keyed by),
//! `state.json` ([`TrainerState`]: step, loader cursor (one per rank in a data-parallel run),
//! counters, best validation loss, format version; the LR schedule and every random number are functions of seed and step),
//! `config.resolved.yaml` and `checksums.json` (SHA-256 of every other file and the shape of
//! every model tensor), which a resume and an export verify before loading anything.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use unclip_data::Cursor;

use crate::config::Stage;
use crate::TrainError;

/// Version of the checkpoint layout; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// The file naming the newest complete checkpoint folder.
pub const LATEST: &str = "latest";
/// The file of a checkpoint folder holding its files' SHA-256 and its tensors' shapes.
pub const CHECKSUMS: &str = "checksums.json";

/// `checksums.json`: what a checkpoint folder must hold, checked before anything is loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checksums {
    /// File name → hex SHA-256 of its bytes.
    pub files: BTreeMap<String, String>,
    /// Record (`model`, `ema`) → parameter path → shape.
    pub shapes: BTreeMap<String, BTreeMap<String, Vec<usize>>>,
}

/// Every float parameter's shape by its module path (`blocks.0.attn.qkv.weight`), without
/// initialising lazy parameters.
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, Vec<usize>> {
    struct Shapes {
        stack: Vec<String>,
        out: BTreeMap<String, Vec<usize>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.push(name.to_owned());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out.insert(
                self.stack.join("."),
                param.lazy_shape().dims::<D>().to_vec(),
            );
        }
    }
    let mut v = Shapes {
        stack: Vec::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v.out
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// Checks every file of a checkpoint folder against its `checksums.json` (a folder without
/// one, written before checksums existed, passes with a warning) and returns the recorded
/// shapes.
pub fn verify(dir: &Path) -> Result<Checksums, TrainError> {
    let p = dir.join(CHECKSUMS);
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), "checkpoint has no checksums.json (written by an older unclip): not verified");
            return Ok(Checksums::default());
        }
        Err(e) => return Err(TrainError::io("cannot read", p, e)),
    };
    let sums: Checksums = serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
        path: p.clone(),
        why: e.to_string(),
    })?;
    for (name, want) in &sums.files {
        let f = dir.join(name);
        let got = sha256_file(&f).map_err(|e| TrainError::io("cannot read", &f, e))?;
        if &got != want {
            return Err(TrainError::Checkpoint {
                path: f,
                why: format!(
                    "its SHA-256 is {got}, checksums.json says {want}: the file was changed or \
                      damaged after the save; resume from another checkpoint (step-N) of the run"
                ),
            });
        }
    }
    Ok(sums)
}

/// Compares the shapes a checkpoint recorded for `record` with `module`'s: the first
/// difference is an error naming the tensor, before anything is loaded.
pub fn check_shapes<B: Backend, M: Module<B>>(
    dir: &Path,
    sums: &Checksums,
    record: &str,
    module: &M,
) -> Result<(), TrainError> {
    let Some(saved) = sums.shapes.get(record) else {
        return Ok(());
    };
    let ours = param_shapes::<B, M>(module);
    let err = |why: String| TrainError::Checkpoint {
        path: dir.join(format!("{record}.mpk")),
        why,
    };
    for (path, shape) in &ours {
        match saved.get(path) {
            Some(s) if s == shape => {}
            Some(s) => {
                return Err(err(format!(
                    "tensor `{path}` has shape {s:?} there and {shape:?} in the model this config \
                      builds: the checkpoint belongs to a model of another size"
                )))
            }
            None => {
                return Err(err(format!(
                    "has no tensor `{path}` (shape {shape:?}) that the model this config builds \
                      has: the checkpoint belongs to another model"
                )))
            }
        }
    }
    if let Some(extra) = saved.keys().find(|k| !ours.contains_key(*k)) {
        return Err(err(format!(
            "holds tensor `{extra}`, which the model this config builds does not have"
        )));
    }
    Ok(())
}
/// Environment variable that makes the writer fail on purpose (`before_rename` or
/// `write_error`), for testing the failure paths of the real writer.
pub const FAULT_ENV: &str = "UNCLIP_TRAIN_INJECT_FAULT";

/// Counts kept across resumes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Samples that went into optimizer steps.
    pub samples_seen: u64,
    /// Steps skipped because the loss or a gradient was not finite.
    pub nonfinite_skipped: u64,
    /// Skipped steps in a row, up to now.
    pub consecutive_nonfinite: u64,
}

/// `state.json`: everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format_version: u32,
    pub stage: Stage,
    /// Optimizer steps done.
    pub step: u64,
    pub seed: u64,
    /// Hash of the resolved config.
    pub config_hash: String,
    /// The training loader's position (absent with `data.source: random`).
    pub cursor: Option<Cursor>,
    pub counters: Counters,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    /// Devices (data-parallel ranks) of the run that wrote it; absent means 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world_size: u32,
    /// With several ranks: every rank's loader position, in rank order (`cursor` is rank
    /// 0's). A resume restores each rank's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rank_cursors: Vec<Cursor>,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// A deliberate failure inside [`CheckpointWriter::save`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Everything written, then the save aborts before the rename.
    BeforeRename,
    /// An I/O error (as on a full disk) after the model file was written.
    WriteError,
}

impl Fault {
    /// The fault named by [`FAULT_ENV`], if any.
    pub fn from_env() -> Option<Fault> {
        match std::env::var(FAULT_ENV).ok()?.as_str() {
            "before_rename" => Some(Fault::BeforeRename),
            "write_error" => Some(Fault::WriteError),
            _ => None,
        }
    }
}

/// The name of the folder of step `step`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step}")
}

pub(crate) fn parse_step(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// burn's recorder reports I/O failures as text (through its MessagePack encoder); a full disk
/// keeps its kind and says so first.
fn rec_err(e: burn::record::RecorderError) -> io::Error {
    let text = e.to_string();
    if text.contains("No space left on device") || text.contains("os error 28") {
        io::Error::new(
            io::ErrorKind::StorageFull,
            format!("no space left on device ({text})"),
        )
    } else {
        io::Error::other(text)
    }
}

fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes checkpoints into one run folder and keeps the last K plus the best.
pub struct CheckpointWriter {
    run_dir: PathBuf,
    keep_last: u64,
    fault: Option<Fault>,
}

/// What a checkpoint holds besides the state.
pub struct SaveItems<'a, M, R> {
    pub model: &'a M,
    pub ema: Option<&'a M>,
    /// The optimizer's record.
    pub optim: R,
    pub resolved_config: &'a str,
}

impl CheckpointWriter {
    pub fn new(run_dir: impl Into<PathBuf>, keep_last: u64) -> Self {
        Self {
            run_dir: run_dir.into(),
            keep_last,
            fault: Fault::from_env(),
        }
    }

    /// Removes temporary folders left by saves that were killed midway.
    pub fn remove_stale(&self) {
        let Ok(entries) = fs::read_dir(&self.run_dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(".tmp-step-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Makes the next saves fail at `fault` (tests of the failure paths).
    pub fn inject_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault;
    }

    /// Saves one checkpoint and points `latest` at it; on error the previous one stays.
    pub fn save<B: Backend, M: Module<B>, R: Record<B>>(
        &self,
        items: SaveItems<'_, M, R>,
        state: &TrainerState,
    ) -> Result<PathBuf, TrainError> {
        let name = step_dir_name(state.step);
        let dir = self.run_dir.join(&name);
        let tmp = self.run_dir.join(format!(".tmp-{name}"));
        let failed = |dir: PathBuf, source| TrainError::Save {
            step: state.step,
            dir,
            previous: match latest(&self.run_dir) {
                Ok(Some(p)) => format!(
                    "`latest` still names the previous checkpoint, {}",
                    p.display()
                ),
                _ => "the run has no earlier checkpoint".into(),
            },
            source,
        };
        let result = self.write::<B, M, R>(&tmp, &dir, items, state);
        if let Err(source) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(failed(dir, source));
        }
        unclip_fs::write_atomic(self.run_dir.join(LATEST), format!("{name}\n").as_bytes())
            .map_err(|source| failed(dir.clone(), source))?;
        self.prune(state.step, state.best_step);
        Ok(dir)
    }

    fn write<B: Backend, M: Module<B>, R: Record<B>>(
        &self,
        tmp: &Path,
        dir: &Path,
        items: SaveItems<'_, M, R>,
        state: &TrainerState,
    ) -> io::Result<()> {
        if tmp.exists() {
            fs::remove_dir_all(tmp)?;
        }
        fs::create_dir_all(tmp)?;
        let rec = recorder();
        Recorder::<B>::record(&rec, items.model.clone().into_record(), tmp.join("model"))
            .map_err(rec_err)?;
        sync_file(&tmp.join("model.mpk"))?;
        if self.fault == Some(Fault::WriteError) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected by UNCLIP_TRAIN_INJECT_FAULT)",
            ));
        }
        if let Some(ema) = items.ema {
            Recorder::<B>::record(&rec, ema.clone().into_record(), tmp.join("ema"))
                .map_err(rec_err)?;
            sync_file(&tmp.join("ema.mpk"))?;
        }
        Recorder::<B>::record(&rec, items.optim, tmp.join("optim")).map_err(rec_err)?;
        sync_file(&tmp.join("optim.mpk"))?;
        let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        write_synced(&tmp.join("state.json"), &json)?;
        write_synced(
            &tmp.join("config.resolved.yaml"),
            items.resolved_config.as_bytes(),
        )?;
        let mut sums = Checksums::default();
        for e in fs::read_dir(tmp)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            sums.files.insert(name, sha256_file(&e.path())?);
        }
        sums.shapes
            .insert("model".into(), param_shapes::<B, M>(items.model));
        if let Some(ema) = items.ema {
            sums.shapes.insert("ema".into(), param_shapes::<B, M>(ema));
        }
        let json = serde_json::to_vec_pretty(&sums).map_err(io::Error::other)?;
        write_synced(&tmp.join(CHECKSUMS), &json)?;
        if let Ok(d) = File::open(tmp) {
            d.sync_all()?;
        }
        if self.fault == Some(Fault::BeforeRename) {
            return Err(io::Error::other(
                "save aborted before the rename (injected by UNCLIP_TRAIN_INJECT_FAULT)",
            ));
        }
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::rename(tmp, dir)?;
        File::open(&self.run_dir)?.sync_all()
    }

    /// Removes step folders beyond the last `keep_last`, sparing `best` and `current`.
    fn prune(&self, current: u64, best: Option<u64>) {
        let Ok(entries) = fs::read_dir(&self.run_dir) else {
            return;
        };
        let mut steps: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_step(&e.file_name().to_string_lossy()))
            .collect();
        steps.sort_unstable();
        let cut = steps.len().saturating_sub(self.keep_last as usize);
        for &s in &steps[..cut] {
            if s != current && Some(s) != best {
                let _ = fs::remove_dir_all(self.run_dir.join(step_dir_name(s)));
            }
        }
    }
}

/// The folder `latest` names in `run_dir`, if there is one; a pointer naming anything but a
/// complete `step-N` folder of this run is an error.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    let p = run_dir.join(LATEST);
    let text = match fs::read_to_string(&p) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io("cannot read", p, e)),
    };
    let name = text.trim();
    let dir = run_dir.join(name);
    if parse_step(name).is_none() || !dir.join("state.json").is_file() {
        return Err(TrainError::Checkpoint {
            path: p,
            why: format!(
                "names `{name}`, which is not a complete checkpoint folder (step-N) of this run; \
                  name one with `--resume {}`",
                run_dir.join("step-N").display()
            ),
        });
    }
    Ok(Some(dir))
}

/// The steps of the complete checkpoint folders (`step-N` with a `state.json`) in `run_dir`,
/// ascending.
pub fn checkpoint_steps(run_dir: &Path) -> Vec<u64> {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut steps: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("state.json").is_file())
        .filter_map(|e| parse_step(&e.file_name().to_string_lossy()))
        .collect();
    steps.sort_unstable();
    steps
}

/// The checkpoint folder a user names: a checkpoint folder (`RUN/step-N`), a run folder (its
/// `latest`), or the `latest` file itself.
pub fn resolve(path: &Path) -> Result<PathBuf, TrainError> {
    if path.is_file() && path.file_name().is_some_and(|n| n == LATEST) {
        let run = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        return latest(run)?.ok_or_else(|| TrainError::Checkpoint {
            path: path.to_path_buf(),
            why: "vanished while it was read".into(),
        });
    }
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if let Some(dir) = latest(path)? {
        return Ok(dir);
    }
    Err(TrainError::Checkpoint {
        path: path.to_path_buf(),
        why: "is neither a checkpoint folder (no state.json) nor a run folder (no `latest`)".into(),
    })
}

/// A checkpoint folder's `state.json`, checked for its format version.
pub fn load_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let p = dir.join("state.json");
    let bytes = fs::read(&p).map_err(|e| TrainError::io("cannot read", &p, e))?;
    let state: TrainerState =
        serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
            path: p.clone(),
            why: e.to_string(),
        })?;
    if state.format_version != FORMAT_VERSION {
        return Err(TrainError::Checkpoint {
            path: p,
            why: format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                state.format_version
            ),
        });
    }
    Ok(state)
}

/// A record (`model`, `ema`, `optim`) of a checkpoint folder.
pub fn load_record<B: Backend, R: Record<B>>(
    dir: &Path,
    name: &str,
    device: &B::Device,
) -> Result<R, TrainError> {
    let path = dir.join(name);
    Recorder::<B>::load(&recorder(), path.clone(), device).map_err(|e| TrainError::Checkpoint {
        path: path.with_extension("mpk"),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_inside_the_recorder_is_reported_as_one() {
        let e = rec_err(burn::record::RecorderError::Unknown(
            "Failed to encode: IO error while writing data: No space left on device (os error 28)"
                .into(),
        ));
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(e.to_string().starts_with("no space left on device"), "{e}");
        let other = rec_err(burn::record::RecorderError::Unknown("bad".into()));
        assert_eq!(other.kind(), io::ErrorKind::Other);
    }

    #[test]
    fn other_shapes_are_named_before_loading() {
        use burn::backend::Flex;
        use burn::nn::LinearConfig;
        let device = Default::default();
        let small = LinearConfig::new(4, 3).init::<Flex>(&device);
        let wide = LinearConfig::new(4, 5).init::<Flex>(&device);
        let mut sums = Checksums::default();
        sums.shapes
            .insert("model".into(), param_shapes::<Flex, _>(&small));
        let dir = Path::new("run/step-1");
        assert!(check_shapes::<Flex, _>(dir, &sums, "model", &small).is_ok());
        let err = check_shapes::<Flex, _>(dir, &sums, "model", &wide)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.mpk") && err.contains("`bias` has shape [3] there and [5]"),
            "{err}"
        );
        let no_bias = LinearConfig::new(4, 3)
            .with_bias(false)
            .init::<Flex>(&device);
        let err = check_shapes::<Flex, _>(dir, &sums, "model", &no_bias)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not have"), "{err}");
    }

    #[test]
    fn prune_keeps_the_last_k_the_best_and_the_current() {
        let tmp = tempfile::tempdir().expect("tmp");
        for s in 1..=6 {
            fs::create_dir(tmp.path().join(step_dir_name(s))).expect("mkdir");
        }
        fs::create_dir(tmp.path().join("samples")).expect("mkdir");
        CheckpointWriter::new(tmp.path(), 2).prune(6, Some(2));
        let mut left: Vec<String> = fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["samples", "step-2", "step-5", "step-6"]);
    }
}
