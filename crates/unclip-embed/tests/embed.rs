//! The embedding job with a stand-in encoder: alignment, missing samples, resume.

use image::RgbImage;
use std::path::Path;
use unclip_data::store::{read_embeddings, ClipInfo, EmbeddingStore, TextEncodings};
use unclip_embed::embed::{embed, EmbedJob, Embedder, TextBatch};

/// Embeds an image as its normalised mean colour and a caption as a normalised byte histogram.
struct Fake {
    name: &'static str,
}

const D: usize = 4;

fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn text_vec(c: &str) -> Vec<f32> {
    let mut v = vec![0.1f32; D];
    for (i, b) in c.bytes().enumerate() {
        v[(b as usize + i) % D] += 1.0;
    }
    normalise(v)
}

impl Embedder for Fake {
    fn info(&self) -> ClipInfo {
        ClipInfo {
            source: "fake".into(),
            weights_sha256: self.name.into(),
            tokenizer_sha256: "t".into(),
            embed_dim: D,
            text_width: 2,
            context_length: 3,
        }
    }
    fn preprocess(&self, img: &RgbImage) -> Result<Vec<f32>, String> {
        let n = (img.width() * img.height()) as f32;
        let mut m = [0f32; 3];
        for p in img.pixels() {
            for c in 0..3 {
                m[c] += p[c] as f32 / 255.0 / n;
            }
        }
        Ok(m.to_vec())
    }
    fn embed_images(&self, pixels: Vec<f32>, n: usize) -> anyhow::Result<Vec<f32>> {
        assert_eq!(pixels.len(), n * 3);
        Ok(pixels
            .chunks(3)
            .flat_map(|m| normalise(vec![m[0], m[1], m[2], 0.5]))
            .collect())
    }
    fn embed_texts(&self, captions: &[String], encodings: bool) -> anyhow::Result<TextBatch> {
        Ok(TextBatch {
            embeds: captions.iter().flat_map(|c| text_vec(c)).collect(),
            encodings: encodings.then(|| TextEncodings {
                context: 3,
                width: 2,
                values: captions
                    .iter()
                    .flat_map(|c| vec![c.len() as f32 / 100.0; 6])
                    .collect(),
                mask: captions.iter().flat_map(|_| [1, 1, 0]).collect(),
            }),
        })
    }
}

fn shapes(dir: &Path) -> std::path::PathBuf {
    let mut o = unclip_data_tools::SynthOptions::new(dir.join("shapes"));
    o.count = 90;
    o.size = 16;
    o.samples_per_shard = 30;
    o.val_fraction = 0.0;
    unclip_data_tools::synth(&o).unwrap();
    dir.join("shapes/train")
}

fn job(shards: &Path, out: &Path, text_encodings: bool) -> EmbedJob {
    EmbedJob {
        shards: shards.to_string_lossy().into_owned(),
        out: out.to_path_buf(),
        batch_size: 7,
        workers: 2,
        text_encodings,
        caption_json_field: None,
        max_pixels: u64::MAX,
    }
}

#[test]
fn embeds_every_shard_aligned_by_key_and_records_missing_samples() {
    let dir = tempfile::tempdir().unwrap();
    let shards = shapes(dir.path());
    // Break one image of shard 1: it must be recorded as missing, not shift the rows.
    let shard1 = shards.join("00001.tar");
    let mut members = unclip_data_tools::read_members(&shard1).unwrap();
    for (name, data) in &mut members {
        if name == "000010005.png" {
            *data = b"broken".to_vec();
        }
    }
    unclip_data_tools::write_shard(&shard1, &members).unwrap();

    let out = dir.path().join("emb");
    let report = embed(&job(&shards, &out, true), &Fake { name: "fake" }).unwrap();
    assert_eq!(report.embedded_shards, 3);
    assert_eq!(report.samples, 89);
    assert_eq!(report.missing.get("undecodable_image"), Some(&1));

    let store = EmbeddingStore::open(&out).unwrap();
    let list = unclip_data::spec::resolve(&shards.to_string_lossy()).unwrap();
    store.check_shards(&list).unwrap();
    let e = store.load_shard(&shard1).unwrap();
    assert_eq!(
        e.missing,
        [("000010005".to_string(), "undecodable_image".to_string())]
    );
    assert_eq!(e.text_encodings.as_ref().unwrap().mask.len(), e.len() * 3);
    // Each row is its own sample's embedding: compare with the pixels and caption.
    let members = unclip_data_tools::read_members(&shard1).unwrap();
    let fake = Fake { name: "fake" };
    for (row, key) in e.keys.iter().enumerate() {
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
        let want = fake
            .embed_images(fake.preprocess(&img).unwrap(), 1)
            .unwrap();
        for (a, b) in e.image_row(row).iter().zip(&want) {
            assert!((a - b).abs() < 2e-3, "{key}");
        }
        let want = text_vec(std::str::from_utf8(txt).unwrap().trim());
        for (a, b) in e.text_row(row).iter().zip(&want) {
            assert!((a - b).abs() < 2e-3, "{key}");
        }
    }
    assert_eq!(store.manifest.image_embed_mean.len(), D);
    assert!(store.manifest.empty_caption.is_some());
    let empty = read_embeddings(&out.join("empty_caption.safetensors")).unwrap();
    assert_eq!(empty.text_row(0).len(), D);
}

