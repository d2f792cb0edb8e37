//! Config errors name the key path and the file line (no panic), and docs/config.md lists
//! every key with its true default.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use unclip_train::launch::{self, TrainOptions};
use unclip_train::tasks::denoise::DenoiseModelConfig;
use unclip_train::RunConfig;

/// (YAML, line of the offending key or value, key path, part of the message).
const INVALID: &[(&str, usize, &str, &str)] = &[
    (
        "stage: denoise\ndata:\n  batch_size: 2\noptimizer:\n  lr: 1\n",
        4,
        "optimizer",
        "unknown field",
    ),
    (
        "stage: prior2\ndata:\n  batch_size: 2\n",
        1,
        "stage",
        "unknown variant",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\noptim:\n  lr: -0.001\n",
        5,
        "optim.lr",
        "must be a finite number > 0",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\noptim:\n  lr: fast\n",
        5,
        "optim.lr",
        "invalid type",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\noptim:\n  beta2: 1.5\n",
        5,
        "optim.beta2",
        "must be in [0, 1)",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\noptim:\n  accumulation_steps: 0\n",
        5,
        "optim.accumulation_steps",
        "at least 1",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\noptim:\n  lr_schedule:\n    decay: linear\n",
        6,
        "optim.lr_schedule.decay",
        "unknown variant",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\noptim:\n  lr_schedule:\n    warmup: 10\n",
        6,
        "optim.lr_schedule.warmup",
        "unknown field",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\nema:\n  decay: 1.0\n",
        5,
        "ema.decay",
        "must be in [0, 1)",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\nema:\n  update_every: 0\n",
        5,
        "ema.update_every",
        "at least 1",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\ncheckpoint:\n  every_steps: 0\n",
        5,
        "checkpoint.every_steps",
        "at least 1",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\ncheckpoint:\n  keep_last: -2\n",
        5,
        "checkpoint.keep_last",
        "",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 0\n",
        3,
        "data.batch_size",
        "at least 1",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\n  source: s3\n",
        4,
        "data.source",
        "unknown variant",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\n  hflip_prob: 2\n",
        4,
        "data.hflip_prob",
        "must be in [0, 1)",
    ),
    (
        "stage: denoise\nmodel:\n  channels: 0\ndata:\n  batch_size: 2\n",
        3,
        "model.channels",
        "at least 1",
    ),
    (
        "stage: denoise\nmodel:\n  dropout: 1.0\ndata:\n  batch_size: 2\n",
        3,
        "model.dropout",
        "must be in [0, 1)",
    ),
    (
        "stage: denoise\nmodel:\n  depth: 3\ndata:\n  batch_size: 2\n",
        3,
        "model.depth",
        "unknown field",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\nvalidation:\n  every_steps: often\n",
        5,
        "validation.every_steps",
        "invalid type",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\nlogging:\n  progress: maybe\n",
        5,
        "logging.progress",
        "invalid type",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\ndevices: cpu\n",
        4,
        "devices",
        "invalid type",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\ndiffusion:\n  schedule: quadratic\n",
        5,
        "diffusion.schedule",
        "unknown variant",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\npreview:\n  count: 0\n",
        5,
        "preview.count",
        "at least 1",
    ),
    (
        "stage: denoise\ndata:\n  batch_size: 2\noptim:\n  grad_clip_norm: 0\n",
        5,
        "optim.grad_clip_norm",
        "must be a finite number > 0",
    ),
];

#[test]
fn invalid_configs_name_key_path_and_line() {
    assert!(INVALID.len() >= 15);
    let tmp = tempfile::tempdir().expect("tmp");
    let p = tmp.path().join("run.yaml");
    for (yaml, line, path, what) in INVALID {
        std::fs::write(&p, yaml).expect("write");
        let opts = TrainOptions {
            config: p.clone(),
            out: Some(tmp.path().join("out")),
            ..Default::default()
        };
        let e = launch::train(&opts, Arc::new(AtomicBool::new(false)))
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{yaml}"))
            .to_string();
        let loc = format!("{}:{line}:", p.display());
        assert!(e.starts_with(&loc), "want {loc} in `{e}` for\n{yaml}");
        assert!(
            e.contains(&format!(": {path}: ")),
            "want key path {path} in `{e}`"
        );
        assert!(e.contains(what), "want `{what}` in `{e}`");
        assert!(
            !tmp.path().join("out").exists(),
            "nothing is written for a bad config"
        );
    }
}

