//! Writing webdataset / img2dataset-layout tar shards.
//!
//! A shard is `{shard:05}.tar` holding consecutive members `<key>.<ext>` per sample, next to a
//! `{shard:05}_stats.json` in img2dataset's spirit. Keys follow img2dataset: the shard number
//! padded to 5 digits, then the in-shard index padded to the digits of `samples_per_shard - 1`
//! (at least 4). Headers are ustar with mtime 0, uid/gid 0 and mode 0644, so the same samples
//! always give the same bytes. Each shard is written atomically: a crash never leaves a partial
//! `.tar` behind.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use unclip_fs::AtomicFile;

/// The skip reason img2dataset's stats always carry; kept at 0 when nothing failed.
pub const FAILED_TO_DECODE: &str = "failed_to_decode";

/// What one finished shard holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardSummary {
    /// The `.tar` file.
    pub path: PathBuf,
    /// Samples written to it.
    pub samples: u64,
    /// Inputs skipped while this shard was open, by reason.
    pub skipped: BTreeMap<String, u64>,
}

/// Writes samples into consecutive shards of `samples_per_shard` samples each.
pub struct ShardWriter {
    dir: PathBuf,
    samples_per_shard: u64,
    key_digits: usize,
    shard: u64,
    open: Option<tar::Builder<AtomicFile>>,
    in_shard: u64,
    skipped: BTreeMap<String, u64>,
    finished: Vec<ShardSummary>,
    /// Names of the files written so far, recorded in [`WRITTEN_FILE`].
    written: Vec<String>,
}

/// The file in an output folder listing the files `unclip data pack`/`synth` wrote there: what a
/// later `--overwrite` may remove (nothing else).
pub const WRITTEN_FILE: &str = ".unclip-written";

/// The img2dataset key of sample `index` of shard `shard`.
pub fn shard_key(shard: u64, index: u64, samples_per_shard: u64) -> String {
    format_key(shard, index, key_digits(samples_per_shard))
}

fn format_key(shard: u64, index: u64, digits: usize) -> String {
    format!("{shard:05}{index:0digits$}")
}

fn key_digits(samples_per_shard: u64) -> usize {
    samples_per_shard
        .saturating_sub(1)
        .max(1)
        .to_string()
        .len()
        .max(4)
}

impl ShardWriter {
    /// A writer whose first shard will be `dir/00000.tar`; `dir` is created when needed.
    pub fn new(dir: impl Into<PathBuf>, samples_per_shard: u64) -> io::Result<Self> {
        if samples_per_shard == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "samples per shard must be at least 1",
            ));
        }
        Ok(Self {
            dir: dir.into(),
            samples_per_shard,
            key_digits: key_digits(samples_per_shard),
            shard: 0,
            open: None,
            in_shard: 0,
            skipped: BTreeMap::new(),
            finished: Vec::new(),
            written: Vec::new(),
        })
    }

    /// The key the next written sample will get.
    pub fn next_key(&self) -> String {
        format_key(self.shard, self.in_shard, self.key_digits)
    }

    /// Append one sample made of `(extension, bytes)` members, in that order; returns its key.
    /// The shard is closed as soon as it is full.
    pub fn write_sample(&mut self, members: &[(&str, &[u8])]) -> io::Result<String> {
        let key = self.next_key();
        if self.open.is_none() {
            let file = AtomicFile::create(self.tar_path(self.shard))?;
            self.open = Some(tar::Builder::new(file));
        }
        let builder = self.open.as_mut().expect("shard opened above");
        for (ext, bytes) in members {
            append_member(builder, &format!("{key}.{ext}"), bytes)?;
        }
        self.in_shard += 1;
        if self.in_shard == self.samples_per_shard {
            self.close_shard()?;
        }
        Ok(key)
    }

    /// Count an input that was not written, against the shard currently being filled.
    pub fn record_skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
    }

    /// Close the last shard (an empty one if only skips were recorded since the previous) and
    /// return every shard written.
    pub fn finish(mut self) -> io::Result<Vec<ShardSummary>> {
        if self.open.is_some() || !self.skipped.is_empty() {
            self.close_shard()?;
        }
        Ok(self.finished)
    }

    fn tar_path(&self, shard: u64) -> PathBuf {
        self.dir.join(format!("{shard:05}.tar"))
    }

    fn close_shard(&mut self) -> io::Result<()> {
        let file = match self.open.take() {
            Some(builder) => builder.into_inner()?,
            None => {
                let mut b = tar::Builder::new(AtomicFile::create(self.tar_path(self.shard))?);
                b.finish()?;
                b.into_inner()?
            }
        };
        file.commit()?;
        let summary = ShardSummary {
            path: self.tar_path(self.shard),
            samples: self.in_shard,
            skipped: std::mem::take(&mut self.skipped),
        };
        let stats = stats_json(&summary);
        let stats_name = format!("{:05}_stats.json", self.shard);
        unclip_fs::write_atomic(self.dir.join(&stats_name), stats.as_bytes())?;
        self.written.push(format!("{:05}.tar", self.shard));
        self.written.push(stats_name);
        let mut list = self.written.join("\n");
        list.push('\n');
        unclip_fs::write_atomic(self.dir.join(WRITTEN_FILE), list.as_bytes())?;
        self.finished.push(summary);
        self.shard += 1;
        self.in_shard = 0;
        Ok(())
    }
}

