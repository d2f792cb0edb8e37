//! `unclip train`, `unclip export` and `unclip bench train` end to end through the real
//! binary: a run killed with SIGKILL between two checkpoints and continued with
//! `--resume auto` ends bit-identical to an uninterrupted run; exports are deterministic;
//! a bad config fails with its file, line and key path.

use std::path::Path;

use serde_json::Value;
use unclip_tests::{assert_kill_and_resume_identical, synth_tiny, unclip, unclip_ok};

const BIN: &str = env!("CARGO_BIN_EXE_unclip-e2e");

fn json(s: &str) -> Value {
    serde_json::from_str(s.lines().last().expect("a JSON line")).expect("valid JSON")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Tiny shapes-world shards and a run config with workers, shuffle buffer, crops, flips,
/// dropout, EMA, accumulation and validation on.
fn setup(dir: &Path) -> std::path::PathBuf {
    let shapes = dir.join("shapes");
    synth_tiny(BIN, &shapes);
    let config = dir.join("run.yaml");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/test/denoise.yaml");
    let text = std::fs::read_to_string(repo).expect("configs/test/denoise.yaml");
    let text = text
        .replace("data/shapes-tiny/train", s(&shapes.join("train")))
        .replace("data/shapes-tiny/val", s(&shapes.join("val")));
    std::fs::write(&config, text).expect("write config");
    config
}

const FAST: &[&str] = &[
    "--set",
    "checkpoint.every_steps=3",
    "--set",
    "validation.every_steps=3",
    "--set",
    "preview.every_steps=3",
    "--set",
    "logging.every_steps=1",
    "--set",
    "logging.progress=false",
];

fn train_args<'a>(config: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        "--config",
        config,
        "--out",
        out,
        "--max-steps",
        "6",
    ];
    v.extend_from_slice(FAST);
    v.extend_from_slice(extra);
    v
}

#[test]
fn kill_9_then_resume_auto_matches_an_uninterrupted_run_and_exports() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = setup(tmp.path());
    let args = |out: &Path| -> Vec<String> {
        train_args(s(&config), s(out), &[])
            .into_iter()
            .map(String::from)
            .collect()
    };
    // model and EMA records and the trainer state (step, loader cursor, counters) are
    // byte-identical; the optimizer record (a hash map, written in per-process order) is
    // compared decoded by unclip-train's own resume test.
    let (straight, killed) = assert_kill_and_resume_identical(
        BIN,
        tmp.path(),
        &args,
        5,
        "step-3",
        "step-6",
        &["model.mpk", "ema.mpk", "state.json"],
    );
    // The metrics of the killed steps 4-5 were dropped and written once more.
    let lines = std::fs::read_to_string(killed.join("metrics.jsonl")).expect("metrics");
    let train_lines = lines
        .lines()
        .filter(|l| l.contains("\"kind\":\"train\""))
        .count();
    assert_eq!(train_lines, 6, "{lines}");
    assert!(killed.join("loss.png").exists() && killed.join("samples/step-6.png").exists());

    let (a, b) = (tmp.path().join("export-a"), tmp.path().join("export-b"));
    unclip_ok(
        BIN,
        &[
            "export",
            "--checkpoint",
            s(&straight),
            "--out",
            s(&a),
            "--dtype",
            "f16",
        ],
    );
    // The run folder resolves to its `latest`; the same checkpoint exports the same bytes.
    unclip_ok(
        BIN,
        &[
            "export",
            "--checkpoint",
            s(&straight.join("step-6")),
            "--out",
            s(&b),
            "--dtype",
            "f16",
        ],
    );
    for f in ["model.safetensors", "config.json"] {
        let same = std::fs::read(a.join(f)).expect("a") == std::fs::read(b.join(f)).expect("b");
        assert!(same, "{f} differs between two exports of one checkpoint");
    }
    let meta: Value =
        serde_json::from_slice(&std::fs::read(a.join("config.json")).expect("c")).expect("json");
    assert_eq!(
        (
            meta["dtype"].as_str(),
            meta["weights"].as_str(),
            meta["step"].as_u64()
        ),
        (Some("f16"), Some("ema"), Some(6))
    );
}

#[test]
fn bad_config_names_file_line_and_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("bad.yaml");
    std::fs::write(
        &config,
        "stage: denoise\ndata:\n  batch_size: 2\noptim:\n  lr: -1\n",
    )
    .expect("w");
    let out = unclip(
        BIN,
        &[
            "train",
            "--config",
            s(&config),
            "--out",
            s(&tmp.path().join("run")),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5:", config.display())), "{err}");
    assert!(
        err.contains("optim.lr: must be a finite number > 0, got -1"),
        "{err}"
    );
    assert!(!tmp.path().join("run").exists());
}

#[test]
fn bench_train_prints_one_json_line() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/bench/denoise.yaml");
    let r = json(&unclip_ok(
        BIN,
        &[
            "bench",
            "train",
            "--config",
            s(&repo),
            "--steps",
            "2",
            "--warmup",
            "1",
            "--set",
            "data.batch_size=2",
            "--set",
            "data.image_size=16",
            "--set",
            "model.channels=8",
        ],
    ));
    assert_eq!(r["bench"], "train");
    assert!(r["s_per_step"].as_f64().expect("s_per_step") > 0.0, "{r}");
    assert!(
        r["samples_per_s"].as_f64().expect("samples_per_s") > 0.0,
        "{r}"
    );
    assert!(r["params"].as_u64().expect("params") > 0, "{r}");
}
