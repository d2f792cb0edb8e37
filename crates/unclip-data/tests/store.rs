mod common;

use common::TarBuilder;
use unclip_data::store::*;

fn embeddings(keys: &[&str], dim: usize, salt: f32, with_text: bool) -> ShardEmbeddings {
    let n = keys.len();
    let val = |i: usize| ((i as f32 * 0.37 + salt).sin() * 0.5).clamp(-1.0, 1.0);
    ShardEmbeddings {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        missing: vec![("bad".into(), "undecodable_image".into())],
        dim,
        image_embed: (0..n * dim).map(val).collect(),
        text_embed: (0..n * dim).map(|i| val(i + 7)).collect(),
        text_encodings: with_text.then(|| TextEncodings {
            context: 5,
            width: 3,
            values: (0..n * 15).map(|i| val(i + 11)).collect(),
            mask: (0..n * 5).map(|i| (i % 5 < 3) as u8).collect(),
        }),
    }
}

fn clip_info() -> ClipInfo {
    ClipInfo {
        source: "test".into(),
        weights_sha256: "ab".into(),
        tokenizer_sha256: "cd".into(),
        embed_dim: 4,
        text_width: 3,
        context_length: 5,
    }
}

#[test]
fn shard_files_round_trip_at_f16_precision() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        embedding_file_name(std::path::Path::new("a/00012.tar")),
        "00012.emb.safetensors"
    );
    assert_eq!(
        embedding_file_name(std::path::Path::new("x.tar.gz")),
        "x.emb.safetensors"
    );
    for with_text in [false, true] {
        let e = embeddings(&["k0", "k1", "k2"], 4, 0.3, with_text);
        let path = dir.path().join("s.emb.safetensors");
        write_shard(&path, "s.tar", &e).unwrap();
        let back = read_embeddings(&path).unwrap();
        assert_eq!(back.keys, e.keys);
        assert_eq!(back.missing, e.missing);
        for (a, b) in back.image_embed.iter().zip(&e.image_embed) {
            assert!((a - b).abs() < 1e-3, "{a} {b}");
        }
        assert_eq!(back.text_encodings.is_some(), with_text);
        if let (Some(a), Some(b)) = (&back.text_encodings, &e.text_encodings) {
            assert_eq!(a.mask, b.mask);
            assert_eq!((a.context, a.width), (5, 3));
        }
        // Rewriting the stored values changes nothing (f16 is exact on them).
        write_shard(&path, "s.tar", &back).unwrap();
        assert_eq!(read_embeddings(&path).unwrap(), back);
        assert_eq!(back.index()["k2"], 2);
    }
}

#[test]
fn mean_and_std_come_exactly_from_the_stored_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Manifest::new(clip_info(), false);
    let mut all = Vec::new();
    for (s, keys) in [("a.tar", vec!["1", "2", "3"]), ("b.tar", vec!["4", "5"])] {
        let e = embeddings(&keys, 4, s.len() as f32 + keys.len() as f32, false);
        let file = embedding_file_name(std::path::Path::new(s));
        write_shard(&dir.path().join(&file), s, &e).unwrap();
        all.extend(
            read_embeddings(&dir.path().join(&file))
                .unwrap()
                .image_embed,
        );
        m.record(ShardEntry {
            shard: s.into(),
            file,
            samples: keys.len() as u64,
            missing: 1,
            problems: Default::default(),
            fingerprint: None,
            complete: true,
        });
    }
    m.aggregate_stats(dir.path()).unwrap();
    let n = all.len() / 4;
    for d in 0..4 {
        let col: Vec<f64> = (0..n).map(|i| all[i * 4 + d] as f64).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let std = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!((m.image_embed_mean[d] - mean).abs() < 1e-12);
        assert!((m.image_embed_std[d] - std).abs() < 1e-9);
    }
    m.save(dir.path()).unwrap();
    assert_eq!(Manifest::load(dir.path()).unwrap(), m);
}

#[test]
fn check_shards_names_the_shard_and_the_first_differing_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let shard = TarBuilder::new()
        .sample("k0", 0)
        .file("bad.png", b"broken")
        .file("bad.txt", b"x")
        .sample("k1", 1)
        .sample("k2", 2)
        .write(&d.join("00000.tar"));
    let mut m = Manifest::new(clip_info(), false);
    let file = embedding_file_name(&shard);
    let entry = ShardEntry {
        shard: "00000.tar".into(),
        file: file.clone(),
        samples: 3,
        missing: 1,
        problems: Default::default(),
        fingerprint: None,
        complete: true,
    };
    m.record(entry.clone());
    m.save(d).unwrap();
    let store = EmbeddingStore::open(d).unwrap();

    write_shard(
        &d.join(&file),
        "00000.tar",
        &embeddings(&["k0", "k1", "k2"], 4, 0.0, false),
    )
    .unwrap();
    store.check_shards(std::slice::from_ref(&shard)).unwrap();

    write_shard(
        &d.join(&file),
        "00000.tar",
        &embeddings(&["k0", "k2", "k1"], 4, 0.0, false),
    )
    .unwrap();
    let err = store
        .check_shards(std::slice::from_ref(&shard))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("00000.tar") && err.contains("`k1`") && err.contains("`k2`"),
        "{err}"
    );

    write_shard(
        &d.join(&file),
        "00000.tar",
        &embeddings(&["k0", "k1"], 4, 0.0, false),
    )
    .unwrap();
    let err = store
        .check_shards(std::slice::from_ref(&shard))
        .unwrap_err()
        .to_string();
    assert!(err.contains("first extra key `k2`"), "{err}");

    let other = TarBuilder::new().sample("z", 0).write(&d.join("00001.tar"));
    let err = store.check_shards(&[other]).unwrap_err().to_string();
    assert!(err.contains("no embeddings for shard 00001.tar"), "{err}");

    let mut m2 = Manifest::load(d).unwrap();
    m2.record(ShardEntry {
        problems: Default::default(),
        fingerprint: None,
        complete: false,
        ..entry
    });
    m2.save(d).unwrap();
    let err = EmbeddingStore::open(d)
        .unwrap()
        .check_shards(&[shard])
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not finish"), "{err}");
}

