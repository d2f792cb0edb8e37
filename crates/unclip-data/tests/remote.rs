//! Remote shards through a loopback HTTP server that cuts connections, answers slowly, fails
//! and 404s, and through `pipe:` commands: the batches are those of the same shards on disk,
//! every sample arrives once, and what cannot be read is a named error or a counted skip.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::good_shards;
use common::http::{Fault, Server};
use unclip_data::{Batch, ImageTransform, Loader, LoaderConfig, Partition};

fn config(shards: &str, batch: usize) -> LoaderConfig {
    let mut c = LoaderConfig::new(shards, batch);
    c.workers = 2;
    c.seed = 17;
    c.shuffle_buffer = 7;
    c.prefetch_batches = 2;
    c.samples_per_epoch = Some(40);
    c.remote.retries = 3;
    c.remote.backoff_s = unclip_config::Positive(0.01);
    c.remote.timeout_s = unclip_config::Positive(10.0);
    c
}

fn loader(c: &LoaderConfig) -> Loader {
    let mut t = ImageTransform::new(4);
    t.resize_to = Some(6);
    t.crop = unclip_data::transform::Crop::Random;
    Loader::new(c.clone(), Partition::SINGLE, Arc::new(t), None).unwrap()
}

fn take(l: &mut Loader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| l.next_batch().unwrap().unwrap()).collect()
}

/// Four shards of ten samples on disk and on a server under `/s/`.
fn world(dir: &Path) -> (String, Server) {
    let local = good_shards(dir, 4, 10);
    let server = Server::start();
    for s in 0..4 {
        let name = format!("{s:05}.tar");
        server.put(
            &format!("/s/{name}"),
            std::fs::read(dir.join(&name)).unwrap(),
        );
    }
    (local, server)
}

#[test]
fn remote_shards_give_the_batches_of_local_ones_despite_faults() {
    let dir = tempfile::tempdir().unwrap();
    let (local, server) = world(dir.path());
    server.fault(
        "/s/00000.tar",
        Fault::CutAfter {
            bytes: 3000,
            times: 2,
        },
    );
    server.fault("/s/00001.tar", Fault::Slow { pause_ms: 2 });
    server.fault("/s/00002.tar", Fault::Fail { times: 2 });
    let remote = format!("{}/s/{{00000..00003}}.tar", server.base);
    // Two epochs: 13 batches of 3 each.
    let want = take(&mut loader(&config(&local, 3)), 26);
    let mut l = loader(&config(&remote, 3));
    let got = take(&mut l, 26);
    assert_eq!(got, want);
    assert_eq!(l.summary().skipped_total(), 0, "{:?}", l.summary());
    // The cut shard was resumed where each connection dropped, not fetched again whole.
    let log = server.log();
    let resumed: Vec<u64> = log
        .iter()
        .filter(|(p, _)| p == "/s/00000.tar")
        .map(|(_, from)| *from)
        .collect();
    assert!(resumed.contains(&3000), "{log:?}");
    assert!(resumed.contains(&6000), "{log:?}");
}

#[test]
fn a_missing_shard_is_a_counted_skip_or_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, server) = world(dir.path());
    let spec = format!(
        "{}/s/{{00000..00001}}.tar::{}/s/gone.tar",
        server.base, server.base
    );
    let mut c = config(&spec, 4);
    c.drop_last = false;
    c.epochs = Some(1);
    c.shuffle = false;
    let mut l = loader(&c);
    let mut keys = Vec::new();
    while let Some(b) = l.next_batch().unwrap() {
        keys.extend(b.keys);
    }
    assert_eq!(keys.len(), 20);
    assert_eq!(l.summary().skipped.get("unreadable_shard"), Some(&1));
    // A 404 cannot heal: asked for once.
    let asked = server
        .log()
        .iter()
        .filter(|(p, _)| p == "/s/gone.tar")
        .count();
    assert_eq!(asked, 1);

    c.remote.strict = true;
    let mut l = loader(&c);
    let err = loop {
        match l.next_batch() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a strict run ended without the error"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        err.contains("HTTP 404") && err.contains("gone.tar"),
        "{err}"
    );
}

