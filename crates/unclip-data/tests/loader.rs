mod common;

use common::{good_shards, png, TarBuilder};
use std::collections::BTreeSet;
use std::sync::Arc;
use unclip_data::{Batch, Cursor, ImageTransform, Loader, LoaderConfig, Partition};

fn config(shards: &str, batch: usize, workers: usize) -> LoaderConfig {
    let mut c = LoaderConfig::new(shards, batch);
    c.workers = workers;
    c.seed = 17;
    c.shuffle_buffer = 7;
    c.prefetch_batches = 2;
    c
}

fn transform() -> Arc<ImageTransform> {
    let mut t = ImageTransform::new(4);
    t.resize_to = Some(6);
    t.crop = unclip_data::transform::Crop::Random;
    t.hflip_prob = 0.5;
    Arc::new(t)
}

fn loader(c: &LoaderConfig, p: Partition, cursor: Option<Cursor>) -> Loader {
    Loader::new(c.clone(), p, transform(), cursor).unwrap()
}

fn take(l: &mut Loader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| l.next_batch().unwrap().unwrap()).collect()
}

#[test]
fn same_batches_for_any_worker_count_and_shuffled() {
    let dir = tempfile::tempdir().unwrap();
    let spec = good_shards(dir.path(), 4, 10);
    let one = take(
        &mut loader(&config(&spec, 3, 1), Partition::SINGLE, None),
        30,
    );
    let three = take(
        &mut loader(&config(&spec, 3, 3), Partition::SINGLE, None),
        30,
    );
    assert_eq!(
        one, three,
        "batches (keys, pixels, augmentations) depend on worker count"
    );
    // 40 samples / 3 = 13 batches per epoch; the order is shuffled and differs per epoch.
    let epoch0: Vec<String> = one[..13].iter().flat_map(|b| b.keys.clone()).collect();
    let epoch1: Vec<String> = one[13..26].iter().flat_map(|b| b.keys.clone()).collect();
    assert_eq!(one[12].epoch, 0);
    assert_eq!(one[13].epoch, 1);
    let mut sorted = epoch0.clone();
    sorted.sort();
    assert_ne!(epoch0, sorted, "not shuffled");
    assert_ne!(epoch0, epoch1, "same order every epoch");
    assert_eq!(
        epoch0.iter().collect::<BTreeSet<_>>().len(),
        39,
        "a sample repeated"
    );
}

#[test]
fn ranks_partition_the_single_rank_stream() {
    let dir = tempfile::tempdir().unwrap();
    let spec = good_shards(dir.path(), 3, 8);
    let single = take(
        &mut loader(&config(&spec, 4, 2), Partition::SINGLE, None),
        6,
    );
    let r0 = take(
        &mut loader(
            &config(&spec, 2, 2),
            Partition {
                rank: 0,
                world_size: 2,
            },
            None,
        ),
        6,
    );
    let r1 = take(
        &mut loader(
            &config(&spec, 2, 1),
            Partition {
                rank: 1,
                world_size: 2,
            },
            None,
        ),
        6,
    );
    for k in 0..6 {
        let mut union: Vec<u64> = r0[k]
            .indices
            .iter()
            .chain(&r1[k].indices)
            .copied()
            .collect();
        union.sort();
        let mut one: Vec<u64> = single[k].indices.clone();
        one.sort();
        assert_eq!(union, one, "global batch {k}");
        assert!(r0[k].indices.iter().all(|g| g % 2 == 0));
        assert!(r1[k].indices.iter().all(|g| g % 2 == 1));
        // Same sample → same augmentation whatever the rank.
        for (row, g) in r0[k].indices.iter().enumerate() {
            let pos = single[k].indices.iter().position(|x| x == g).unwrap();
            let img =
                |b: &Batch, r: usize| b.field("image").unwrap().data[r * 48..(r + 1) * 48].to_vec();
            assert_eq!(img(&r0[k], row), img(&single[k], pos));
        }
    }
}