#[test]
fn foreign_or_corrupt_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.emb.safetensors");
    std::fs::write(&p, b"garbage").unwrap();
    assert!(read_embeddings(&p).is_err());
    assert!(read_embeddings_header(&p).is_err());
    let plain = safetensors::serialize(
        Vec::<(String, safetensors::tensor::TensorView)>::new(),
        None,
    )
    .unwrap();
    std::fs::write(&p, plain).unwrap();
    let err = read_embeddings(&p).unwrap_err().to_string();
    assert!(err.contains("format tag"), "{err}");
    assert!(Manifest::load(dir.path()).is_err());
}

/// An inner transform that adds nothing (the embeddings are the fields under test).
struct Bare;

impl unclip_data::transform::SampleTransform for Bare {
    fn apply(
        &self,
        sample: unclip_data::transform::DecodedSample,
        ctx: unclip_data::transform::SampleContext,
    ) -> Result<unclip_data::transform::Example, unclip_data::transform::TransformError> {
        Ok(unclip_data::transform::Example {
            key: sample.key,
            caption: sample.caption,
            index: ctx.index,
            fields: Vec::new(),
        })
    }
}

/// A shuffle buffer keeps a few samples of an early shard in flight while later shards stream:
/// the join's cache must keep a small store's shards instead of reloading them (it was a FIFO of
/// four shards, which reloaded — and evicted the current shard — on every late sample), and it
/// must not read the per-token encodings when they are not asked for.
#[test]
fn the_join_cache_loads_each_shard_of_a_small_store_once() {
    use std::sync::Arc;
    use unclip_data::join::WithEmbeddings;
    use unclip_data::transform::{DecodedSample, SampleContext, SampleTransform};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut m = Manifest::new(clip_info(), true);
    let shards: Vec<String> = (0..7).map(|i| format!("{i:05}.tar")).collect();
    let mut stored = Vec::new();
    for (i, s) in shards.iter().enumerate() {
        let e = embeddings(&["a", "b"], 4, i as f32, true);
        let file = embedding_file_name(std::path::Path::new(s));
        write_shard(&d.join(&file), s, &e).unwrap();
        let parts = read_embeddings_parts(&d.join(&file), false).unwrap();
        assert!(parts.text_encodings.is_none());
        assert_eq!(
            parts.image_embed,
            read_embeddings(&d.join(&file)).unwrap().image_embed
        );
        stored.push(parts);
        m.record(ShardEntry {
            shard: s.clone(),
            file,
            samples: 2,
            missing: 0,
            problems: Default::default(),
            fingerprint: None,
            complete: true,
        });
    }
    m.save(d).unwrap();
    let join =
        WithEmbeddings::new(Arc::new(Bare), EmbeddingStore::open(d).unwrap(), false).unwrap();
    let sample = |shard: usize, key: &str| DecodedSample {
        key: key.into(),
        shard: Arc::from(d.join(&shards[shard]).as_path()),
        caption: Some("c".into()),
        json_bytes: None,
        image_bytes: Vec::new(),
        image_ext: "png".into(),
        max_pixels: 1 << 20,
    };
    let ctx = SampleContext {
        seed: 0,
        epoch: 0,
        index: 0,
    };
    // Shards in stream order, with samples of shard 0 (and 1) arriving late, twice.
    let order = [0, 1, 2, 3, 4, 0, 5, 1, 6, 0, 6, 2];
    for (n, &s) in order.iter().enumerate() {
        let key = if n % 2 == 0 { "a" } else { "b" };
        let ex = join.apply(sample(s, key), ctx).unwrap();
        let names: Vec<&str> = ex.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["image_embed", "text_embed"],
            "no encodings were asked for"
        );
        let row = usize::from(key == "b");
        assert_eq!(
            ex.fields[0].data,
            stored[s].image_embed[row * 4..row * 4 + 4]
        );
    }
    assert_eq!(join.shard_loads(), 7, "each shard read once");
}
