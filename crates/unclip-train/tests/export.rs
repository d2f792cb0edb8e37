//! Export: EMA weights by default, deterministic bytes, loading back gives identical outputs;
//! plus the random data source and the train benchmark.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use common::*;
use unclip_stages::export::load_safetensors;
use unclip_train::ema::renumber_params;
use unclip_train::export::{export, ExportDtype, ExportLayout};
use unclip_train::tasks::denoise::Denoiser;
use unclip_train::{Resume, TrainTask};

#[test]
fn export_is_deterministic_ema_by_default_and_loads_back_identically() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (train, val) = shards(tmp.path());
    let text = config_text(&train, &val, "preview:\n  every_steps: 3\n  count: 4\n");
    let run = tmp.path().join("run");
    let loaded = load(tmp.path(), &text, &[]);
    let mut t = trainer(loaded, &run, Resume::No).expect("trainer");
    t.run(&Arc::new(AtomicBool::new(false))).expect("run");
    assert!(run.join("samples/step-6.png").exists(), "preview grid");
    let ckpt = run.join("step-6");

    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    export(&ckpt, &a, true, ExportDtype::F32, ExportLayout::Native).expect("export a");
    export(&ckpt, &b, true, ExportDtype::F32, ExportLayout::Native).expect("export b");
    for f in ["config.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(a.join(f)).expect("a"),
            std::fs::read(b.join(f)).expect("b"),
            "{f}"
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(meta["weights"], "ema");
    assert_eq!(meta["step"], 6);
    assert_eq!(meta["stage"], "denoise");

    // Loading the export into a fresh model reproduces the EMA's outputs exactly.
    let device = Default::default();
    let task =
        unclip_train::launch::denoise_task(&load(tmp.path(), &text, &[]).config).expect("task");
    let fresh: Denoiser<B> = renumber_params(TrainTask::<B>::init_model(&task, &device));
    let bytes = std::fs::read(a.join("model.safetensors")).expect("weights");
    let loaded = load_safetensors(fresh, &bytes).expect("load export");
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(
            (0..2 * 3 * 16 * 16)
                .map(|i| (i as f32 * 0.37).sin())
                .collect(),
            [2, 3, 16, 16],
        ),
        &device,
    );
    let ema = t.ema().expect("ema");
    let want = ema.forward(x.clone(), &[3, 40], None).into_data();
    assert_eq!(loaded.forward(x.clone(), &[3, 40], None).into_data(), want);
    // …and differs from the raw weights, which `no_ema` exports.
    export(
        &ckpt,
        &tmp.path().join("raw"),
        false,
        ExportDtype::F32,
        ExportLayout::Native,
    )
    .expect("raw");
    let raw = std::fs::read(tmp.path().join("raw/model.safetensors")).expect("raw");
    assert_ne!(raw, bytes);

    // Half precision: half the bytes per weight, close outputs.
    export(
        &ckpt,
        &tmp.path().join("h"),
        true,
        ExportDtype::Bf16,
        ExportLayout::Native,
    )
    .expect("bf16");
    let h = std::fs::read(tmp.path().join("h/model.safetensors")).expect("h");
    let fresh: Denoiser<B> = renumber_params(TrainTask::<B>::init_model(&task, &device));
    let half = load_safetensors(fresh, &h).expect("load bf16");
    let diff = (half.forward(x, &[3, 40], None) - Tensor::<B, 4>::from_data(want, &device))
        .abs()
        .max()
        .into_scalar();
    assert!(diff < 0.1, "bf16 export drifts by {diff}");
}

#[test]
fn random_source_trains_and_benchmarks_without_shards() {
    let tmp = tempfile::tempdir().expect("tmp");
    let text = "stage: denoise
model: {channels: 8}
diffusion: {timesteps: 20}
data: {source: random, batch_size: 2, image_size: 8}
optim: {max_steps: 2}
logging: {progress: false}
";
    let p = tmp.path().join("bench.yaml");
    std::fs::write(&p, text).expect("write");
    let r = unclip_train::launch::bench(&p, &[], 3, 1).expect("bench");
    assert_eq!(r.steps, 3);
    assert!(r.s_per_step > 0.0 && r.samples_per_s > 0.0);
    // conv_in 3·8·9+8, time MLP 8·32+32 + 32·32+32, proj 32·8+8, norm 16, conv_mid 8·8·9+8, conv_out 8·3·9+3
    assert_eq!(r.params, 224 + 288 + 1056 + 264 + 16 + 584 + 219);
    let summary = unclip_train::launch::train(
        &unclip_train::launch::TrainOptions {
            config: p,
            out: Some(tmp.path().join("run")),
            ..Default::default()
        },
        Arc::new(AtomicBool::new(false)),
    )
    .expect("train");
    assert_eq!(summary.step, 2);
    assert!(tmp.path().join("run/step-2/model.mpk").exists());
    assert!(tmp.path().join("run/config.resolved.yaml").exists());
}