#[test]
fn resume_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = good_shards(dir.path(), 3, 9);
    // A bad sample too, so counters are part of what must resume.
    TarBuilder::new()
        .file("bad1.png", b"junk")
        .file("bad1.txt", b"x")
        .sample("ok1", 900)
        .write(&dir.path().join("00009.tar"));
    for (workers, world) in [(1, 1), (3, 1), (1, 2), (3, 2)] {
        for rank in 0..world {
            let p = Partition {
                rank,
                world_size: world,
            };
            let c = config(&spec, 2, workers);
            let straight = take(&mut loader(&c, p, None), 25);
            for cut in [1, 6, 7, 13, 20] {
                let mut first = loader(&c, p, None);
                let head = take(&mut first, cut);
                let cursor = first.cursor();
                drop(first);
                // Through JSON, as a checkpoint stores it.
                let cursor: Cursor =
                    serde_json::from_str(&serde_json::to_string(&cursor).unwrap()).unwrap();
                let mut resumed = loader(&c, p, Some(cursor));
                let tail = take(&mut resumed, 25 - cut);
                assert_eq!(head, straight[..cut], "workers {workers} world {world}");
                assert_eq!(
                    tail,
                    straight[cut..],
                    "resume at {cut}, workers {workers}, rank {rank}/{world}"
                );
            }
        }
    }
}

#[test]
fn cursor_from_other_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = good_shards(dir.path(), 2, 5);
    let mut l = loader(&config(&spec, 2, 1), Partition::SINGLE, None);
    take(&mut l, 2);
    let cursor = l.cursor();
    let mut other = config(&spec, 2, 1);
    other.seed = 18;
    let err = Loader::new(other, Partition::SINGLE, transform(), Some(cursor))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot resume"), "{err}");
}

#[test]
fn bad_input_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    TarBuilder::new()
        .sample("a/000", 1)
        .file("a/001.png", b"\x89PNG\r\n\x1a\nnot really")
        .file("a/001.txt", b"undecodable")
        .file("a/002.txt", b"no image")
        .file("a/003.png", &png(3, 8))
        .file("a/004.png", &png(4, 8))
        .file("a/004.txt", b"dup 1")
        .file("a/004.TXT", b"dup 2")
        .file("a/005.png", &png(5, 8))
        .file("a/005.txt", b"caf\xe9 lossy")
        .file("a/006.gif", b"GIF89a")
        .file("a/006.txt", b"unsupported")
        .write(&d.join("00000.tar"));
    // Truncated: a good sample, then a member cut in the middle.
    let big = png(11, 64);
    assert!(big.len() > 3000);
    let mut t = TarBuilder::new()
        .sample("b/000", 10)
        .file("b/001.txt", b"cut short")
        .file("b/001.png", &big)
        .bytes();
    // Drop the end-of-archive blocks and the last 2000 bytes of the PNG.
    t.truncate(t.len() - 1024 - (512 - big.len() % 512) % 512 - 2000);
    std::fs::write(d.join("00001.tar"), t).unwrap();
    std::fs::write(d.join("00002.tar"), b"this is not a tar file at all").unwrap();
    std::fs::write(d.join("00003.tar"), TarBuilder::new().bytes()).unwrap();
    TarBuilder::new()
        .sample("c/000", 20)
        .write(&d.join("00004.tar"));

    let mut c = config(&d.to_string_lossy(), 1, 2);
    c.drop_last = false;
    c.epochs = Some(1);
    c.shuffle = false;
    let mut l = loader(&c, Partition::SINGLE, None);
    let mut got = Vec::new();
    while let Some(b) = l.next_batch().unwrap() {
        got.extend(b.keys.clone());
    }
    assert_eq!(got, ["a/000", "a/005", "b/000", "c/000"]);
    let s = l.summary();
    let count = |r: &str| s.skipped.get(r).copied().unwrap_or(0);
    assert_eq!(count("undecodable_image"), 1, "{s:?}");
    assert_eq!(count("missing_image"), 1, "{s:?}");
    assert_eq!(count("missing_caption"), 1, "{s:?}");
    assert_eq!(count("duplicate_member"), 1, "{s:?}");
    assert_eq!(count("unsupported_image_format"), 1, "{s:?}");
    assert_eq!(count("corrupt_tar"), 1, "garbage: {s:?}");
    // The cut PNG loses its sample and nothing else: one event.
    assert_eq!(count("truncated_sample"), 1, "{s:?}");
    assert_eq!(count("empty_shard"), 1, "{s:?}");
    assert_eq!(s.warnings.get("lossy_caption_utf8"), Some(&1));
    assert_eq!(s.samples, 4);
}