#[test]
fn pipe_commands_stream_shards_and_failing_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let local = good_shards(dir.path(), 4, 10);
    let pipes = format!("pipe:cat {}/{{00000..00003}}.tar", dir.path().display());
    let want = take(&mut loader(&config(&local, 3)), 13);
    assert_eq!(take(&mut loader(&config(&pipes, 3)), 13), want);

    // A command that writes half a shard and fails is run again (passing over the bytes it
    // already gave) and, when it keeps failing, named with its exit status.
    let path = dir.path().join("00000.tar");
    let half = std::fs::metadata(&path).unwrap().len() / 2;
    let flaky = format!(
        "pipe:head -c {half} {} && exit 3 # 00000.tar",
        path.display()
    );
    let mut c = config(&flaky, 2);
    c.drop_last = false;
    c.epochs = Some(1);
    c.remote.strict = true;
    let mut l = loader(&c);
    let err = loop {
        match l.next_batch() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no error"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        err.contains("exit status: 3") && err.contains("00000.tar"),
        "{err}"
    );
}

#[test]
fn training_on_remote_shards_needs_the_epoch_size() {
    let mut c = LoaderConfig::new("http://127.0.0.1:9/{0..3}.tar", 2);
    c.samples_per_epoch = None;
    let err = Loader::new(c, Partition::SINGLE, Arc::new(ImageTransform::new(4)), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("samples_per_epoch"), "{err}");
}

#[test]
fn resume_over_http_is_exact_and_does_not_fetch_finished_shards_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_, server) = world(dir.path());
    server.fault(
        "/s/00002.tar",
        Fault::CutAfter {
            bytes: 2000,
            times: 1,
        },
    );
    let remote = format!("{}/s/{{00000..00003}}.tar", server.base);
    let mut c = config(&remote, 3);
    c.epochs = Some(1);
    let straight = take(&mut loader(&c), 13);
    // Rank 1 of 2 resumes exactly too (its own half of every global batch).
    let half = |cursor: Option<unclip_data::Cursor>| {
        let p = Partition {
            rank: 1,
            world_size: 2,
        };
        Loader::new(c.clone(), p, Arc::new(ImageTransform::new(4)), cursor).unwrap()
    };
    let rank1 = take(&mut half(None), 6);
    let mut first = half(None);
    let head = take(&mut first, 3);
    let tail = take(&mut half(Some(first.cursor())), 3);
    assert_eq!([head, tail].concat(), rank1);
    for cut in [2, 6, 9, 11] {
        let mut first = loader(&c);
        let head = take(&mut first, cut);
        let cursor = first.cursor();
        drop(first);
        let cursor: unclip_data::Cursor =
            serde_json::from_str(&serde_json::to_string(&cursor).unwrap()).unwrap();
        server.clear_log();
        let mut resumed = Loader::new(
            c.clone(),
            Partition::SINGLE,
            Arc::new({
                let mut t = ImageTransform::new(4);
                t.resize_to = Some(6);
                t.crop = unclip_data::transform::Crop::Random;
                t
            }),
            Some(cursor),
        )
        .unwrap();
        let tail = take(&mut resumed, 13 - cut);
        assert!(resumed.next_batch().unwrap().is_none());
        assert_eq!(head, straight[..cut], "cut {cut}");
        assert_eq!(tail, straight[cut..], "resume at {cut}");
        // A shard whose samples were all consumed before the cursor is not asked for again.
        let fetched: std::collections::BTreeSet<String> =
            server.log().into_iter().map(|(p, _)| p).collect();
        let consumed: Vec<&String> = straight[..cut - 1].iter().flat_map(|b| &b.keys).collect();
        let mut finished = 0;
        for s in 0..4 {
            let n = consumed
                .iter()
                .filter(|k| k.starts_with(&format!("{s:05}")))
                .count();
            if n == 10 {
                finished += 1;
                let path = format!("/s/{s:05}.tar");
                assert!(!fetched.contains(&path), "cut {cut}: {path} fetched again");
            }
        }
        if cut == 11 {
            assert!(finished >= 1, "the test must cover a finished shard");
            assert!(fetched.len() < 4, "cut {cut}: {fetched:?}");
        }
    }
}
