//! `stage: prior` end to end through the binary, on a tiny shapes world embedded by a
//! random-init CLIP: a run killed with SIGKILL between two checkpoints and continued with
//! `--resume auto` ends bit-identical to an uninterrupted run (dropout and caption drops on,
//! text encodings from the store); the export in diffusers' layout loads back; a store that
//! is missing is a clear error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::TensorData;
use serde_json::Value;
use unclip_tests::{
    assert_kill_and_resume_identical, embedded_tiny_world, tiny_world_config, unclip, unclip_ok,
};

const BIN: &str = env!("CARGO_BIN_EXE_unclip-e2e");

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Shards, a random CLIP, stores with text encodings; the test config with their paths.
fn setup(dir: &Path) -> PathBuf {
    embedded_tiny_world(BIN, dir);
    tiny_world_config(dir, "prior.yaml")
}

#[test]
fn prior_resumes_exactly_and_exports_both_layouts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = setup(tmp.path());
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
            "--set",
            "preview.every_steps=3",
            "--set",
            "preview.count=3",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    };
    let (straight, killed) = assert_kill_and_resume_identical(
        BIN,
        tmp.path(),
        &args,
        5,
        "step-3",
        "step-6",
        &["model.mpk", "ema.mpk", "state.json"],
    );
    // Previews: held-out image | nearest held-out image to the prior's sample, one row each;
    // the same after a resume.
    let png = |run: &Path| std::fs::read(run.join("samples/step-6.png")).expect("preview");
    let img = image::load_from_memory(&png(&straight)).expect("png");
    assert!(img.width() < img.height(), "two columns, three rows");
    assert_eq!(png(&straight), png(&killed));
    let metrics = std::fs::read_to_string(straight.join("metrics.jsonl")).expect("metrics");
    let val: Value = serde_json::from_str(
        metrics
            .lines()
            .rfind(|l| l.contains("\"kind\":\"val\""))
            .expect("a val line"),
    )
    .expect("json");
    for m in [
        "cos_pred",
        "cos_text_baseline",
        "cos_mean_baseline",
        "cos_shuffled",
        "retrieval_top1",
    ] {
        let x = val[m].as_f64().unwrap_or(f64::NAN);
        assert!((-1.0..=1.0).contains(&x), "{m} = {x} in {val}");
    }

    let native = tmp.path().join("native");
    unclip_ok(
        BIN,
        &["export", "--checkpoint", s(&straight), "--out", s(&native)],
    );
    assert!(native.join("model.safetensors").exists() && native.join("config.json").exists());

    let diffusers = tmp.path().join("diffusers");
    unclip_ok(
        BIN,
        &[
            "export",
            "--checkpoint",
            s(&straight),
            "--out",
            s(&diffusers),
            "--layout",
            "diffusers",
        ],
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(diffusers.join("config.json")).expect("config.json"))
            .expect("json");
    assert_eq!(config["_class_name"], "PriorTransformer", "{config}");
    assert_eq!(config["num_layers"], 1, "{config}");
    assert_eq!(config["embedding_dim"], 64, "{config}");
    let bytes = std::fs::read(diffusers.join("diffusion_pytorch_model.safetensors")).expect("st");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let tensors: BTreeMap<String, TensorData> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let values: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, TensorData::new(values, v.shape().to_vec()))
        })
        .collect();
    let model = unclip_models::prior_from_diffusers::<Flex>(&config, &tensors, &Default::default())
        .expect("the diffusers export imports");
    // The standardisation statistics travel with the weights.
    let std: Vec<f32> = model.clip_std.val().into_data().to_vec().expect("f32");
    assert!(
        std.iter().any(|&v| v != 1.0),
        "clip_std left at its default"
    );
}

#[test]
fn a_missing_embedding_store_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = setup(tmp.path());
    let out = unclip(
        BIN,
        &[
            "train",
            "--config",
            s(&config),
            "--out",
            s(&tmp.path().join("run")),
            "--set",
            &format!("data.embeddings={}", s(&tmp.path().join("missing"))),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data.embeddings"), "{err}");
    assert!(!tmp.path().join("run").exists());
}

/// `text_encodings: on_the_fly` computes with the frozen CLIP what the store holds (f16 there):
/// two runs that differ only in that setting draw the same drops and noise and see the same
/// first-step loss up to the store's rounding.
#[test]
fn on_the_fly_encodings_match_the_store() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = setup(tmp.path());
    let first_loss = |name: &str, extra: &[&str]| -> f64 {
        let out = tmp.path().join(name);
        let mut args = vec![
            "train",
            "--config",
            s(&config),
            "--out",
            s(&out),
            "--max-steps",
            "1",
            "--set",
            "validation.every_steps=0",
            "--set",
            "logging.every_steps=1",
            "--set",
            "logging.progress=false",
        ];
        args.extend_from_slice(extra);
        unclip_ok(BIN, &args);
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
        let line: Value =
            serde_json::from_str(metrics.lines().next().expect("a line")).expect("json");
        line["loss"].as_f64().expect("loss")
    };
    let store = first_loss("store", &[]);
    let clip = format!("model.clip={}", s(&tmp.path().join("clip")));
    let fly = first_loss(
        "fly",
        &["--set", "model.text_encodings=on_the_fly", "--set", &clip],
    );
    assert!(
        (store - fly).abs() <= 2e-2 * store.abs(),
        "store {store} vs on the fly {fly}"
    );
    // Without the CLIP it names the missing key.
    let out = unclip(
        BIN,
        &[
            "train",
            "--config",
            s(&config),
            "--out",
            s(&tmp.path().join("x")),
            "--set",
            "model.text_encodings=on_the_fly",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("model.clip"));
}

/// A fixed scale instead of per-dimension statistics (`sqrt_dim`: DALLE2-pytorch's √D; a
/// `{scale: s}` the paper's 17.2) is stored as clip_mean 0 / clip_std 1/s.
#[test]
fn fixed_scale_normalisations_are_stored_as_statistics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = setup(tmp.path());
    for (value, std) in [("sqrt_dim", 1.0 / 8.0), ("{scale: 17.2}", 1.0 / 17.2)] {
        let run = tmp.path().join(format!("run-{std}"));
        let set = format!("model.image_embed_norm={value}");
        unclip_ok(
            BIN,
            &[
                "train",
                "--config",
                s(&config),
                "--out",
                s(&run),
                "--max-steps",
                "1",
                "--set",
                &set,
                "--set",
                "validation.every_steps=0",
                "--set",
                "logging.progress=false",
            ],
        );
        let out = tmp.path().join(format!("export-{std}"));
        unclip_ok(
            BIN,
            &[
                "export",
                "--checkpoint",
                s(&run),
                "--out",
                s(&out),
                "--layout",
                "diffusers",
            ],
        );
        let bytes = std::fs::read(out.join("diffusion_pytorch_model.safetensors")).expect("st");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let values = |name: &str| -> Vec<f32> {
            st.tensor(name)
                .expect(name)
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        assert!(values("clip_mean").iter().all(|&v| v == 0.0), "{value}");
        assert!(
            values("clip_std")
                .iter()
                .all(|&v| (v as f64 - std).abs() < 1e-6),
            "{value}: {:?}",
            &values("clip_std")[..4]
        );
    }
}
