//! The run folder at the start of `unclip train`: its lock, and where the run starts from
//! ([`Resume`]) — refusing to start afresh over an earlier run unless asked to replace it.

use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::TrainError;

/// Where to start from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resume {
    /// A fresh run (the run folder must not hold a checkpoint yet).
    #[default]
    No,
    /// The run folder's `latest` checkpoint (or, when that pointer file is missing, its newest
    /// complete `step-N` folder), or a fresh run when it has none.
    Auto,
    /// A given checkpoint folder (or a run folder, or its `latest` file).
    Path(PathBuf),
    /// A fresh run that first removes what an earlier run wrote into the run folder
    /// (checkpoints, `latest`, metrics, plots, samples, resolved config).
    Replace,
}

/// What `unclip train` writes into a run folder: what [`Resume::Replace`] removes.
const RUN_OUTPUTS: [&str; 5] = [
    checkpoint::LATEST,
    "metrics.jsonl",
    "config.resolved.yaml",
    "loss.png",
    "samples",
];

/// Locks `run_dir` (on the root rank) and finds the checkpoint to start from, if any.
pub(crate) fn start(
    resume: &Resume,
    run_dir: Option<&Path>,
    root: bool,
) -> Result<(Option<unclip_fs::FolderLock>, Option<PathBuf>), TrainError> {
    let lock = match (run_dir, root) {
        (Some(dir), true) => Some(
            unclip_fs::FolderLock::acquire(dir, "unclip train")
                .map_err(|e| TrainError::Task(e.to_string()))?,
        ),
        _ => None,
    };
    let from = match (resume, run_dir) {
        (Resume::No, Some(dir)) => {
            let steps = checkpoint::checkpoint_steps(dir);
            if checkpoint::latest(dir)?.is_some() || !steps.is_empty() {
                return Err(TrainError::Checkpoint {
                    path: dir.to_path_buf(),
                    why: "the run folder already has checkpoints: pass `--resume auto` to \
                          continue it, `--overwrite` to replace it, or choose another --out"
                        .into(),
                });
            }
            None
        }
        (Resume::Replace, Some(dir)) => {
            if root {
                remove_run_outputs(dir)?;
            }
            None
        }
        (Resume::No | Resume::Replace, None) => None,
        (Resume::Auto, Some(dir)) => match checkpoint::latest(dir)? {
            Some(found) => Some(found),
            None => checkpoint::checkpoint_steps(dir).last().map(|&step| {
                let found = dir.join(checkpoint::step_dir_name(step));
                tracing::warn!(
                    dir = %found.display(),
                    "the run folder has no `latest` file: resuming from its newest checkpoint"
                );
                found
            }),
        },
        (Resume::Auto, None) => None,
        (Resume::Path(p), _) => Some(checkpoint::resolve(p)?),
    };
    Ok((lock, from))
}

/// Removes what an earlier `unclip train` wrote into `dir` ([`Resume::Replace`]); other files
/// stay.
fn remove_run_outputs(dir: &Path) -> Result<(), TrainError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = RUN_OUTPUTS.contains(&name.as_str())
            || checkpoint::parse_step(&name).is_some()
            || name.starts_with(".tmp-");
        if !ours {
            continue;
        }
        let p = e.path();
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|err| TrainError::io("cannot remove", &p, err))?;
    }
    Ok(())
}