/// img2dataset-style stats: `count` inputs, `successes` written, then one count per skip reason.
fn stats_json(summary: &ShardSummary) -> String {
    let failed: u64 = summary.skipped.values().sum();
    let mut map = serde_json::Map::new();
    map.insert("count".into(), (summary.samples + failed).into());
    map.insert("successes".into(), summary.samples.into());
    map.insert("failed".into(), failed.into());
    map.insert(FAILED_TO_DECODE.into(), 0.into());
    for (reason, n) in &summary.skipped {
        map.insert(reason.clone(), (*n).into());
    }
    let mut s = serde_json::to_string_pretty(&serde_json::Value::Object(map))
        .expect("a map of numbers serializes");
    s.push('\n');
    s
}

/// Make sure `dir` holds no shards from an earlier run: with `overwrite` the ones an earlier
/// `pack`/`synth` wrote (listed in [`WRITTEN_FILE`]) are removed, otherwise it is an error (a
/// stale `00007.tar` would silently join the new dataset). Shard files that no unclip command
/// recorded writing are never removed: they are an error either way.
pub fn prepare_output_dir(dir: &Path, overwrite: bool) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut stale = Vec::new();
    let mut temporary = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if unclip_fs::is_temporary(&path) {
            // Left by a writer that was killed mid-file: never data, removed with --overwrite.
            temporary.push(path);
        } else if name.is_some_and(|n| n.ends_with(".tar") || n.ends_with("_stats.json")) {
            stale.push(path);
        }
    }
    if overwrite {
        for path in temporary {
            std::fs::remove_file(path)?;
        }
    }
    stale.sort();
    if stale.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already holds {} shard file(s) (e.g. {}); pass --overwrite to replace \
                 them, or choose another output folder",
                dir.display(),
                stale.len(),
                stale[0].display()
            ),
        ));
    }
    let ours: std::collections::HashSet<String> =
        match std::fs::read_to_string(dir.join(WRITTEN_FILE)) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(e),
        };
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    if let Some(foreign) = stale
        .iter()
        .find(|p| !name(p).is_some_and(|n| ours.contains(&n)))
    {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} was not written by an earlier `unclip data pack`/`synth` into this folder \
                 (it is not listed in {}), so --overwrite will not remove it: move it away or \
                 choose another output folder",
                foreign.display(),
                dir.join(WRITTEN_FILE).display()
            ),
        ));
    }
    for path in stale {
        std::fs::remove_file(path)?;
    }
    let _ = std::fs::remove_file(dir.join(WRITTEN_FILE));
    Ok(())
}

/// One regular member with deterministic metadata (mode 0644, mtime 0, uid/gid 0).
fn append_member<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, path, bytes)
}

/// Write `members` (`(path, bytes)`, in order) as a tar file, atomically — the inverse of
/// [`read_members`] (for repairing or editing shards, and tests).
pub fn write_shard(path: &Path, members: &[(String, Vec<u8>)]) -> io::Result<()> {
    let mut builder = tar::Builder::new(AtomicFile::create(path)?);
    for (name, bytes) in members {
        append_member(&mut builder, name, bytes)?;
    }
    builder.into_inner()?.commit()
}

