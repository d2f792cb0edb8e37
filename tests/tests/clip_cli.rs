//! `stage: clip` end to end through the binary: a run killed with SIGKILL between two
//! checkpoints and continued with `--resume auto` ends bit-identical to an uninterrupted run;
//! its export is a HF CLIP folder that `unclip embed` loads like a downloaded one.

use std::path::Path;

use serde_json::Value;
use unclip_tests::{assert_kill_and_resume_identical, synth_tiny, unclip_ok};

const BIN: &str = env!("CARGO_BIN_EXE_unclip-e2e");

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn clip_resumes_exactly_and_its_export_embeds() {
    let tmp = tempfile::tempdir().expect("tmp");
    let shapes = tmp.path().join("shapes");
    synth_tiny(BIN, &shapes);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/test/clip.yaml");
    let text = std::fs::read_to_string(repo)
        .expect("configs/test/clip.yaml")
        .replace("data/shapes-tiny/train", s(&shapes.join("train")))
        .replace("data/shapes-tiny/val", s(&shapes.join("val")));
    let config = tmp.path().join("clip.yaml");
    std::fs::write(&config, text).expect("write config");
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--config",
            s(&config),
            "--out",
            s(out),
            "--max-steps",
            "6",
            "--set",
            "checkpoint.every_steps=3",
            "--set",
            "validation.every_steps=3",
            "--set",
            "logging.every_steps=1",
            "--set",
            "logging.progress=false",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    };
    let (straight, _) = assert_kill_and_resume_identical(
        BIN,
        tmp.path(),
        &args,
        5,
        "step-3",
        "step-6",
        &["model.mpk", "ema.mpk", "state.json"],
    );
    let metrics = std::fs::read_to_string(straight.join("metrics.jsonl")).expect("metrics");
    let val: Value = serde_json::from_str(
        metrics
            .lines()
            .rfind(|l| l.contains("\"kind\":\"val\""))
            .expect("a val line"),
    )
    .expect("json");
    assert!(
        val["i2t_top1"].as_f64().is_some() && val["t2i_top5"].as_f64().is_some(),
        "{val}"
    );

    let clip = tmp.path().join("clip");
    unclip_ok(
        BIN,
        &["export", "--checkpoint", s(&straight), "--out", s(&clip)],
    );
    let store = tmp.path().join("emb");
    let report: Value = serde_json::from_str(
        unclip_ok(
            BIN,
            &[
                "embed",
                "--clip",
                s(&clip),
                "--shards",
                s(&shapes.join("val")),
                "--out",
                s(&store),
                "--text-encodings",
            ],
        )
        .lines()
        .last()
        .expect("report"),
    )
    .expect("json");
    assert_eq!(report["embedded_shards"], report["shards"], "{report}");
    assert!(report["samples"].as_u64().unwrap_or(0) > 0, "{report}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(store.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["clip"]["embed_dim"], 16, "{manifest}");
    assert_eq!(manifest["clip"]["text_width"], 16, "{manifest}");
}
