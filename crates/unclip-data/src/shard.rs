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

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

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
    /// A shard-level problem (a skip reason and a detail). Reading the shard stops after
    /// `corrupt_tar` and `unreadable_shard`; a sample cut short by the problem is dropped and
    /// counted as `truncated_sample`.
    Problem(&'static str, String),
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
}

impl Grouper<'_> {
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

    fn flush(&mut self) {
        if let Some(s) = self.current.take() {
            self.samples += 1;
            if !self.stopped && !(self.emit)(ShardItem::Sample(s)) {
                self.stopped = true;
            }
        }
    }

    fn problem(&mut self, reason: &'static str, detail: String) {
        if self.current.take().is_some() {
            self.samples += 1;
            if !self.stopped {
                self.stopped = !(self.emit)(ShardItem::Problem("truncated_sample", detail.clone()));
            }
        }
        if !self.stopped {
            self.stopped = !(self.emit)(ShardItem::Problem(reason, detail));
        }
    }
}

fn is_compressed(path: &Path) -> bool {
    let name = path.to_string_lossy().to_lowercase();
    name.ends_with(".gz") || name.ends_with(".tgz")
}

/// Stream the samples of one shard to `emit` (return `false` from it to stop early). Returns the
/// number of samples (key groups) seen, including invalid and truncated ones.
pub fn read_shard(path: &Path, shard: u32, emit: &mut dyn FnMut(ShardItem) -> bool) -> u64 {
    let mut g = Grouper {
        shard,
        current: None,
        emit,
        samples: 0,
        stopped: false,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            g.problem("unreadable_shard", format!("{}: {e}", path.display()));
            return 0;
        }
    };
    let result = if is_compressed(path) {
        read_sequential(
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, file)),
            &mut g,
        )
    } else {
        read_seeking(file, &mut g)
    };
    match result {
        Ok(()) => {
            g.flush();
            if g.samples == 0 && !g.stopped {
                (g.emit)(ShardItem::Problem(
                    "empty_shard",
                    path.display().to_string(),
                ));
            }
        }
        Err(e) => g.problem("corrupt_tar", format!("{}: {e}", path.display())),
    }
    g.samples
}

fn member_name(entry: &tar::Entry<'_, impl Read>) -> Option<String> {
    let kind = entry.header().entry_type();
    if !(kind.is_file() || kind == tar::EntryType::Continuous) {
        return None;
    }
    entry.path().ok().map(|p| p.to_string_lossy().into_owned())
}

fn read_seeking(file: File, g: &mut Grouper<'_>) -> std::io::Result<()> {
    let file_len = file.metadata()?.len();
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 16, file));
    for entry in archive.entries_with_seek()? {
        if g.stopped {
            return Ok(());
        }
        let entry = entry?;
        let Some(name) = member_name(&entry) else {
            continue;
        };
        let (offset, len) = (entry.raw_file_position(), entry.size());
        if offset.saturating_add(len) > file_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("member `{name}` runs past the end of the file (truncated shard)"),
            ));
        }
        if let Some((key, ext)) = split_member_path(&name) {
            g.push(key, ext, MemberData::At { offset, len });
        }
    }
    Ok(())
}

fn read_sequential(reader: impl Read, g: &mut Grouper<'_>) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        if g.stopped {
            return Ok(());
        }
        let mut entry = entry?;
        let Some(name) = member_name(&entry) else {
            continue;
        };
        let Some((key, ext)) = split_member_path(&name).map(|(k, e)| (k.to_string(), e)) else {
            continue;
        };
        let mut bytes = Vec::with_capacity(entry.size().min(1 << 30) as usize);
        entry.read_to_end(&mut bytes)?;
        g.push(&key, ext, MemberData::Bytes(bytes));
    }
    Ok(())
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
            ("d/1".to_string(), vec!["cls".into()], None),
        ];
        assert_eq!(groups(bytes.clone(), "a.tar"), expect);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        assert_eq!(groups(gz.finish().unwrap(), "a.tar.gz"), expect);
    }
}