#[test]
fn an_interrupted_job_finishes_on_rerun_with_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let shards = shapes(dir.path());
    let straight = dir.path().join("straight");
    embed(&job(&shards, &straight, false), &Fake { name: "fake" }).unwrap();

    // Simulate a crash while shard 2 was being embedded: its manifest entry never got written,
    // and a temporary file was left behind.
    let resumed = dir.path().join("resumed");
    embed(&job(&shards, &resumed, false), &Fake { name: "fake" }).unwrap();
    let mut m = unclip_data::store::Manifest::load(&resumed).unwrap();
    m.shards.retain(|e| e.shard != "00002.tar");
    m.save(&resumed).unwrap();
    std::fs::remove_file(resumed.join("00002.emb.safetensors")).unwrap();
    std::fs::write(resumed.join(".tmp-1-0-00002.emb.safetensors"), b"partial").unwrap();

    let report = embed(&job(&shards, &resumed, false), &Fake { name: "fake" }).unwrap();
    assert_eq!((report.skipped_shards, report.embedded_shards), (2, 1));
    for f in [
        "00000.emb.safetensors",
        "00001.emb.safetensors",
        "00002.emb.safetensors",
        "manifest.json",
    ] {
        assert_eq!(
            std::fs::read(straight.join(f)).unwrap(),
            std::fs::read(resumed.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn a_store_from_another_model_is_not_mixed_in() {
    let dir = tempfile::tempdir().unwrap();
    let shards = shapes(dir.path());
    let out = dir.path().join("emb");
    embed(&job(&shards, &out, false), &Fake { name: "a" }).unwrap();
    let err = embed(&job(&shards, &out, false), &Fake { name: "b" })
        .unwrap_err()
        .to_string();
    assert!(err.contains("another model"), "{err}");
    let err = embed(&job(&shards, &out, true), &Fake { name: "a" })
        .unwrap_err()
        .to_string();
    assert!(err.contains("other options"), "{err}");
}

#[test]
fn problems_of_the_shard_file_are_counted_in_the_report_and_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let shards = shapes(dir.path());
    // Cut shard 2 inside a member's data: the samples before the cut are embedded, the cut one
    // is a counted problem of the shard.
    let shard2 = shards.join("00002.tar");
    let bytes = std::fs::read(&shard2).unwrap();
    std::fs::write(&shard2, &bytes[..bytes.len() / 2 + 100]).unwrap();
    let out = dir.path().join("emb");
    let report = embed(&job(&shards, &out, false), &Fake { name: "a" }).unwrap();
    let lost: u64 = report.shard_problems.values().sum();
    assert!(lost >= 1, "{:?}", report.shard_problems);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["shard_problems"].is_object(), "{json}");
    let store = EmbeddingStore::open(&out).unwrap();
    let entry = store.manifest.entry("00002.tar").unwrap();
    assert_eq!(entry.problems, report.shard_problems);
    assert!(store
        .manifest
        .entry("00000.tar")
        .unwrap()
        .problems
        .is_empty());
}

#[test]
fn a_repacked_shard_is_refused_for_training_and_embedded_again() {
    let dir = tempfile::tempdir().unwrap();
    let shards = shapes(dir.path());
    let out = dir.path().join("emb");
    embed(&job(&shards, &out, false), &Fake { name: "a" }).unwrap();
    let list = unclip_data::spec::resolve(&shards.to_string_lossy()).unwrap();
    EmbeddingStore::open(&out)
        .unwrap()
        .check_shards(&list)
        .unwrap();

    // Re-pack shard 0 so that every key holds another sample's image: same keys, same order.
    let s0 = shards.join("00000.tar");
    let mut members = unclip_data_tools::read_members(&s0).unwrap();
    let pngs: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].0.ends_with(".png"))
        .collect();
    let first = members[pngs[0]].1.clone();
    for w in pngs.windows(2) {
        members[w[0]].1 = members[w[1]].1.clone();
    }
    members[*pngs.last().unwrap()].1 = first;
    unclip_data_tools::write_shard(&s0, &members).unwrap();

    let err = EmbeddingStore::open(&out)
        .unwrap()
        .check_shards(&list)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("00000.tar") && err.contains("changed after it was embedded"),
        "{err}"
    );
    let report = embed(&job(&shards, &out, false), &Fake { name: "a" }).unwrap();
    assert_eq!(
        (
            report.changed_shards,
            report.embedded_shards,
            report.skipped_shards
        ),
        (1, 1, 2)
    );
    EmbeddingStore::open(&out)
        .unwrap()
        .check_shards(&list)
        .unwrap();

    // A store file cut short is refused before training, naming the file.
    let file = out.join(unclip_data::store::embedding_file_name(&s0));
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
    let err = EmbeddingStore::open(&out)
        .unwrap()
        .check_shards(&list)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cut short"), "{err}");
}

#[test]
fn a_repeated_key_is_a_counted_bad_sample_not_a_second_row() {
    let dir = tempfile::tempdir().unwrap();
    let shards = shapes(dir.path());
    let s2 = shards.join("00002.tar");
    let mut members = unclip_data_tools::read_members(&s2).unwrap();
    let key = members[0].0.split('.').next().unwrap().to_string();
    let again: Vec<(String, Vec<u8>)> = members
        .iter()
        .filter(|(n, _)| n.starts_with(&format!("{key}.")))
        .cloned()
        .collect();
    members.extend(again);
    unclip_data_tools::write_shard(&s2, &members).unwrap();
    let out = dir.path().join("emb");
    let report = embed(&job(&shards, &out, false), &Fake { name: "a" }).unwrap();
    assert_eq!(report.missing.get("duplicate_key"), Some(&1), "{report:?}");
    assert_eq!(report.samples, 90);
    let list = unclip_data::spec::resolve(&shards.to_string_lossy()).unwrap();
    let store = EmbeddingStore::open(&out).unwrap();
    store.check_shards(&list).unwrap();
    let e = store.load_shard(&s2).unwrap();
    assert_eq!(e.keys.iter().filter(|k| **k == key).count(), 1);
}
