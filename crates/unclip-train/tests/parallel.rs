//! Data-parallel runs through the library (`launch::train` with `devices: [cpu, cpu]`): a stop
//! request (SIGINT/SIGTERM's flag) raised while two ranks train stops both after the same step,
//! and rank 0 saves that step; the run then resumes on two devices to the end.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use unclip_train::launch::{self, TrainOptions};
use unclip_train::Resume;

#[test]
fn a_stop_request_stops_every_rank_after_the_same_step() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (train, val) = shards(tmp.path());
    let config = tmp.path().join("run.yaml");
    std::fs::write(&config, config_text(&train, &val, "")).expect("write config");
    let out = tmp.path().join("run");
    let opts = |max_steps: u64, resume: Resume| TrainOptions {
        config: config.clone(),
        overrides: vec![
            "devices=[cpu, cpu]".into(),
            "checkpoint.every_steps=1000".into(),
        ],
        out: Some(out.clone()),
        max_steps: Some(max_steps),
        resume,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let summary = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let start = Instant::now();
            while !std::fs::read_to_string(out.join("metrics.jsonl"))
                .unwrap_or_default()
                .contains("\"step\":2,")
            {
                if start.elapsed() > Duration::from_secs(120) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            stop.store(true, Ordering::SeqCst);
        });
        let r = launch::train(&opts(10_000, Resume::No), Arc::clone(&stop));
        stop.store(true, Ordering::SeqCst);
        watcher.join().expect("watcher");
        r
    })
    .expect("the interrupted run");
    assert!(summary.interrupted);
    assert!(summary.step >= 2 && summary.step < 10_000, "{summary:?}");
    let dir = out.join(format!("step-{}", summary.step));
    assert_eq!(summary.last_checkpoint.as_deref(), Some(dir.as_path()));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).expect("state"))
            .expect("json");
    assert_eq!(state["world_size"], 2);
    assert_eq!(state["rank_cursors"].as_array().map(Vec::len), Some(2));

    // Both ranks resume from it and train to the end.
    let end = summary.step + 2;
    let resumed = launch::train(&opts(end, Resume::Auto), Arc::new(AtomicBool::new(false)))
        .expect("resumed run");
    assert_eq!(resumed.step, end);
    assert!(!resumed.interrupted);
}
