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

#[cfg(test)]
mod tests;
