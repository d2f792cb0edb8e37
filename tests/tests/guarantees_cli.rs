//! What unclip promises about the folders it writes (docs/guarantees.md), through the binary:
//! one writer per folder, no run replaced by accident, checkpoints verified before loading,
//! interrupted runs told apart from finished ones by their exit code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use unclip_tests::{synth_tiny, unclip, unclip_ok};

const BIN: &str = env!("CARGO_BIN_EXE_unclip-e2e");

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Tiny shapes-world shards and `configs/test/{name}` pointing at them.
fn setup(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let shapes = dir.join("shapes");
    synth_tiny(BIN, &shapes);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/test");
    names
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(repo.join(name))
                .expect("test config")
                .replace("data/shapes-tiny/train", s(&shapes.join("train")))
                .replace("data/shapes-tiny/val", s(&shapes.join("val")));
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write config");
            p
        })
        .collect()
}

fn train_args<'a>(config: &'a Path, out: &'a Path, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--config",
        s(config),
        "--out",
        s(out),
        "--max-steps",
        steps,
        "--set",
        "checkpoint.every_steps=3",
        "--set",
        "logging.every_steps=1",
        "--set",
        "logging.progress=false",
        "--set",
        "preview.every_steps=0",
    ]
}

/// A training child parked by the test hook once it reached `step` (its metrics show it).
fn parked_trainer(config: &Path, out: &Path, step: u64) -> Child {
    let mut child = Command::new(BIN)
        .args(train_args(config, out, "9"))
        .env("NO_COLOR", "1")
        .env("UNCLIP_TRAIN_TEST_HANG_AT_STEP", step.to_string())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let marker = format!("\"step\":{step},");
    while !std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .contains(&marker)
    {
        assert!(start.elapsed() < Duration::from_secs(300), "never reached");
        assert!(child.try_wait().expect("wait").is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_second_writer_is_refused_while_the_first_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = &setup(dir.path(), &["denoise.yaml"])[0];
    let run = dir.path().join("run");
    let mut first = parked_trainer(cfg, &run, 2);
    let pid = first.id();
    for extra in [&[][..], &["--resume", "auto"][..], &["--overwrite"][..]] {
        let mut args = train_args(cfg, &run, "6");
        args.extend_from_slice(extra);
        let second = unclip(BIN, &args);
        assert!(!second.status.success(), "{extra:?}");
        let err = stderr(&second);
        assert!(err.contains("in use by another unclip process"), "{err}");
        assert!(err.contains(&format!("pid {pid}")), "{err}");
        assert!(err.contains("unclip train"), "{err}");
    }
    // The lock dies with its holder, whatever kills it.
    first.kill().unwrap();
    first.wait().unwrap();
    let mut args = train_args(cfg, &run, "6");
    args.extend_from_slice(&["--resume", "auto"]);
    unclip_ok(BIN, &args);

    // Embedding stores, pack/synth outputs and pipeline folders take the same lock.
    let store = dir.path().join("store");
    let held = hold_lock(&store);
    let shards = s(&dir.path().join("shapes/train")).to_owned();
    let clip = dir.path().join("clip");
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/clip/tiny.json");
    unclip_ok(
        BIN,
        &[
            "clip",
            "init",
            "--config",
            s(&tiny),
            "--seed",
            "0",
            "--out",
            s(&clip),
        ],
    );
    for args in [
        &["data", "synth", "--out", s(&store), "--count", "8"][..],
        &[
            "embed",
            "--clip",
            s(&clip),
            "--shards",
            &shards,
            "--out",
            s(&store),
        ][..],
    ] {
        let out = unclip(BIN, args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("in use by another unclip process"),
            "{args:?}: {err}"
        );
        assert!(err.contains("the test's holder"), "{err}");
    }
    drop(held);
}

/// Takes `dir`'s folder lock the way unclip does (an exclusive `flock`/`LockFileEx` on
/// `.unclip-lock`), naming a holder.
fn hold_lock(dir: &Path) -> std::fs::File {
    std::fs::create_dir_all(dir).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(".unclip-lock"))
        .unwrap();
    f.try_lock().unwrap();
    std::fs::write(dir.join(".unclip-lock"), "the test's holder\n").unwrap();
    f
}

fn metrics_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .filter_map(|v| v["step"].as_u64())
        .collect()
}

