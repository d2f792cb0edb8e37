//! Streaming a tar shard into samples with webdataset's grouping rules.
//!
//! - A member's key is its path (folders included) up to the first dot of its base name; the
//!   rest of the base name, lowercased, is its extension (`a/b/x.seg.PNG` → key `a/b/x`,
//!   extension `seg.png`). Base names without such a split are ignored, as are non-regular
//!   members and webdataset's `__meta__` members.
//! - Consecutive members with the same key form one sample. A repeated extension inside one
//!   sample invalidates that sample.
//!
//! Plain `.tar` files are read header by header with seeks over member data: a sample only
//! records where its members' bytes lie, and the bytes are read later by whichever worker
//! decodes it (see [`MemberData`]). That keeps the shuffle buffer small, lets every rank scan the
//! whole stream cheaply, and makes replaying a stream on resume fast. Compressed shards are read
//! sequentially with their bytes inline.
//!
//! Remote shards (URLs, `pipe:` commands, see `crate::remote`) are streamed once with their
//! bytes inline.
//!
//! A shard cut short or damaged loses only what did not arrive whole: every sample whose
//! members were all complete before the damage is delivered, and the damage is one counted
//! problem (see [`ShardItem`]).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::remote::{shard_name, RemoteConfig};
use crate::tarstream::{End, FileSource, Source, StreamSource, TarStream};

/// Where a member's bytes are.
#[derive(Debug, Clone)]
pub enum MemberData {
    /// Read already (compressed shards, tests).
    Bytes(Vec<u8>),
    /// At a byte range of the (uncompressed) shard file.
    At { offset: u64, len: u64 },
}

#[derive(Debug, Clone)]
pub struct Member {
    /// Lowercased extension, without the leading dot (`jpg`, `txt`, `seg.png`).
    pub ext: String,
    pub data: MemberData,
}

