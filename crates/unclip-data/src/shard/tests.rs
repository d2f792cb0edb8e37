//! Tests of shard reading: grouping, truncation at every byte, size caps.
use super::*;

#[test]
fn member_paths_split_like_webdataset() {
    assert_eq!(
        split_member_path("a/b/x.seg.PNG"),
        Some(("a/b/x", "seg.png".into()))
    );
    assert_eq!(
        split_member_path("000123.jpg"),
        Some(("000123", "jpg".into()))
    );
    assert_eq!(
        split_member_path("dir.v2/img.txt"),
        Some(("dir.v2/img", "txt".into()))
    );
    assert_eq!(split_member_path("noext"), None);
    assert_eq!(split_member_path("a/.hidden"), None);
    assert_eq!(split_member_path("__key__"), None);
    assert_eq!(split_member_path("__meta__/x.json"), None);
}

fn tar_of(members: &[(&str, &[u8])], dirs: &[&str]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, d, &[][..]).unwrap();
    }
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn a_member_claiming_gigabytes_is_a_bad_sample_never_allocated() {
    // A valid sample, then one whose image's header claims 1 GiB (sparse zeros on disk).
    let mut bytes = tar_of(&[("a.jpg", b"data-a"), ("a.txt", b"data-t")], &[]);
    bytes.truncate(bytes.len() - 1024); // drop the end-of-archive blocks
    let mut h = tar::Header::new_ustar();
    h.set_path("b.jpg").unwrap();
    h.set_size(1 << 30);
    h.set_cksum();
    bytes.extend_from_slice(h.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.tar");
    std::fs::write(&path, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(bytes.len() as u64 + (1 << 30) + 1024).unwrap();
    let mut seen = Vec::new();
    read_shard(&path, 0, &mut |item| {
        if let ShardItem::Sample(s) = item {
            seen.push((s.key, s.invalid));
        }
        true
    });
    assert_eq!(
        seen,
        [
            ("a".to_string(), None),
            ("b".into(), Some("member_too_large"))
        ]
    );
    // A caption member over the caption cap is refused before it is read.
    let big = vec![b'x'; (crate::sample::MAX_CAPTION_BYTES + 1) as usize];
    let bytes = tar_of(&[("c.jpg", b"data-c"), ("c.txt", &big)], &[]);
    std::fs::write(&path, bytes).unwrap();
    let shards = vec![path.clone()];
    let opts = crate::sample::ReadOptions {
        caption: crate::CaptionSource::Txt,
        require_caption: true,
        max_pixels: 1,
    };
    read_shard(&path, 0, &mut |item| {
        if let ShardItem::Sample(s) = item {
            let r = crate::sample::read_sample(&shards, &opts, &mut MemberReader::default(), s);
            assert_eq!(r.err(), Some("caption_too_large"));
        }
        true
    });
}

fn groups(bytes: Vec<u8>, name: &str) -> Vec<(String, Vec<String>, Option<&'static str>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let mut out = Vec::new();
    let shards = vec![path.clone()];
    let mut reader = MemberReader::default();
    read_shard(&path, 0, &mut |item| {
        if let ShardItem::Sample(s) = item {
            // Every member's bytes are reachable, whichever way they are stored.
            for m in &s.members {
                let bytes = reader.read(&shards, &s, m).unwrap();
                assert!(bytes.starts_with(b"data-"), "{bytes:?}");
            }
            out.push((
                s.key.clone(),
                s.members.iter().map(|m| m.ext.clone()).collect(),
                s.invalid,
            ));
        }
        true
    });
    out
}

#[test]
fn consecutive_members_with_one_key_form_a_sample() {
    let bytes = tar_of(
        &[
            ("d/1.jpg", b"data-1j"),
            ("d/1.TXT", b"data-1t"),
            ("d/1.meta.json", b"data-1m"),
            ("__key__", b"data-k"),
            ("d/2.jpg", b"data-2j"),
            ("d/2.txt", b"data-2t"),
            ("d/2.txt", b"data-2t-again"),
            ("d/1.cls", b"data-1c"),
        ],
        &["d/"],
    );
    let expect = vec![
        (
            "d/1".to_string(),
            vec!["jpg".to_string(), "txt".into(), "meta.json".into()],
            None,
        ),
        (
            "d/2".to_string(),
            vec!["jpg".into(), "txt".into(), "txt".into()],
            Some("duplicate_member"),
        ),
        // A key seen before, after another key: a bad sample, never a second `d/1`.
        ("d/1".to_string(), vec!["cls".into()], Some("duplicate_key")),
    ];
    assert_eq!(groups(bytes.clone(), "a.tar"), expect);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &bytes).unwrap();
    assert_eq!(groups(gz.finish().unwrap(), "a.tar.gz"), expect);
}

/// Every cut of a 4-sample shard, at every byte: the samples whose members all arrived
/// whole are delivered (a sample cut between two members comes with the members it has),
/// the one whose member is cut is lost, and the cut is one counted event.
#[test]
fn a_cut_anywhere_loses_only_what_did_not_arrive() {
    let members: Vec<(String, Vec<u8>)> = (0..4)
        .flat_map(|i| {
            [
                (
                    format!("s{i}.png"),
                    format!("data-png-{i}-{}", "x".repeat(600)).into_bytes(),
                ),
                (format!("s{i}.txt"), format!("data-txt-{i}").into_bytes()),
            ]
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let full = tar_of(&refs, &[]);
    // (header start, data start, data end, padded end) of every member.
    let mut spans = Vec::new();
    let mut at = 0usize;
    for (_, d) in &members {
        let end = at + 512 + d.len();
        spans.push((at, at + 512, end, at + 512 + d.len().div_ceil(512) * 512));
        at = spans.last().unwrap().3;
    }
    let archive_end = at;
    let dir = tempfile::tempdir().unwrap();
    for cut in 0..=full.len() {
        // What must come out: members whose data arrived whole, grouped by key, minus the
        // sample whose member was cut.
        let mut arrived: Vec<(String, usize)> = Vec::new();
        let mut lost = None;
        let mut event = None;
        for (m, &(h, d, e, p)) in spans.iter().enumerate() {
            let key = members[m].0.split('.').next().unwrap().to_string();
            if cut >= p {
                match arrived.last_mut() {
                    Some((k, n)) if *k == key => *n += 1,
                    _ => arrived.push((key, 1)),
                }
                continue;
            }
            event = Some(if cut == h {
                "missing_end_of_archive"
            } else if cut < d || cut >= e {
                if cut >= e {
                    match arrived.last_mut() {
                        Some((k, n)) if *k == key => *n += 1,
                        _ => arrived.push((key, 1)),
                    }
                }
                "truncated_shard"
            } else {
                lost = Some(key);
                "truncated_sample"
            });
            break;
        }
        // One end-of-archive block is an end (tar writes two; GNU tar accepts one).
        if event.is_none() && cut < archive_end + 512 {
            event = Some(if cut == archive_end {
                "missing_end_of_archive"
            } else {
                "truncated_shard"
            });
        }
        if let Some(k) = &lost {
            arrived.retain(|(a, _)| a != k);
        }
        let mut got = Vec::new();
        let mut events = Vec::new();
        for (name, inline) in [("a.tar", false), ("a.tar.gz", true)] {
            let path = dir.path().join(name);
            let bytes = if inline {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut gz, &full[..cut]).unwrap();
                gz.finish().unwrap()
            } else {
                full[..cut].to_vec()
            };
            std::fs::write(&path, bytes).unwrap();
            let (mut g, mut e) = (Vec::new(), Vec::new());
            read_shard(&path, 0, &mut |item| {
                match item {
                    ShardItem::Sample(s) => g.push((s.key, s.members.len())),
                    ShardItem::Problem(r, _) | ShardItem::Warning(r, _) => e.push(r),
                }
                true
            });
            got.push(g);
            events.push(e);
        }
        for (g, e) in got.iter().zip(&events) {
            assert_eq!(g, &arrived, "cut at {cut}");
            let want: Vec<&str> = match event {
                Some(ev) if arrived.is_empty() && ev == "missing_end_of_archive" => {
                    vec![ev, "empty_shard"]
                }
                Some(_) if cut == 0 => vec!["missing_end_of_archive", "empty_shard"],
                Some(_) if cut < 512 => vec!["corrupt_tar"],
                Some(ev) => vec![ev],
                None => vec![],
            };
            assert_eq!(e, &want, "cut at {cut}");
        }
    }
}
