//! `metrics.jsonl` (one JSON object per line) and the loss curve drawn from it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsLine {
    Train {
        step: u64,
        /// Mean training loss over the steps since the previous line.
        loss: f64,
        lr: f64,
        grad_norm: f64,
        samples_per_s: f64,
        /// Optimizer steps skipped for non-finite values so far.
        skipped_steps: u64,
        /// Samples the loader skipped so far, by reason.
        data_skips: std::collections::BTreeMap<String, u64>,
    },
    Val {
        step: u64,
        val_loss: f64,
        /// The stage's validation metrics (means over the held-out samples).
        #[serde(default, flatten)]
        metrics: std::collections::BTreeMap<String, f64>,
    },
}

impl MetricsLine {
    pub fn step(&self) -> u64 {
        match self {
            MetricsLine::Train { step, .. } | MetricsLine::Val { step, .. } => *step,
        }
    }
}

/// The metrics file of a run, with the series kept for the loss curve.
pub struct Metrics {
    path: PathBuf,
    file: File,
    pub train: Vec<(u64, f64)>,
    pub val: Vec<(u64, f64)>,
}

impl Metrics {
    /// Opens `run_dir/metrics.jsonl`, dropping lines past `resumed_step` (written by a run
    /// that died after its last checkpoint, and about to be written again).
    pub fn open(run_dir: &Path, resumed_step: u64) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        let mut train = Vec::new();
        let mut val = Vec::new();
        let mut kept = String::new();
        if let Ok(text) = fs::read_to_string(&path) {
            for line in text.lines() {
                let Ok(m) = serde_json::from_str::<MetricsLine>(line) else {
                    continue;
                };
                if m.step() > resumed_step {
                    continue;
                }
                match &m {
                    MetricsLine::Train { step, loss, .. } => train.push((*step, *loss)),
                    MetricsLine::Val { step, val_loss, .. } => val.push((*step, *val_loss)),
                }
                kept.push_str(line);
                kept.push('\n');
            }
            unclip_fs::write_atomic(&path, kept.as_bytes())
                .map_err(|e| TrainError::io("cannot rewrite", &path, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io("cannot open", &path, e))?;
        Ok(Self {
            path,
            file,
            train,
            val,
        })
    }

    pub fn write(&mut self, line: &MetricsLine) -> Result<(), TrainError> {
        match line {
            MetricsLine::Train { step, loss, .. } => self.train.push((*step, *loss)),
            MetricsLine::Val { step, val_loss, .. } => self.val.push((*step, *val_loss)),
        }
        let mut text = serde_json::to_string(line).unwrap_or_default();
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| TrainError::io("cannot write", &self.path, e))
    }

    /// Redraws `loss.png` beside the metrics.
    pub fn draw_curve(&self) -> Result<(), TrainError> {
        let img = crate::plot::loss_curve(&self.train, &self.val);
        let path = self.path.with_file_name("loss.png");
        save_png(&img, &path)
    }
}

/// Writes a PNG atomically.
pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<(), TrainError> {
    unclip_fs::write_png(path, img).map_err(|e| TrainError::io("cannot write", path, e))
}
