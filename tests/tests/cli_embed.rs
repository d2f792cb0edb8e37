//! `unclip clip init` and `unclip embed` end to end, through the real binary.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use std::path::Path;
use std::process::Command;
use unclip_tests::{unclip, unclip_ok};

const BIN: &str = env!("CARGO_BIN_EXE_unclip-e2e");

fn tiny_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/clip/tiny.json")
        .to_string_lossy()
        .into_owned()
}

fn synth(dir: &Path, count: &str, per_shard: &str) -> String {
    let out = dir.join("shapes");
    unclip_ok(
        BIN,
        &[
            "data",
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--count",
            count,
            "--size",
            "32",
            "--samples-per-shard",
            per_shard,
            "--val-fraction",
            "0",
        ],
    );
    out.join("train").to_string_lossy().into_owned()
}

fn clip_init(dir: &Path, seed: &str) -> String {
    let out = dir.join(format!("clip-{seed}"));
    unclip_ok(
        BIN,
        &[
            "clip",
            "init",
            "--config",
            &tiny_config(),
            "--seed",
            seed,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    out.to_string_lossy().into_owned()
}

#[test]
fn clip_init_is_seeded_and_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let a = clip_init(dir.path(), "1");
    let b = dir.path().join("again");
    unclip_ok(
        BIN,
        &[
            "clip",
            "init",
            "--config",
            &tiny_config(),
            "--seed",
            "1",
            "--out",
            b.to_str().unwrap(),
        ],
    );
    let c = clip_init(dir.path(), "2");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        let read = |d: &Path| std::fs::read(d.join(f)).unwrap();
        assert_eq!(read(Path::new(&a)), read(&b), "{f}");
    }
    assert_ne!(
        std::fs::read(Path::new(&a).join("model.safetensors")).unwrap(),
        std::fs::read(Path::new(&c).join("model.safetensors")).unwrap()
    );
}

#[test]
fn embed_writes_rows_that_are_each_samples_own_clip_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let shards = synth(dir.path(), "120", "50");
    let clip = clip_init(dir.path(), "7");
    let out = dir.path().join("emb");
    let report: serde_json::Value = serde_json::from_str(&unclip_ok(
        BIN,
        &[
            "embed",
            "--clip",
            &clip,
            "--shards",
            &shards,
            "--out",
            out.to_str().unwrap(),
            "--text-encodings",
            "--batch-size",
            "16",
        ],
    ))
    .unwrap();
    assert_eq!(report["embedded_shards"].as_u64(), Some(3), "{report}");

    let store = unclip_data::store::EmbeddingStore::open(&out).unwrap();
    let list = unclip_data::spec::resolve(&shards).unwrap();
    store.check_shards(&list).unwrap();
    assert!(store.manifest.text_encodings);
    let e = store.load_shard(&list[1]).unwrap();
    assert_eq!(e.dim, 64);
    let enc = e.text_encodings.as_ref().unwrap();
    assert_eq!((enc.context, enc.width), (77, 64));

    // Recompute three rows directly with the CLIP crate.
    let device = Default::default();
    let model = unclip_clip::Clip::<Flex>::load_hf_dir(&clip, &device).unwrap();
    let tok =
        unclip_clip::ClipTokenizer::from_file(Path::new(&clip).join("tokenizer.json")).unwrap();
    let members = unclip_data_tools::read_members(&list[1]).unwrap();
    for row in [0, 17, e.len() - 1] {
        let key = &e.keys[row];
        let png = &members
            .iter()
            .find(|(n, _)| *n == format!("{key}.png"))
            .unwrap()
            .1;
        let txt = &members
            .iter()
            .find(|(n, _)| *n == format!("{key}.txt"))
            .unwrap()
            .1;
        let img = image::load_from_memory(png).unwrap().to_rgb8();
        let px = unclip_clip::preprocess(&img, 32).unwrap();
        let x = Tensor::<Flex, 4>::from_data(TensorData::new(px, [1, 3, 32, 32]), &device);
        let want: Vec<f32> = model.encode_image(x).into_data().to_vec().unwrap();
        for (a, b) in e.image_row(row).iter().zip(&want) {
            assert!((a - b).abs() < 2e-3, "{key}: image {a} vs {b}");
        }
        let caption = std::str::from_utf8(txt).unwrap().trim();
        let ids = tok.encode(caption).unwrap().ids;
        let want: Vec<f32> = model
            .encode_text(&[ids])
            .text_embeds
            .into_data()
            .to_vec()
            .unwrap();
        for (a, b) in e.text_row(row).iter().zip(&want) {
            assert!((a - b).abs() < 2e-3, "{key}: text {a} vs {b}");
        }
    }
}

