//! Exact resume: a run killed with SIGKILL between two checkpoints and resumed with
//! `Resume::Auto` ends with bit-identical weights, EMA, optimizer state and trainer state
//! to an uninterrupted run — with real shards, 2 workers, a shuffle buffer, random crops and
//! flips, dropout, EMA, accumulation and clipping all on.

mod common;

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use unclip_train::Resume;

const CHILD_ENV: &str = "UNCLIP_TRAIN_TEST_CHILD_DIR";

/// In the child process (re-executed test binary): train the run in `$CHILD_ENV` until the
/// hang hook stops it at step 5, where the parent kills it.
#[test]
fn child_trains_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // only meaningful as the parent's child
    };
    let dir = std::path::PathBuf::from(dir);
    let text = std::fs::read_to_string(dir.join("run.yaml")).expect("config");
    let loaded = load(&dir, &text, &[]);
    let mut t = trainer(loaded, &dir.join("killed"), Resume::Auto).expect("trainer");
    let _ = t.run(&Arc::new(AtomicBool::new(false)));
}

#[test]
fn sigkill_between_checkpoints_then_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (train, val) = shards(tmp.path());
    let text = config_text(&train, &val, "");
    let stop = Arc::new(AtomicBool::new(false));

    // Uninterrupted: 6 steps, checkpoints at 3 and 6.
    let loaded = load(tmp.path(), &text, &[]);
    let straight = tmp.path().join("straight");
    let s = trainer(loaded, &straight, Resume::No)
        .expect("trainer")
        .run(&stop)
        .expect("run");
    assert_eq!(s.step, 6);

    // Interrupted: a child process trains, the hook parks it at step 5 (after the step-3
    // checkpoint, before step 6); we SIGKILL it there.
    let killed = tmp.path().join("killed");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child_trains_until_killed", "--nocapture"])
        .env(CHILD_ENV, tmp.path())
        .env(unclip_train::HANG_ENV, "5")
        .spawn()
        .expect("spawn child");
    let metrics = killed.join("metrics.jsonl");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        if text.contains("\"step\":5,") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "child never reached step 5"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "child exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    child.wait().expect("reap");
    assert_eq!(
        std::fs::read_to_string(killed.join("latest"))
            .expect("latest")
            .trim(),
        "step-3"
    );
    assert!(!killed.join("step-6").exists());

    // Resume the killed run to step 6.
    let loaded = load(tmp.path(), &text, &[]);
    let mut t = trainer(loaded, &killed, Resume::Auto).expect("resume");
    assert_eq!(t.state().step, 3);
    let s = t.run(&stop).expect("resumed run");
    assert_eq!(s.step, 6);
    assert_same_checkpoint(&straight.join("step-6"), &killed.join("step-6"));

    // The metrics of the killed steps 4-5 were dropped and rewritten once.
    let lines = std::fs::read_to_string(killed.join("metrics.jsonl")).expect("metrics");
    let train_lines = lines
        .lines()
        .filter(|l| l.contains("\"kind\":\"train\""))
        .count();
    assert_eq!(train_lines, 6, "{lines}");
    assert!(killed.join("loss.png").exists());
}

#[test]
fn resume_under_an_incompatible_config_lists_the_differences() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (train, val) = shards(tmp.path());
    let text = config_text(&train, &val, "");
    let run = tmp.path().join("run");
    let loaded = load(tmp.path(), &text, &["optim.max_steps=3".into()]);
    trainer(loaded, &run, Resume::No)
        .expect("trainer")
        .run(&Arc::new(AtomicBool::new(false)))
        .expect("run");

    // Allowed: a longer run, other checkpoint cadence.
    let ok = load(
        tmp.path(),
        &text,
        &["optim.max_steps=4".into(), "checkpoint.keep_last=5".into()],
    );
    assert_eq!(
        trainer(ok, &run, Resume::Auto)
            .expect("compatible")
            .state()
            .step,
        3
    );

    let bad = load(
        tmp.path(),
        &text,
        &["optim.lr=0.01".into(), "model.channels=12".into()],
    );
    let e = trainer(bad, &run, Resume::Auto)
        .err()
        .expect("must refuse")
        .to_string();
    assert!(
        e.contains("the config differs from the checkpoint's"),
        "{e}"
    );
    assert!(
        e.contains("optim.lr: 0.002 (checkpoint) ≠ 0.01 (now)"),
        "{e}"
    );
    assert!(
        e.contains("model.channels: 8 (checkpoint) ≠ 12 (now)"),
        "{e}"
    );

    // A fresh start into a folder with checkpoints is refused too.
    let again = load(tmp.path(), &text, &[]);
    let e = trainer(again, &run, Resume::No)
        .err()
        .expect("refuse")
        .to_string();
    assert!(e.contains("--resume auto"), "{e}");
}

#[test]
fn a_stop_request_saves_the_current_step_and_returns() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (train, val) = shards(tmp.path());
    let loaded = load(tmp.path(), &config_text(&train, &val, ""), &[]);
    let run = tmp.path().join("run");
    let mut t = trainer(loaded, &run, Resume::No).expect("trainer");
    t.train_step().expect("step 1");
    // What SIGINT/SIGTERM do through `launch::stop_on_signals`.
    let s = t
        .run(&Arc::new(AtomicBool::new(true)))
        .expect("stops cleanly");
    assert!(s.interrupted);
    assert_eq!(s.step, 1);
    assert_eq!(
        std::fs::read_to_string(run.join("latest"))
            .expect("latest")
            .trim(),
        "step-1"
    );
    assert!(run.join("step-1/optim.mpk").exists());
}
