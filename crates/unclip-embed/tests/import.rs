//! Importing clip-retrieval output into an embedding store, against the fixtures written by
//! `tests/reference/make_clip_retrieval_fixtures.py` (numpy float16 npy, pandas/pyarrow parquet).

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use unclip_data::store::{read_embeddings, EmbeddingStore, Manifest};
use unclip_embed::import::{import_clip_retrieval, ImportOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/fixtures/clip-retrieval")
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn row(e: &Value, which: &str, key: &str) -> Vec<f32> {
    e[which][key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// A tar shard with a (fake) jpg and a txt per key, in the given order.
fn shard(path: &Path, keys: &[&str]) -> PathBuf {
    let mut w = tar::Builder::new(Vec::new());
    for key in keys {
        for (ext, data) in [("jpg", &b"not decoded"[..]), ("txt", b"a caption")] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            w.append_data(&mut h, format!("{key}.{ext}"), data).unwrap();
        }
    }
    std::fs::write(path, w.into_inner().unwrap()).unwrap();
    path.to_path_buf()
}

#[test]
fn imports_each_part_as_a_store_file_without_shards() {
    let e = expected();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store");
    let report = import_clip_retrieval(&ImportOptions::new(fixtures(), &out)).unwrap();
    assert_eq!((report.parts, report.rows, report.shards), (2, 7, 2));
    assert_eq!(report.samples, 5);
    assert_eq!(
        (report.renormalized_image, report.renormalized_text),
        (1, 1)
    );
    assert_eq!(strings(&e["renormalized_image"]), ["000001001"]);
    assert_eq!(
        report.missing,
        BTreeMap::from([("missing_caption".into(), 2)])
    );

    let missing_caption = strings(&e["missing_caption"]);
    assert_eq!(missing_caption, ["000000001", "000001002"]);
    let m = Manifest::load(&out).unwrap();
    assert_eq!(
        m.clip.source,
        format!("clip-retrieval:{}", fixtures().display())
    );
    assert_eq!(
        (
            m.clip.weights_sha256.as_str(),
            m.clip.embed_dim,
            m.clip.text_width
        ),
        ("unknown", 8, 0)
    );
    assert!(!m.text_encodings && m.normalized && m.empty_caption.is_none());
    assert!(!out.join("empty_caption.safetensors").exists());
    for part in e["parts"].as_array().unwrap() {
        let name = format!("img_emb_{}", part["n"]);
        let entry = m.entry(&name).unwrap();
        assert_eq!(entry.file, format!("{name}.emb.safetensors"));
        let stored = read_embeddings(&out.join(&entry.file)).unwrap();
        let keys = strings(&part["keys"]);
        let kept: Vec<&String> = keys
            .iter()
            .filter(|k| !missing_caption.contains(k))
            .collect();
        assert_eq!(stored.keys.iter().collect::<Vec<_>>(), kept);
        let gone: Vec<(String, String)> = keys
            .iter()
            .filter(|k| missing_caption.contains(k))
            .map(|k| (k.clone(), "missing_caption".into()))
            .collect();
        assert_eq!(stored.missing, gone);
        assert_eq!(
            (entry.samples, entry.missing, entry.complete),
            (kept.len() as u64, gone.len() as u64, true)
        );
        for (i, key) in stored.keys.iter().enumerate() {
            // f16 in, f16 out: bit-exact (rescaled rows included, computed the same way).
            assert_eq!(stored.image_row(i), row(&e, "image_embed", key), "{key}");
            assert_eq!(stored.text_row(i), row(&e, "text_embed", key), "{key}");
        }
    }
    let want = &e["no_shards"];
    for (got, want) in [
        (&m.image_embed_mean, &want["image_embed_mean"]),
        (&m.image_embed_std, &want["image_embed_std"]),
    ] {
        let want: Vec<f64> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), 8);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    // A second import into the same folder needs --overwrite.
    let again = format!(
        "{:#}",
        import_clip_retrieval(&ImportOptions::new(fixtures(), &out)).unwrap_err()
    );
    assert!(again.contains("--overwrite"), "{again}");
    let mut o = ImportOptions::new(fixtures(), &out);
    o.overwrite = true;
    assert_eq!(import_clip_retrieval(&o).unwrap().samples, 5);
}

#[test]
fn joins_rows_to_shards_by_key() {
    let e = expected();
    let dir = tempfile::tempdir().unwrap();
    // Shard order differs from the parquet rows; `000000099` has no clip-retrieval row,
    // `000000001` has an empty caption, and `000000002` / `000001002` are in no shard.
    let s0 = shard(
        &dir.path().join("00000.tar"),
        &["000001001", "000000000", "000000099", "000000001"],
    );
    let s1 = shard(&dir.path().join("00001.tar"), &["000000003", "000001000"]);
    let out = dir.path().join("store");
    let mut o = ImportOptions::new(fixtures(), &out);
    o.shards = Some(format!("{}/{{00000..00001}}.tar", dir.path().display()));
    let report = import_clip_retrieval(&o).unwrap();
    assert_eq!((report.parts, report.rows, report.shards), (2, 7, 2));
    assert_eq!((report.samples, report.unused_rows), (4, 2));
    assert_eq!(
        report.missing,
        BTreeMap::from([
            ("missing_caption".into(), 1),
            ("not_in_clip_retrieval".into(), 1)
        ])
    );
    assert_eq!(
        (report.renormalized_image, report.renormalized_text),
        (1, 1)
    );

    let store = EmbeddingStore::open(&out).unwrap();
    store.check_shards(&[s0.clone(), s1.clone()]).unwrap();
    let a = store.load_shard(&s0).unwrap();
    assert_eq!(a.keys, ["000001001", "000000000"]);
    assert_eq!(
        a.missing,
        [
            ("000000099".to_string(), "not_in_clip_retrieval".to_string()),
            ("000000001".to_string(), "missing_caption".to_string())
        ]
    );
    let b = store.load_shard(&s1).unwrap();
    assert_eq!(b.keys, ["000000003", "000001000"]);
    assert!(b.missing.is_empty());
    let mut rows = Vec::new();
    for s in [&a, &b] {
        for (i, key) in s.keys.iter().enumerate() {
            assert_eq!(s.image_row(i), row(&e, "image_embed", key), "{key}");
            assert_eq!(s.text_row(i), row(&e, "text_embed", key), "{key}");
            rows.push(row(&e, "image_embed", key));
        }
    }
    let m = &store.manifest;
    assert_eq!(
        m.shards.iter().map(|s| s.file.as_str()).collect::<Vec<_>>(),
        ["00000.emb.safetensors", "00001.emb.safetensors"]
    );
    let n = rows.len() as f64;
    for d in 0..8 {
        let mean = rows.iter().map(|r| r[d] as f64).sum::<f64>() / n;
        let var = rows.iter().map(|r| (r[d] as f64).powi(2)).sum::<f64>() / n - mean * mean;
        assert!((m.image_embed_mean[d] - mean).abs() < 1e-12);
        assert!((m.image_embed_std[d] - var.max(0.0).sqrt()).abs() < 1e-9);
    }

    let mut o = ImportOptions::new(fixtures(), dir.path().join("other"));
    o.shards = Some(format!("{}/nothing-*.tar", dir.path().display()));
    let err = format!("{:#}", import_clip_retrieval(&o).unwrap_err());
    assert!(err.contains("nothing-*.tar"), "{err}");
    assert!(
        !dir.path().join("other").exists(),
        "--out is untouched on errors"
    );
}

/// A copy of the fixture folder with one file replaced.
fn broken(dir: &Path, target: &str, replacement: &str) -> PathBuf {
    let root = dir.join("cr");
    for sub in ["img_emb", "text_emb", "metadata"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        for f in std::fs::read_dir(fixtures().join(sub)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), root.join(sub).join(f.file_name())).unwrap();
        }
    }
    std::fs::copy(
        fixtures().join("errors").join(replacement),
        root.join(target),
    )
    .unwrap();
    root
}