#[test]
fn ranks_yield_equal_batch_counts_with_bad_samples() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut t = TarBuilder::new();
    for i in 0..40u32 {
        // Rank 0 (even positions without shuffle) gets every bad sample.
        if i % 2 == 0 && i % 8 == 0 {
            t = t
                .file(&format!("{i:04}.png"), b"broken")
                .file(&format!("{i:04}.txt"), b"x");
        } else {
            t = t.sample(&format!("{i:04}"), i);
        }
    }
    t.write(&d.join("00000.tar"));
    let mut c = config(&d.to_string_lossy(), 3, 2);
    c.shuffle = false;
    c.epochs = Some(2);
    let count = |rank| {
        let mut l = loader(
            &c,
            Partition {
                rank,
                world_size: 2,
            },
            None,
        );
        assert_eq!(l.batches_per_epoch(), Some(6)); // 40 / (2 × 3)
        let mut per_epoch = [0usize; 2];
        while let Some(b) = l.next_batch().unwrap() {
            assert_eq!(b.len(), 3);
            per_epoch[b.epoch as usize] += 1;
        }
        (per_epoch, l.summary().clone())
    };
    let (r0, s0) = count(0);
    let (r1, s1) = count(1);
    assert_eq!(r0, [6, 6]);
    assert_eq!(r1, [6, 6]);
    assert!(s0.skipped["undecodable_image"] >= 5, "{s0:?}");
    assert!(s1.skipped.is_empty(), "{s1:?}");
}

#[test]
fn a_rank_without_any_good_sample_errors_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    for i in 0..6 {
        t = t
            .file(&format!("{i}.png"), b"broken")
            .file(&format!("{i}.txt"), b"x");
    }
    t.write(&dir.path().join("00000.tar"));
    let mut l = loader(
        &config(&dir.path().to_string_lossy(), 2, 2),
        Partition::SINGLE,
        None,
    );
    let err = l.next_batch().unwrap_err().to_string();
    assert!(err.contains("no usable sample"), "{err}");
}

#[test]
fn gzipped_shards_read_like_plain_ones() {
    let dir = tempfile::tempdir().unwrap();
    let plain = TarBuilder::new().sample("k/0", 1).sample("k/1", 2).bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    std::fs::write(dir.path().join("a.tar.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(dir.path().join("b.tar"), &plain).unwrap();
    let run = |name: &str| {
        let mut c = config(&dir.path().join(name).to_string_lossy(), 2, 1);
        c.shuffle = false;
        c.epochs = Some(1);
        take(&mut loader(&c, Partition::SINGLE, None), 1)
    };
    let (a, b) = (run("a.tar.gz"), run("b.tar"));
    assert_eq!(a[0].keys, ["k/0", "k/1"]);
    assert_eq!(a[0].fields, b[0].fields);
}

#[test]
fn batches_become_burn_tensors() {
    use burn::backend::Flex;
    let dir = tempfile::tempdir().unwrap();
    let spec = good_shards(dir.path(), 1, 4);
    let b = take(
        &mut loader(&config(&spec, 2, 1), Partition::SINGLE, None),
        1,
    )
    .remove(0);
    let t = b.tensor::<Flex, 4>("image", &Default::default()).unwrap();
    assert_eq!(t.dims(), [2, 3, 4, 4]);
    let v: Vec<f32> = t.into_data().to_vec().unwrap();
    assert_eq!(v, b.field("image").unwrap().data);
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    assert!(b.tensor::<Flex, 3>("image", &Default::default()).is_err());
    assert!(b.tensor::<Flex, 4>("nope", &Default::default()).is_err());
}

/// Counts examples produced by the workers, to watch how far they run ahead of the consumer.
struct Counting {
    inner: ImageTransform,
    produced: Arc<std::sync::atomic::AtomicU64>,
}

impl unclip_data::SampleTransform for Counting {
    fn apply(
        &self,
        s: unclip_data::transform::DecodedSample,
        ctx: unclip_data::transform::SampleContext,
    ) -> Result<unclip_data::transform::Example, unclip_data::transform::TransformError> {
        self.produced
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.apply(s, ctx)
    }
}

#[test]
fn workers_never_run_further_ahead_than_the_prefetch_bound() {
    let dir = tempfile::tempdir().unwrap();
    let spec = good_shards(dir.path(), 4, 50);
    let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut c = config(&spec, 4, 3);
    c.prefetch_batches = 2;
    let bound = (c.prefetch_batches * c.batch_size + c.workers) as u64;
    let t = Arc::new(Counting {
        inner: ImageTransform::new(4),
        produced: produced.clone(),
    });
    let mut l = Loader::new(c, Partition::SINGLE, t, None).unwrap();
    let mut consumed = 0u64;
    for _ in 0..60 {
        // Give the workers time to run ahead as far as they can.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let ahead = produced.load(std::sync::atomic::Ordering::SeqCst) - consumed;
        assert!(
            ahead <= bound,
            "{ahead} samples decoded ahead, bound {bound}"
        );
        consumed += l.next_batch().unwrap().unwrap().len() as u64;
    }
}
