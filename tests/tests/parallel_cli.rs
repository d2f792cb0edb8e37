//! Data-parallel training through the binary (`--devices cpu,cpu`: two CPU peers on threads,
//! gradients averaged by burn-collective), on a tiny shapes world embedded by a random-init
//! CLIP, with dropout, CFG drops and gradient accumulation on:
//! - two peers reach the weights and EMA of one device on the same global batch (prior and
//!   decoder), through the real loader;
//! - a rank that fails stops the whole run with an error naming it, without hanging;
//! - a two-rank run killed between checkpoints and resumed ends bit-identical to an
//!   uninterrupted two-rank run; resuming it on one device is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use unclip_tests::{
    assert_kill_and_resume_identical, embedded_tiny_world, tiny_world_config, unclip, unclip_ok,
};

const BIN: &str = env!("CARGO_BIN_EXE_unclip-e2e");
const FAIL_ENV: &str = "UNCLIP_TRAIN_TEST_FAIL_RANK_AT_STEP";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Shards, a random CLIP, stores with text encodings; the prior and decoder test configs
/// with their paths: (prior.yaml, decoder.yaml).
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    embedded_tiny_world(BIN, dir);
    (
        tiny_world_config(dir, "prior.yaml"),
        tiny_world_config(dir, "decoder.yaml"),
    )
}

fn train_args(config: &Path, out: &Path, steps: u64, devices: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--config",
        s(config),
        "--out",
        s(out),
        "--max-steps",
        &steps.to_string(),
        "--devices",
        devices,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for set in [
        "checkpoint.every_steps=3",
        "validation.every_steps=3",
        "logging.every_steps=1",
        "logging.progress=false",
        "preview.every_steps=0",
    ] {
        v.push("--set".into());
        v.push(set.into());
    }
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The f32 tensors of an exported `model.safetensors`.
fn exported(run: &Path, ema: bool) -> BTreeMap<String, Vec<f32>> {
    let out = run.with_extension(if ema { "ema" } else { "raw" });
    let mut args = vec!["export", "--checkpoint", s(run), "--out", s(&out)];
    if !ema {
        args.push("--no-ema");
    }
    unclip_ok(BIN, &args);
    let bytes = std::fs::read(out.join("model.safetensors")).expect("model.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let values = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

/// The largest absolute difference between two runs' tensors (same names required).
fn max_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "tensor names"
    );
    let mut worst = 0f32;
    for (name, x) in a {
        let y = &b[name];
        assert_eq!(x.len(), y.len(), "{name}");
        for (p, q) in x.iter().zip(y) {
            assert!(p.is_finite() && q.is_finite(), "{name}");
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

fn train_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .filter(|l| l.contains("\"kind\":\"train\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["loss"].as_f64().expect("loss")
        })
        .collect()
}

/// Trains `config` for `steps` on one device and on two CPU peers; asserts equal weights and
/// EMA (within `tol`) and logged losses (and that training moved the weights).
fn assert_two_peers_match_one(dir: &Path, config: &Path, steps: u64, tol: f32) {
    let one = dir.join("one");
    let two = dir.join("two");
    let short = dir.join("short");
    unclip_ok(BIN, &strs(&train_args(config, &one, steps, "cpu")));
    unclip_ok(BIN, &strs(&train_args(config, &two, steps, "cpu,cpu")));
    unclip_ok(BIN, &strs(&train_args(config, &short, 1, "cpu")));
    for ema in [false, true] {
        let (a, b) = (exported(&one, ema), exported(&two, ema));
        let d = max_diff(&a, &b);
        assert!(d <= tol, "{}: max |Δw| = {d} (ema {ema})", config.display());
        assert!(
            max_diff(&a, &exported(&short, ema)) > 1e-4,
            "training did not move the weights"
        );
    }
    let (la, lb) = (train_losses(&one), train_losses(&two));
    assert_eq!(la.len(), steps as usize, "one metrics line per step");
    assert_eq!(lb.len(), la.len(), "rank 0 alone writes metrics");
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "loss {x} vs {y}");
    }
}

#[test]
fn two_cpu_peers_reach_the_weights_of_one_device() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (prior, decoder) = setup(tmp.path());
    let p = tmp.path().join("prior");
    let d = tmp.path().join("decoder");
    std::fs::create_dir_all(&p).expect("mkdir");
    std::fs::create_dir_all(&d).expect("mkdir");
    assert_two_peers_match_one(&p, &prior, 4, 1e-5);
    // The decoder's convolution weight gradients are sums over every pixel of the batch, grouped
    // differently when each peer holds half of it; where a gradient is near zero, Adam's
    // division by √v turns that float rounding into up to a few % of one step (lr 2e-3).
    assert_two_peers_match_one(&d, &decoder, 3, 5e-5);
}

/// Runs the binary with `env` set, failing the test if it has not exited after `limit`.
fn run_with_timeout(args: &[String], env: (&str, &str), limit: Duration) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env(env.0, env.1)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                e.read_to_string(&mut err).expect("stderr");
            }
            return (status.code().unwrap_or(-1), err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the run hung: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failing_rank_stops_the_run_with_its_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (prior, _) = setup(tmp.path());
    for (rank, step) in [(1, 2), (0, 4)] {
        let out = tmp.path().join(format!("fail-{rank}"));
        let args = train_args(&prior, &out, 6, "cpu,cpu");
        let (code, err) = run_with_timeout(
            &args,
            (FAIL_ENV, &format!("{rank}:{step}")),
            Duration::from_secs(60),
        );
        assert_eq!(code, 1, "{err}");
        let want = format!(
            "data-parallel training stopped: rank {rank} of 2 failed: task: failure injected \
             at step {step}"
        );
        assert!(err.contains(&want), "want `{want}` in:\n{err}");
    }
    // Nothing failed in the normal run: the hook is what stopped them.
    let ok = tmp.path().join("ok");
    unclip_ok(BIN, &strs(&train_args(&prior, &ok, 2, "cpu,cpu")));
}

#[test]
fn two_rank_resume_is_exact_and_another_device_count_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (prior, _) = setup(tmp.path());
    let args = |out: &Path| train_args(&prior, out, 6, "cpu,cpu");
    let (_, killed) = assert_kill_and_resume_identical(
        BIN,
        tmp.path(),
        &args,
        5,
        "step-3",
        "step-6",
        &["model.mpk", "ema.mpk", "state.json"],
    );
    let state = std::fs::read_to_string(killed.join("step-6/state.json")).expect("state");
    let state: serde_json::Value = serde_json::from_str(&state).expect("json");
    assert_eq!(state["world_size"], 2, "{state}");
    assert_eq!(
        state["rank_cursors"].as_array().map(Vec::len),
        Some(2),
        "{state}"
    );

    let mut one = train_args(&prior, &killed, 8, "cpu");
    one.extend(["--resume".into(), "auto".into()]);
    let out = unclip(BIN, &strs(&one));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("written by a run on 2 device(s), and this run has 1: resume with 2 devices"),
        "{err}"
    );
    assert!(!killed.join("step-8").exists());
}