#[test]
fn embed_survives_kill_9_and_resumes_to_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let shards = synth(dir.path(), "1600", "40");
    let clip = clip_init(dir.path(), "3");
    let straight = dir.path().join("straight");
    unclip_ok(
        BIN,
        &[
            "embed",
            "--clip",
            &clip,
            "--shards",
            &shards,
            "--out",
            straight.to_str().unwrap(),
        ],
    );

    let resumed = dir.path().join("resumed");
    let mut child = Command::new(BIN)
        .args([
            "embed",
            "--clip",
            &clip,
            "--shards",
            &shards,
            "--out",
            resumed.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some but not all shards are done.
    let start = std::time::Instant::now();
    let mut killed_mid_run = false;
    while start.elapsed() < std::time::Duration::from_secs(60) {
        if let Ok(m) = unclip_data::store::Manifest::load(&resumed) {
            if (2..38).contains(&m.shards.len()) {
                child.kill().unwrap(); // SIGKILL
                killed_mid_run = true;
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.wait();
    assert!(
        killed_mid_run,
        "the job finished before it could be interrupted"
    );
    // Nothing partial is visible: every file in the store is listed complete, or a temp file.
    let m = unclip_data::store::Manifest::load(&resumed).unwrap();
    for entry in std::fs::read_dir(&resumed).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let listed = m.shards.iter().any(|s| s.file == name)
            || name == "manifest.json"
            || name == ".unclip-lock"; // the one-writer lock (docs/guarantees.md)
        assert!(
            listed || name.starts_with(".tmp-") || name.ends_with(".emb.safetensors"),
            "{name}"
        );
    }
    let report: serde_json::Value = serde_json::from_str(&unclip_ok(
        BIN,
        &[
            "embed",
            "--clip",
            &clip,
            "--shards",
            &shards,
            "--out",
            resumed.to_str().unwrap(),
        ],
    ))
    .unwrap();
    assert!(report["skipped_shards"].as_u64().unwrap() >= 2, "{report}");
    for entry in std::fs::read_dir(&straight).unwrap() {
        let name = entry.unwrap().file_name();
        if name == ".unclip-lock" {
            continue; // names the process that held the lock last
        }
        assert_eq!(
            std::fs::read(straight.join(&name)).unwrap(),
            std::fs::read(resumed.join(&name)).unwrap(),
            "{name:?}"
        );
    }
}

#[test]
fn embed_reads_a_config_file_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let shards = synth(dir.path(), "30", "50");
    let clip = clip_init(dir.path(), "4");
    let cfg = dir.path().join("embed.yaml");
    let out = dir.path().join("emb");
    std::fs::write(
        &cfg,
        format!(
            "clip: {clip}\nshards: {shards}\nout: {}\nbatch_size: 8\n",
            out.display()
        ),
    )
    .unwrap();
    unclip_ok(
        BIN,
        &[
            "embed",
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            "workers=1",
        ],
    );
    assert!(out.join("manifest.json").exists());
    std::fs::write(
        &cfg,
        format!("clip: {clip}\nshards: {shards}\nbatch_sise: 8\n"),
    )
    .unwrap();
    let o = unclip(BIN, &["embed", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("batch_sise") && err.contains("embed.yaml:3"),
        "{err}"
    );
    let o = unclip(BIN, &["embed", "--clip", &clip, "--shards", &shards]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing --out"));
}

#[test]
fn the_loader_joins_stored_embeddings_to_samples_by_key() {
    use std::sync::Arc;
    use unclip_data::{ImageTransform, Loader, LoaderConfig, Partition, WithEmbeddings};
    let dir = tempfile::tempdir().unwrap();
    let shards = synth(dir.path(), "60", "100");
    // Add a sample whose caption is empty: `unclip embed` records it as missing.
    let shard = Path::new(&shards).join("00000.tar");
    let mut members = unclip_data_tools::read_members(&shard).unwrap();
    let png = members[0].1.clone();
    members.push(("zz-nocaption.png".into(), png));
    members.push(("zz-nocaption.txt".into(), Vec::new()));
    unclip_data_tools::write_shard(&shard, &members).unwrap();

    let clip = clip_init(dir.path(), "5");
    let out = dir.path().join("emb");
    unclip_ok(
        BIN,
        &[
            "embed",
            "--clip",
            &clip,
            "--shards",
            &shards,
            "--out",
            out.to_str().unwrap(),
            "--text-encodings",
        ],
    );
    let store = unclip_data::store::EmbeddingStore::open(&out).unwrap();
    let stored = store.load_shard(&shard).unwrap();
    assert_eq!(
        stored.missing,
        [("zz-nocaption".to_string(), "missing_caption".to_string())]
    );

    let mut c = LoaderConfig::new(shards.clone(), 4);
    c.require_caption = false;
    c.drop_last = false;
    c.epochs = Some(1);
    let join = WithEmbeddings::new(Arc::new(ImageTransform::new(16)), store, true).unwrap();
    let mut loader = Loader::new(c, Partition::SINGLE, Arc::new(join), None).unwrap();
    let index = stored.index();
    let mut rows = 0;
    while let Some(b) = loader.next_batch().unwrap() {
        let emb = b.field("image_embed").unwrap();
        let enc = b.field("text_encodings").unwrap();
        assert_eq!(enc.shape[1..], [77, 64]);
        assert_eq!(b.field("text_mask").unwrap().shape[1..], [77]);
        for (i, key) in b.keys.iter().enumerate() {
            let row = index[key.as_str()];
            assert_eq!(
                &emb.data[i * 64..(i + 1) * 64],
                stored.image_row(row),
                "{key}"
            );
            assert_eq!(
                &b.field("text_embed").unwrap().data[i * 64..(i + 1) * 64],
                stored.text_row(row)
            );
            rows += 1;
        }
    }
    assert_eq!(rows, stored.len());
    assert_eq!(loader.summary().skipped.get("missing_embedding"), Some(&1));
    // A store without encodings cannot serve them.
    let plain = dir.path().join("plain");
    unclip_ok(
        BIN,
        &[
            "embed",
            "--clip",
            &clip,
            "--shards",
            &shards,
            "--out",
            plain.to_str().unwrap(),
        ],
    );
    let store = unclip_data::store::EmbeddingStore::open(&plain).unwrap();
    assert!(WithEmbeddings::new(Arc::new(ImageTransform::new(16)), store, true).is_err());
}

#[test]
fn bench_embed_prints_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let shards = synth(dir.path(), "40", "50");
    let clip = clip_init(dir.path(), "6");
    let line = unclip_ok(
        BIN,
        &[
            "bench",
            "embed",
            "--clip",
            &clip,
            "--shards",
            &shards,
            "--batch-size",
            "8",
        ],
    );
    assert_eq!(line.lines().count(), 1, "{line}");
    let r: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(r["images"], r["captions"]);
    assert!(r["images"].as_u64().unwrap() >= 30, "{r}");
    assert!(
        r["images_per_s"].as_f64().unwrap() > 0.0 && r["captions_per_s"].as_f64().unwrap() > 0.0
    );
    assert_eq!(r["embed_dim"].as_u64(), Some(64));
}

#[test]
fn embed_import_clip_retrieval_writes_a_readable_store() {
    let dir = tempfile::tempdir().unwrap();
    let input = unclip_tests::fixtures().join("clip-retrieval");
    let out = dir.path().join("laion");
    let report: serde_json::Value = serde_json::from_str(&unclip_ok(
        BIN,
        &[
            "embed",
            "import-clip-retrieval",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    ))
    .unwrap();
    assert_eq!(report["parts"].as_u64(), Some(2), "{report}");
    let store = unclip_data::store::EmbeddingStore::open(&out).unwrap();
    assert!(!store.manifest.text_encodings);
    assert_eq!(store.manifest.shards.len(), 2);
    let rows: u64 = store.manifest.shards.iter().map(|s| s.samples).sum();
    assert_eq!(rows, report["samples"].as_u64().unwrap());
    // Refused the second time without --overwrite.
    let again = unclip(
        BIN,
        &[
            "embed",
            "import-clip-retrieval",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(again.status.code(), Some(1));
}
