//! Failure paths: a save that fails inside the real writer (before the rename, or with an
//! I/O error as on a full disk) leaves the previous checkpoint as `latest`, loadable; a
//! non-finite loss skips the step without touching the weights and stops the run after K in
//! a row; non-finite weights are never saved.

mod common;

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::tensor::Tensor;
use common::*;
use image::RgbImage;
use unclip_data::{Batch, SampleTransform};
use unclip_models::NoiseKey;
use unclip_train::checkpoint::Fault;
use unclip_train::ema::{all_finite, param_values};
use unclip_train::tasks::denoise::{DenoiseModelConfig, DenoiseTask, Denoiser};
use unclip_train::{Resume, TrainError, TrainTask, Trainer};

type Dev = burn::backend::flex::FlexDevice;

fn stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

fn save_failure(fault: Fault, expected: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (train, val) = shards(tmp.path());
    let text = config_text(&train, &val, "");
    let run = tmp.path().join("run");
    let loaded = load(tmp.path(), &text, &["optim.max_steps=3".into()]);
    trainer(loaded, &run, Resume::No)
        .expect("trainer")
        .run(&stop())
        .expect("first 3 steps");

    let loaded = load(tmp.path(), &text, &[]);
    let mut t = trainer(loaded, &run, Resume::Auto).expect("resume");
    t.writer_mut().expect("writer").inject_fault(Some(fault));
    let e = t.run(&stop()).expect_err("the save must fail");
    drop(t); // releases the run folder's lock
    assert!(matches!(e, TrainError::Save { step: 6, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("`latest` still names the previous checkpoint") && msg.contains("step-3"),
        "{msg}"
    );
    assert!(msg.contains(expected), "{msg}");

    assert_eq!(
        std::fs::read_to_string(run.join("latest"))
            .expect("latest")
            .trim(),
        "step-3"
    );
    let names: Vec<String> = std::fs::read_dir(&run)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".tmp") || n == "step-6"),
        "{names:?}"
    );
    // A save killed midway leaves a temporary folder; the next start removes it.
    std::fs::create_dir(run.join(".tmp-step-9")).expect("stale tmp");
    let loaded = load(tmp.path(), &text, &[]);
    let t = trainer(loaded, &run, Resume::Auto).expect("latest still loads");
    assert_eq!(t.state().step, 3);
    assert!(!run.join(".tmp-step-9").exists());
}

#[test]
fn a_failed_first_save_says_there_is_no_earlier_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (train, val) = shards(tmp.path());
    let text = config_text(&train, &val, "");
    let run = tmp.path().join("run");
    let loaded = load(tmp.path(), &text, &["optim.max_steps=3".into()]);
    let mut t = trainer(loaded, &run, Resume::No).expect("trainer");
    t.writer_mut()
        .expect("writer")
        .inject_fault(Some(Fault::WriteError));
    let msg = t.run(&stop()).expect_err("the save must fail").to_string();
    assert!(msg.contains("the run has no earlier checkpoint"), "{msg}");
    assert!(!msg.contains("still names"), "{msg}");
    let names: Vec<String> = std::fs::read_dir(&run)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".tmp")), "{names:?}");
}

#[test]
fn save_aborted_before_rename_keeps_the_previous_latest() {
    save_failure(Fault::BeforeRename, "aborted before the rename");
}

#[test]
fn write_error_keeps_the_previous_latest() {
    save_failure(Fault::WriteError, "no space left on device");
}

/// The denoise task with a NaN loss at chosen micro-steps.
struct NanAt {
    inner: DenoiseTask,
    micro_steps: HashSet<u64>,
}