impl Member {
    /// The member's size in bytes (from its tar header when not read yet).
    pub fn len(&self) -> u64 {
        match &self.data {
            MemberData::Bytes(b) => b.len() as u64,
            MemberData::At { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The largest member a sample may have (256 MiB): a bigger one (a tar header claiming gigabytes,
/// a sparse file) makes its sample the bad sample `member_too_large` without its bytes being
/// read or allocated.
pub const MAX_MEMBER_BYTES: u64 = 256 << 20;

/// One group of members sharing a key.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub key: String,
    /// Index of the shard in the loader's shard list.
    pub shard: u32,
    pub members: Vec<Member>,
    /// Set when the grouping rules already rule the sample out (a skip reason).
    pub invalid: Option<&'static str>,
}

impl RawSample {
    pub fn member(&self, ext: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.ext == ext)
    }
}

/// What reading a shard produces, in order.
#[derive(Debug, Clone)]
pub enum ShardItem {
    Sample(RawSample),
    /// A shard-level problem (a skip reason and a detail), counted once: `truncated_sample` (a
    /// member cut short: its sample is lost), `truncated_shard` (the shard ends inside a header:
    /// nothing is lost), `corrupt_tar` (a header that is not a tar header), `unreadable_shard`
    /// (the shard cannot be opened or stops being readable), `empty_shard`. Reading stops after
    /// any of them but `empty_shard`; every sample whose members all arrived whole before it is
    /// delivered first.
    Problem(&'static str, String),
    /// Something worth counting that loses nothing: `missing_end_of_archive` (the shard ends at
    /// a member boundary without tar's end-of-archive blocks — a cut there cannot be told from
    /// a complete shard).
    Warning(&'static str, String),
}

/// `base_plus_ext` of webdataset: `(key, extension)` or `None` for members that are ignored.
pub fn split_member_path(path: &str) -> Option<(&str, String)> {
    let base_start = path.rfind('/').map_or(0, |i| i + 1);
    let base = &path[base_start..];
    let is_meta = (base_start == 0 && base.starts_with("__") && base.ends_with("__"))
        || (path.starts_with("__")
            && path[2..]
                .split('/')
                .next()
                .is_some_and(|s| s.ends_with("__")));
    if is_meta {
        return None;
    }
    let dot = base.find('.')?;
    if dot == 0 {
        return None;
    }
    let key = &path[..base_start + dot];
    let ext = base[dot + 1..].to_lowercase();
    Some((key, ext))
}

struct Grouper<'a> {
    shard: u32,
    current: Option<RawSample>,
    emit: &'a mut dyn FnMut(ShardItem) -> bool,
    samples: u64,
    stopped: bool,
    /// Keys delivered so far: a key seen again is the bad sample `duplicate_key` (joins by
    /// key would otherwise silently pair one key's rows with two samples).
    seen: std::collections::HashSet<String>,
}

impl Grouper<'_> {
    fn send(&mut self, item: ShardItem) {
        if !self.stopped && !(self.emit)(item) {
            self.stopped = true;
        }
    }

    fn push(&mut self, key: &str, ext: String, data: MemberData) {
        if self.current.as_ref().is_some_and(|s| s.key != key) {
            self.flush();
        }
        let sample = self.current.get_or_insert_with(|| RawSample {
            key: key.to_string(),
            shard: self.shard,
            members: Vec::new(),
            invalid: None,
        });
        if sample.members.iter().any(|m| m.ext == ext) {
            sample.invalid = Some("duplicate_member");
        }
        sample.members.push(Member { ext, data });
    }

    /// Rules out the sample being gathered.
    fn invalidate(&mut self, reason: &'static str) {
        if let Some(s) = &mut self.current {
            s.invalid = Some(reason);
        }
    }

    /// Delivers the sample being gathered: every member it has arrived whole.
    fn flush(&mut self) {
        if let Some(mut s) = self.current.take() {
            self.samples += 1;
            if !self.seen.insert(s.key.clone()) {
                s.invalid = Some("duplicate_key");
            }
            self.send(ShardItem::Sample(s));
        }
    }

    /// The data of the member named `name` was cut: its sample is lost (the one being gathered,
    /// when the member belongs to it), every complete one before it delivered.
    fn cut_member(&mut self, name: &str, detail: String) {
        let Some((key, _)) = split_member_path(name) else {
            self.flush();
            return self.send(ShardItem::Problem("truncated_shard", detail));
        };
        if self.current.as_ref().is_some_and(|s| s.key != key) {
            self.flush();
        }
        self.current = None;
        self.samples += 1;
        self.send(ShardItem::Problem("truncated_sample", detail));
    }

    /// The shard stops here for `reason`; the sample being gathered arrived whole.
    fn stop(&mut self, reason: &'static str, detail: String) {
        self.flush();
        self.send(ShardItem::Problem(reason, detail));
    }
}

fn is_compressed(path: &Path) -> bool {
    let name = path.to_string_lossy().to_lowercase();
    name.ends_with(".gz") || name.ends_with(".tgz")
}

/// Stream the samples of one shard to `emit` (return `false` from it to stop early). Returns the
/// number of samples (key groups) seen, including invalid and truncated ones. Remote shards are
/// fetched with the default [`RemoteConfig`].
pub fn read_shard(path: &Path, shard: u32, emit: &mut dyn FnMut(ShardItem) -> bool) -> u64 {
    read_shard_with(path, shard, &RemoteConfig::default(), emit)
}

/// [`read_shard`] with the retry settings of remote shards (`crate::remote`). A remote shard is
/// streamed once, its members' bytes inline.
pub fn read_shard_with(
    path: &Path,
    shard: u32,
    remote: &RemoteConfig,
    emit: &mut dyn FnMut(ShardItem) -> bool,
) -> u64 {
    let mut g = Grouper {
        shard,
        current: None,
        emit,
        samples: 0,
        stopped: false,
        seen: Default::default(),
    };
    let shown = crate::remote::display(path);
    if crate::remote::is_remote(path) {
        match crate::remote::open(path, remote) {
            Ok(r) => read_stream(
                r,
                is_compressed(Path::new(&shard_name(path))),
                &shown,
                &mut g,
            ),
            Err(e) => g.stop("unreadable_shard", format!("{shown}: {e}")),
        }
        return g.samples;
    }
    let opened = File::open(path).and_then(|f| Ok((f.metadata()?.len(), f)));
    let (len, file) = match opened {
        Ok(x) => x,
        Err(e) => {
            g.stop("unreadable_shard", format!("{shown}: {e}"));
            return 0;
        }
    };
    let reader = BufReader::with_capacity(1 << 16, file);
    if is_compressed(path) {
        read_stream(reader, true, &shown, &mut g);
    } else {
        let src = FileSource {
            reader,
            pos: 0,
            len,
        };
        read_archive(TarStream::new(src), false, &shown, &mut g);
    }
    g.samples
}

/// Reads a tar (gzipped when `gz`) front to back, members' bytes inline.
fn read_stream(r: impl Read, gz: bool, shown: &str, g: &mut Grouper<'_>) {
    let r = BufReader::with_capacity(1 << 16, r);
    if gz {
        let gz = flate2::read::MultiGzDecoder::new(r);
        read_archive(TarStream::new(StreamSource(gz)), true, shown, g);
    } else {
        read_archive(TarStream::new(StreamSource(r)), true, shown, g);
    }
}

/// Groups the members of `tar` into samples (`inline`: with their bytes; else with where they
/// are), then says how the shard ended.
fn read_archive<S: Source>(mut tar: TarStream<S>, inline: bool, shown: &str, g: &mut Grouper<'_>) {
    let end = loop {
        if g.stopped {
            return;
        }
        let entry = match tar.next_entry() {
            Ok(e) => e,
            Err(end) => break end,
        };
        let member = entry
            .regular
            .then(|| split_member_path(&entry.name))
            .flatten()
            .map(|(k, e)| (k.to_string(), e));
        let too_large = member.is_some() && entry.size > MAX_MEMBER_BYTES;
        let read = match (&member, inline && !too_large) {
            (Some(_), true) => tar.read_data(&entry).map(MemberData::Bytes),
            _ => tar.skip_data(&entry).map(|()| MemberData::At {
                offset: entry.offset,
                len: entry.size,
            }),
        };
        match (read, member) {
            (Ok(data), Some((key, ext))) => {
                g.push(&key, ext, data);
                if too_large {
                    g.invalidate("member_too_large");
                }
            }
            (Ok(_), None) => {}
            (Err(End::CutInData), _) => {
                let detail = format!("{shown}: member `{}` is cut short", entry.name);
                g.cut_member(&entry.name, detail);
                return;
            }
            (Err(end), _) => break end,
        }
        if let Err(end) = tar.skip_padding(&entry) {
            break end;
        }
    };
    let reported = matches!(end, End::CutInHeader | End::Corrupt(_) | End::Failed(_));
    match end {
        End::Clean => g.flush(),
        End::NoMarker => {
            g.flush();
            g.send(ShardItem::Warning(
                "missing_end_of_archive",
                format!("{shown}: no end-of-archive blocks (the shard may be cut short)"),
            ));
        }
        End::CutInHeader => g.stop(
            "truncated_shard",
            format!("{shown}: the shard ends inside a tar header"),
        ),
        End::CutInData => g.stop("truncated_shard", format!("{shown}: cut short")),
        End::Corrupt(why) => g.stop("corrupt_tar", format!("{shown}: {why}")),
        End::Failed(e) => g.stop("unreadable_shard", format!("{shown}: {e}")),
    }
    if g.samples == 0 && !reported {
        g.send(ShardItem::Problem("empty_shard", shown.to_string()));
    }
}

/// Reads member bytes that a sample only points at, keeping the last shard file open.
#[derive(Default)]
pub struct MemberReader {
    open: Option<(u32, File)>,
}

impl MemberReader {
    pub fn read(
        &mut self,
        shards: &[std::path::PathBuf],
        sample: &RawSample,
        member: &Member,
    ) -> std::io::Result<Vec<u8>> {
        match &member.data {
            MemberData::Bytes(b) => Ok(b.clone()),
            MemberData::At { offset, len } => {
                if self.open.as_ref().map(|(s, _)| *s) != Some(sample.shard) {
                    let path = shards.get(sample.shard as usize).ok_or_else(|| {
                        std::io::Error::other(format!("no shard #{}", sample.shard))
                    })?;
                    self.open = Some((sample.shard, File::open(path)?));
                }
                let file = &mut self.open.as_mut().expect("opened above").1;
                let mut buf = vec![0u8; *len as usize];
                read_exact_at(file, &mut buf, *offset)?;
                Ok(buf)
            }
        }
    }
}

#[cfg(unix)]
fn read_exact_at(file: &mut File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(file: &mut File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Count the samples (key groups) of a shard without reading member data.
pub fn count_samples(path: &Path) -> u64 {
    read_shard(path, 0, &mut |_| true)
}

/// A digest of what a shard holds as [`read_shard`] sees it: every sample's key and its
/// members' extensions and byte lengths, and every problem, in order (SHA-256, hex). It costs a
/// header scan (no member data is read) and changes when a shard is re-packed, re-ordered,
/// cut, or has a member replaced by one of another size; copying or moving the file keeps it.
/// A member replaced by different bytes of exactly the same length is not seen.
#[derive(Clone, Default)]
pub struct Fingerprint(sha2::Sha256);

impl Fingerprint {
    /// Adds one item of the shard's stream.
    pub fn add(&mut self, item: &ShardItem) {
        use sha2::Digest;
        match item {
            ShardItem::Sample(s) => {
                self.0.update(b"S");
                self.0.update((s.key.len() as u64).to_le_bytes());
                self.0.update(s.key.as_bytes());
                for m in &s.members {
                    self.0.update((m.ext.len() as u64).to_le_bytes());
                    self.0.update(m.ext.as_bytes());
                    self.0.update(m.len().to_le_bytes());
                }
            }
            ShardItem::Problem(reason, _) | ShardItem::Warning(reason, _) => {
                self.0.update(b"P");
                self.0.update(reason.as_bytes());
            }
        }
    }

    pub fn finish(self) -> String {
        use sha2::Digest;
        format!("{:x}", self.0.finalize())
    }
}

/// The [`Fingerprint`] of a shard (a header scan for local shards).
pub fn fingerprint(path: &Path) -> String {
    let mut fp = Fingerprint::default();
    read_shard(path, 0, &mut |item| {
        fp.add(&item);
        true
    });
    fp.finish()
}

#[cfg(test)]
mod tests {
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
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
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
}