/// Every member of a tar shard as `(path, bytes)`, in file order (for inspection and tests).
pub fn read_members(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut archive = tar::Archive::new(File::open(path)?);
    let mut members = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        members.push((name, bytes));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_img2dataset() {
        assert_eq!(shard_key(3, 17, 10_000), "000030017");
        assert_eq!(shard_key(0, 5, 1000), "000000005");
        assert_eq!(shard_key(12, 123_456, 1_000_000), "00012123456");
        assert_eq!(shard_key(1, 0, 1), "000010000");
    }

    #[test]
    fn rolls_shards_counts_skips_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(dir.path(), 2).unwrap();
        let mut keys = Vec::new();
        for i in 0..5u8 {
            if i == 3 {
                w.record_skip("missing_caption");
            }
            assert_eq!(w.next_key(), shard_key(i as u64 / 2, i as u64 % 2, 2));
            keys.push(
                w.write_sample(&[("txt", &[b'a' + i]), ("json", b"{}")])
                    .unwrap(),
            );
        }
        w.record_skip(FAILED_TO_DECODE);
        let shards = w.finish().unwrap();
        assert_eq!(
            keys,
            [
                "000000000",
                "000000001",
                "000010000",
                "000010001",
                "000020000"
            ]
        );
        assert_eq!(shards.len(), 3);
        assert_eq!(
            shards.iter().map(|s| s.samples).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!(shards[1].skipped["missing_caption"], 1);
        assert_eq!(shards[2].skipped[FAILED_TO_DECODE], 1);

        let members = read_members(&dir.path().join("00001.tar")).unwrap();
        let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "000010000.txt",
                "000010000.json",
                "000010001.txt",
                "000010001.json"
            ]
        );
        assert_eq!(members[2].1, b"d");

        let stats: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("00001_stats.json")).unwrap())
                .unwrap();
        assert_eq!(stats["count"], 3);
        assert_eq!(stats["successes"], 2);
        assert_eq!(stats["missing_caption"], 1);
        assert_eq!(stats[FAILED_TO_DECODE], 0);
    }

    #[test]
    fn headers_are_deterministic_ustar() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["a", "b"] {
            let mut w = ShardWriter::new(dir.path().join(sub), 10).unwrap();
            w.write_sample(&[("txt", b"hello")]).unwrap();
            w.finish().unwrap();
        }
        let a = std::fs::read(dir.path().join("a/00000.tar")).unwrap();
        let b = std::fs::read(dir.path().join("b/00000.tar")).unwrap();
        assert_eq!(a, b);
        let mut archive = tar::Archive::new(a.as_slice());
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        let h = entry.header();
        assert!(h.as_ustar().is_some());
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!(h.mode().unwrap(), 0o644);
    }

    #[test]
    fn stale_shards_are_refused_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        prepare_output_dir(&dir.path().join("missing"), false).unwrap();
        let mut w = ShardWriter::new(dir.path(), 4).unwrap();
        w.write_sample(&[("txt", b"x")]).unwrap();
        w.finish().unwrap();
        std::fs::write(dir.path().join("notes.md"), b"keep").unwrap();
        let err = prepare_output_dir(dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("--overwrite"), "{err}");
        // A shard no unclip command wrote here is never removed, even with --overwrite.
        std::fs::write(dir.path().join("00099.tar"), b"someone else's").unwrap();
        let err = prepare_output_dir(dir.path(), true).unwrap_err();
        assert!(err.to_string().contains("00099.tar"), "{err}");
        assert!(dir.path().join("00000.tar").exists());
        std::fs::remove_file(dir.path().join("00099.tar")).unwrap();
        // A temporary file left by a killed writer is no shard: removed with --overwrite.
        std::fs::write(dir.path().join(".tmp-1-0-00005.tar"), b"partial").unwrap();
        prepare_output_dir(dir.path(), true).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["notes.md"]);
    }

    #[test]
    fn only_skips_still_give_a_shard_with_stats() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(dir.path(), 4).unwrap();
        w.record_skip(FAILED_TO_DECODE);
        let shards = w.finish().unwrap();
        assert_eq!(shards.len(), 1);
        assert_eq!(shards[0].samples, 0);
        assert!(read_members(&shards[0].path).unwrap().is_empty());

        let empty = ShardWriter::new(dir.path().join("none"), 4).unwrap();
        assert!(empty.finish().unwrap().is_empty());
    }
}