#[test]
fn semantic_errors_name_the_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = tmp.path().join("run.yaml");
    for (yaml, want) in [
        (
            "stage: denoise\ndata:\n  batch_size: 2\n",
            "data.shards: required with `data.source: shards`",
        ),
        (
            "stage: denoise\nmodel:\n  channels: 6\ndata:\n  batch_size: 2\n",
            "model.channels: must be a multiple of 4, got 6",
        ),
        (
            "stage: denoise\ndata:\n  batch_size: 3\ndevices: [cpu, cpu]\n",
            "data.batch_size: 3 is the global micro-batch and must split evenly over the 2 devices",
        ),
        (
            "stage: denoise\ndata:\n  batch_size: 2\ndevices: [cpu, cuda:0]\n",
            "devices: [\"cpu\", \"cuda:0\"]: every device of a run must be of one kind",
        ),
        (
            "stage: denoise\ndata:\n  batch_size: 2\ndevices: []\n",
            "devices: list at least one device",
        ),
        (
            "stage: denoise\ndata:\n  batch_size: 2\nprecision: bf16\n",
            "precision: bf16: the CPU backend trains in f32 only",
        ),
        (
            "stage: denoise\ndata:\n  batch_size: 2\ndevices: [cuda:0, cuda:1]\nprecision: bf16\n",
            "precision: bf16: not supported in this build: burn 0.21 has no mixed precision",
        ),
        (
            "stage: denoise\ndata:\n  batch_size: 2\nprecision: f16\n",
            "precision",
        ),
        (
            "stage: denoise\ndata:\n  batch_size: 2\ndevices: [tpu:0]\n",
            "devices: unknown device `tpu:0`",
        ),
        (
            "stage: denoise\ndata:\n  batch_size: 2\ndiffusion:\n  loss: hybrid\n",
            "diffusion",
        ),
    ] {
        std::fs::write(&p, yaml).expect("write");
        let opts = TrainOptions {
            config: p.clone(),
            out: Some(tmp.path().join("out")),
            ..Default::default()
        };
        let e = launch::train(&opts, Arc::new(AtomicBool::new(false)))
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{yaml}"))
            .to_string();
        assert!(e.contains(want), "want `{want}` in `{e}`");
    }
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() && prefix != "diffusion.sampling.clip_x0" => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn docs_list_every_key_with_its_default() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md"))
            .expect("docs/config.md");
    let start = doc
        .find("## All keys with their defaults")
        .expect("section");
    let block = &doc[start..];
    let block = &block[block.find("```yaml\n").expect("yaml block") + 8..];
    let block = &block[..block.find("```").expect("block end")];

    let documented =
        unclip_config::from_str::<RunConfig<DenoiseModelConfig>>(block, "docs/config.md", &[])
            .expect("the documented defaults load")
            .value;
    let minimal = unclip_config::from_str::<RunConfig<DenoiseModelConfig>>(
        "stage: denoise\ndata:\n  batch_size: 8\n",
        "minimal.yaml",
        &[],
    )
    .expect("minimal config")
    .value;
    assert_eq!(
        documented, minimal,
        "docs/config.md's values are not the defaults"
    );

    let raw = unclip_config::from_str::<serde_json::Value>(block, "docs/config.md", &[])
        .expect("raw")
        .value;
    let (mut in_doc, mut in_code) = (BTreeSet::new(), BTreeSet::new());
    flatten("", &raw, &mut in_doc);
    flatten(
        "",
        &serde_json::to_value(&minimal).expect("json"),
        &mut in_code,
    );
    assert_eq!(
        in_doc, in_code,
        "docs/config.md and the config structs list different keys"
    );
}

/// Every shipped run config (configs/{demo,bench,paper,test}) parses as its stage's type.
#[test]
fn shipped_configs_load() {
    use unclip_stages::prior::PriorModelConfig;
    use unclip_train::tasks::clip::ClipModelConfig;
    use unclip_train::Stage;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut checked = 0;
    for dir in ["demo", "bench", "paper", "test"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("entry").path();
            if path.extension().and_then(|x| x.to_str()) != Some("yaml") {
                continue;
            }
            let stage = launch::stage_of(&path, &[]).expect("stage");
            let ok = match stage {
                Stage::Denoise => launch::load::<DenoiseModelConfig>(&path, &[], None).map(|_| ()),
                Stage::Clip => launch::load::<ClipModelConfig>(&path, &[], None).map(|_| ()),
                Stage::Prior => launch::load::<PriorModelConfig>(&path, &[], None).map(|_| ()),
                Stage::Decoder => {
                    use unclip_stages::decoder::DecoderModelConfig;
                    launch::load::<DecoderModelConfig>(&path, &[], None).map(|_| ())
                }
                Stage::Upsampler => {
                    use unclip_stages::upsampler::UpsamplerModelConfig;
                    launch::load::<UpsamplerModelConfig>(&path, &[], None).map(|_| ())
                }
            };
            if let Err(e) = ok {
                panic!("{}: {e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} configs found");
}