impl TrainTask<B> for NanAt {
    type Model = Denoiser<B>;
    fn init_model(&self, device: &Dev) -> Denoiser<B> {
        TrainTask::<B>::init_model(&self.inner, device)
    }
    fn transform(
        &self,
        split: unclip_train::Split,
    ) -> Result<Arc<dyn SampleTransform>, TrainError> {
        TrainTask::<B>::transform(&self.inner, split)
    }
    fn random_batch(&self, n: usize, key: &NoiseKey) -> Batch {
        TrainTask::<B>::random_batch(&self.inner, n, key)
    }
    fn loss(
        &self,
        model: &Denoiser<B>,
        batch: &Batch,
        key: &NoiseKey,
        device: &Dev,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let loss = self.inner.loss(model, batch, key, device)?;
        Ok(if self.micro_steps.contains(&key.step) {
            loss * f32::NAN
        } else {
            loss
        })
    }
    fn validation_sums(
        &self,
        model: &Denoiser<B>,
        batch: &Batch,
        key: &NoiseKey,
        device: &Dev,
    ) -> Result<unclip_train::ValidationSums, TrainError> {
        self.inner.validation_sums(model, batch, key, device)
    }
    fn preview(
        &self,
        _: &Denoiser<B>,
        _: usize,
        _: &NoiseKey,
        _: &Dev,
    ) -> Result<Option<RgbImage>, TrainError> {
        Ok(None)
    }
}

fn nan_trainer(
    dir: &std::path::Path,
    extra: &[String],
    micro_steps: impl IntoIterator<Item = u64>,
) -> Trainer<B, NanAt, DenoiseModelConfig> {
    let (train, val) = shards(dir);
    let loaded = load(dir, &config_text(&train, &val, ""), extra);
    let task = NanAt {
        inner: unclip_train::launch::denoise_task(&loaded.config).expect("task"),
        micro_steps: micro_steps.into_iter().collect(),
    };
    Trainer::new(
        task,
        loaded.config,
        loaded.resolved,
        Default::default(),
        Some(dir.join("run")),
        Resume::No,
    )
    .expect("trainer")
}

#[test]
fn nan_loss_skips_the_step_and_counts_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    // accumulation 2: optimizer step 2 is micro-steps 4 and 5; one NaN spoils the step.
    let mut t = nan_trainer(tmp.path(), &[], [5]);
    t.train_step().expect("step 0");
    t.train_step().expect("step 1");
    let before = param_values::<B, _>(t.model());
    let ema_before = param_values::<B, _>(t.ema().expect("ema"));
    let r = t.train_step().expect("a NaN step is skipped, not an error");
    assert!(r.skipped && r.loss.is_nan());
    assert_eq!(param_values::<B, _>(t.model()), before);
    assert_eq!(param_values::<B, _>(t.ema().expect("ema")), ema_before);
    assert_eq!(t.state().counters.nonfinite_skipped, 1);
    let r = t.train_step().expect("step 3 trains again");
    assert!(!r.skipped);
    assert_ne!(param_values::<B, _>(t.model()), before);
    assert_eq!(t.state().counters.consecutive_nonfinite, 0);
    let s = t.run(&stop()).expect("rest of the run");
    assert_eq!((s.step, s.nonfinite_skipped), (6, 1));
    let metrics = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).expect("metrics");
    assert!(metrics.contains("\"skipped_steps\":1"), "{metrics}");
}

#[test]
fn nan_loss_k_times_in_a_row_stops_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut t = nan_trainer(
        tmp.path(),
        &["optim.max_consecutive_nonfinite=3".into()],
        4..1000,
    );
    let e = t.run(&stop()).expect_err("must stop").to_string();
    assert!(
        e.starts_with("stopping at step 5: 3 optimizer steps in a row had a non-finite loss"),
        "{e}"
    );
    assert!(all_finite::<B, _>(t.model()));
    // The step-3 checkpoint (after one skipped step) holds the finite weights.
    let latest = std::fs::read_to_string(tmp.path().join("run/latest")).expect("latest");
    assert_eq!(latest.trim(), "step-3");
}

#[test]
fn non_finite_weights_are_never_saved() {
    let tmp = tempfile::tempdir().expect("tmp");
    // An lr beyond f32 range turns the first update into ±∞.
    let mut t = nan_trainer(
        tmp.path(),
        &[
            "optim.lr=1e39".into(),
            "optim.lr_schedule.decay=constant".into(),
            "optim.lr_schedule.warmup_steps=0".into(),
            "checkpoint.every_steps=1".into(),
        ],
        [],
    );
    let e = t.run(&stop()).expect_err("must refuse to save");
    assert_eq!(
        e.to_string(),
        "refusing to save step 1: the weights are not finite"
    );
    assert!(!tmp.path().join("run/latest").exists());
    assert!(!tmp.path().join("run/step-1").exists());
}