#[test]
fn clear_errors_for_inputs_that_do_not_line_up() {
    let dir = tempfile::tempdir().unwrap();
    let run = |input: PathBuf| {
        let out = input.parent().unwrap().join("store");
        format!(
            "{:#}",
            import_clip_retrieval(&ImportOptions::new(input, out)).unwrap_err()
        )
    };

    let d = dir.path().join("count");
    let err = run(broken(&d, "text_emb/text_emb_1.npy", "text_emb_short.npy"));
    assert!(err.contains("part 1 does not line up"), "{err}");
    assert!(err.contains("text_emb_1.npy is [2, 8]"), "{err}");
    assert!(err.contains("img_emb_1.npy is [3, 8]"), "{err}");
    assert!(err.contains("metadata_1.parquet has 3 rows"), "{err}");

    let d = dir.path().join("column");
    let err = run(broken(
        &d,
        "metadata/metadata_1.parquet",
        "metadata_without_image_path.parquet",
    ));
    assert!(
        err.contains("metadata_1.parquet: no `image_path` column"),
        "{err}"
    );
    assert!(
        err.contains("columns: caption, url, width, height"),
        "{err}"
    );

    let d = dir.path().join("dup");
    let err = run(broken(
        &d,
        "metadata/metadata_1.parquet",
        "metadata_duplicate_key.parquet",
    ));
    assert!(err.contains("key `000000002` appears twice"), "{err}");

    let d = dir.path().join("f64");
    let err = run(broken(&d, "img_emb/img_emb_0.npy", "img_emb_f64.npy"));
    assert!(
        err.contains("img_emb_0.npy: not a usable .npy file: dtype `<f8`"),
        "{err}"
    );

    let err = run(dir.path().join("nowhere"));
    assert!(err.contains("not a clip-retrieval output folder"), "{err}");
    // Nothing was written for any of them.
    assert!(!d.join("store").exists());
}

#[test]
fn options_parse_as_the_cli_will_flatten_them() {
    use clap::Parser;
    #[derive(Parser)]
    enum Cli {
        ImportClipRetrieval(ImportOptions),
    }
    let Cli::ImportClipRetrieval(o) = Cli::try_parse_from([
        "embed",
        "import-clip-retrieval",
        "--input",
        "laion/embeddings",
        "--out",
        "store",
        "--shards",
        "laion/{00000..00009}.tar",
        "--overwrite",
    ])
    .unwrap();
    assert_eq!(o.input, Path::new("laion/embeddings"));
    assert_eq!(o.out, Path::new("store"));
    assert_eq!(o.shards.as_deref(), Some("laion/{00000..00009}.tar"));
    assert!(o.overwrite);
    let Cli::ImportClipRetrieval(o) = Cli::try_parse_from([
        "embed",
        "import-clip-retrieval",
        "--input",
        "i",
        "--out",
        "o",
    ])
    .unwrap();
    assert!(o.shards.is_none() && !o.overwrite);
    assert!(Cli::try_parse_from(["embed", "import-clip-retrieval", "--input", "i"]).is_err());
}
