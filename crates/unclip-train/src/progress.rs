//! The progress bar (loss, lr, samples/s, ETA) and the throughput window behind it.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::StepReport;

/// Steps, losses and samples since the last metrics line.
pub struct Window {
    start: Instant,
    samples: usize,
    losses: Vec<f64>,
}

impl Window {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            samples: 0,
            losses: Vec::new(),
        }
    }
    pub fn add(&mut self, r: &StepReport) {
        self.samples += r.samples;
        self.losses.push(r.loss);
    }
    pub fn mean_loss(&self) -> f64 {
        self.losses.iter().sum::<f64>() / self.losses.len().max(1) as f64
    }
    pub fn samples_per_s(&self) -> f64 {
        self.samples as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

/// An indicatif bar on stderr (hidden when off or not a terminal).
pub struct Progress(ProgressBar);

impl Progress {
    pub fn new(enabled: bool, start: u64, max: u64) -> Self {
        let bar = if enabled {
            ProgressBar::new(max)
        } else {
            ProgressBar::hidden()
        };
        bar.set_position(start);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self(bar)
    }
    pub fn update(&self, r: &StepReport, samples_per_s: f64) {
        self.0.set_position(r.step);
        self.0.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.1} samples/s",
            r.loss, r.lr, samples_per_s
        ));
    }
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