#[test]
fn a_run_is_continued_or_replaced_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = &setup(dir.path(), &["denoise.yaml"])[0];
    let run = dir.path().join("run");
    unclip_ok(BIN, &train_args(cfg, &run, "6"));
    std::fs::write(run.join("notes.txt"), "mine").unwrap();

    // Without the `latest` pointer the checkpoints still count.
    std::fs::remove_file(run.join("latest")).unwrap();
    let out = unclip(BIN, &train_args(cfg, &run, "9"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already has checkpoints"),
        "{}",
        stderr(&out)
    );
    assert!(
        run.join("step-6/state.json").is_file(),
        "a refused run removed a checkpoint"
    );

    // --resume auto continues from the newest complete checkpoint, keeping the metrics.
    let mut args = train_args(cfg, &run, "9");
    args.extend_from_slice(&["--resume", "auto"]);
    let summary: serde_json::Value =
        serde_json::from_str(unclip_ok(BIN, &args).lines().last().unwrap()).unwrap();
    assert_eq!(summary["step"], 9);
    assert_eq!(metrics_steps(&run), (1..=9).collect::<Vec<_>>());

    // A `latest` that names something outside the run is an error, not followed.
    std::fs::write(run.join("latest"), "../elsewhere\n").unwrap();
    let out = unclip(BIN, &args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a complete checkpoint folder"),
        "{}",
        stderr(&out)
    );
    std::fs::write(run.join("latest"), "step-9\n").unwrap();

    // export takes the `latest` file itself, as users name it.
    let exported = dir.path().join("export");
    unclip_ok(
        BIN,
        &[
            "export",
            "--checkpoint",
            s(&run.join("latest")),
            "--out",
            s(&exported),
        ],
    );
    assert!(exported.join("model.safetensors").is_file());

    // --overwrite replaces the run: its checkpoints and metrics go, other files stay.
    let mut args = train_args(cfg, &run, "3");
    args.push("--overwrite");
    unclip_ok(BIN, &args);
    assert_eq!(
        std::fs::read_to_string(run.join("latest")).unwrap().trim(),
        "step-3"
    );
    assert!(!run.join("step-9").exists() && !run.join("step-6").exists());
    assert_eq!(metrics_steps(&run), vec![1, 2, 3]);
    assert_eq!(
        std::fs::read_to_string(run.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn checkpoints_are_verified_before_anything_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let cfgs = setup(dir.path(), &["denoise.yaml", "clip.yaml"]);
    let run = dir.path().join("run");
    unclip_ok(BIN, &train_args(&cfgs[0], &run, "3"));
    let sums: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("step-3/checksums.json")).unwrap()).unwrap();
    for f in [
        "model.mpk",
        "optim.mpk",
        "state.json",
        "config.resolved.yaml",
    ] {
        assert!(sums["files"][f].is_string(), "{f} has no checksum: {sums}");
    }
    assert!(sums["shapes"]["model"]
        .as_object()
        .is_some_and(|m| !m.is_empty()));

    // Another stage's config: named as such, not as an unknown key.
    let other = dir.path().join("other");
    let mut args = train_args(&cfgs[1], &other, "6");
    let from = run.join("step-3");
    args.extend_from_slice(&["--resume", s(&from)]);
    let out = unclip(BIN, &args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is a checkpoint of stage"),
        "{}",
        stderr(&out)
    );

    // One flipped bit in the weights: named, with the file, before loading.
    let model = run.join("step-3/model.mpk");
    let mut bytes = std::fs::read(&model).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&model, bytes).unwrap();
    let mut args = train_args(&cfgs[0], &run, "6");
    args.extend_from_slice(&["--resume", "auto"]);
    for out in [
        unclip(BIN, &args),
        unclip(
            BIN,
            &[
                "export",
                "--checkpoint",
                s(&run),
                "--out",
                s(&dir.path().join("e")),
            ],
        ),
    ] {
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("SHA-256") && err.contains("model.mpk"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[cfg(unix)]
#[test]
fn an_interrupted_run_saves_and_exits_with_128_plus_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = &setup(dir.path(), &["denoise.yaml"])[0];
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let run = dir.path().join(format!("run-{signal}"));
        let child = parked_trainer(cfg, &run, 2);
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert!(stderr(&out).contains("--resume auto"), "{}", stderr(&out));
        // Its checkpoint of the step it stopped at is there, and `latest` names it.
        assert_eq!(
            std::fs::read_to_string(run.join("latest")).unwrap().trim(),
            "step-2"
        );
        let summary: serde_json::Value = serde_json::from_slice(
            out.stdout
                .split(|&b| b == b'\n')
                .find(|l| l.starts_with(b"{"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(summary["interrupted"], true);
    }
}

#[test]
fn values_that_size_allocations_are_bounded_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("big.yaml");
    let data = "stage: denoise\ndata:\n  batch_size: 2\n";
    // (what is added to the config, the line the error names, what it says)
    for (extra, line, want) in [
        (
            "  shuffle_buffer: 1000000000000\n",
            4,
            "data.shuffle_buffer: must be at most 16777216",
        ),
        (
            "  prefetch_batches: 1000000000000\n",
            4,
            "data.prefetch_batches: must be in [1, 4096]",
        ),
        (
            "  workers: 100000\n",
            4,
            "data.workers: must be in [1, 4096]",
        ),
        (
            "diffusion:\n  timesteps: 4000000000\n",
            5,
            "`timesteps` must be in [2, 100000]",
        ),
    ] {
        std::fs::write(&config, format!("{data}{extra}")).unwrap();
        let run = dir.path().join("run");
        let out = unclip(BIN, &["train", "--config", s(&config), "--out", s(&run)]);
        assert_eq!(out.status.code(), Some(1), "{extra}");
        let err = stderr(&out);
        let at = format!("{}:{line}:", config.display());
        assert!(err.contains(&at), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("memory allocation"),
            "{err}"
        );
        assert!(!run.exists());
    }
}

/// Several writers racing on one folder, repeated: each round ends with exactly one complete
/// output (what one writer wrote), never a mix, and every refused writer says why.
#[test]
fn racing_writers_never_leave_a_mixed_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("race");
    for round in 0..5 {
        let children: Vec<Child> = (0..4)
            .map(|w| {
                Command::new(BIN)
                    .args([
                        "data",
                        "synth",
                        "--out",
                        s(&out),
                        "--count",
                        "48",
                        "--size",
                        "16",
                        "--samples-per-shard",
                        "8",
                        "--seed",
                        &(round * 4 + w).to_string(),
                        "--threads",
                        "1",
                        "--overwrite",
                    ])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut ok = 0;
        for c in children {
            let o = c.wait_with_output().unwrap();
            if o.status.success() {
                ok += 1;
            } else {
                assert!(
                    stderr(&o).contains("in use by another unclip process"),
                    "{}",
                    stderr(&o)
                );
            }
        }
        assert!(ok >= 1, "round {round}: every writer was refused");
        // The train split is one writer's whole output: the files it recorded, all present,
        // nothing else, and every sample readable.
        let train = out.join("train");
        let listed: std::collections::BTreeSet<String> =
            std::fs::read_to_string(train.join(".unclip-written"))
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect();
        let present: std::collections::BTreeSet<String> = std::fs::read_dir(&train)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tar") || n.ends_with("_stats.json"))
            .collect();
        assert_eq!(listed, present, "round {round}");
        let report: serde_json::Value =
            serde_json::from_str(&unclip_ok(BIN, &["data", "inspect", s(&train), "--json"]))
                .unwrap();
        let bad = report["bad"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum::<u64>());
        assert_eq!(bad, 0, "round {round}: {report}");
        assert!(
            report["samples"].as_u64().unwrap_or(0) > 0,
            "round {round}: {report}"
        );
    }
}

#[test]
fn sample_refuses_more_images_than_it_can_hold_before_loading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = unclip(
        BIN,
        &[
            "sample",
            "--pipeline",
            s(&dir.path().join("no-pipeline")),
            "--prompt",
            "a red cube",
            "-n",
            "100000",
            "--out",
            s(&dir.path().join("grid.png")),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("one call makes at most 256"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
}
