//! Atomic file writes, used for every file unclip produces (PNG images included), and the
//! folder lock that keeps a second writer out ([`FolderLock`]).
//!
//! A file is written to a temporary sibling, flushed and fsynced, then renamed over the target
//! and the directory fsynced. A reader (or a later run after a crash or a full disk) sees either
//! the old complete file or the new complete file, never a partial one. Temporary files carry a
//! `.tmp-` prefix so they are recognisable and never mistaken for data.
//!
//! Place in the pipeline (data → embed → models → train / infer → eval → cli): a leaf under
//! every step that writes a file.

mod lock;
pub use lock::{host_name, FolderLock, LockError, LOCK_FILE};

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file being written atomically. Dropping it without [`AtomicFile::commit`] removes the
/// temporary file and leaves the target untouched.
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_path(target: &Path) -> io::Result<PathBuf> {
    let name = target.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a file path: {}", target.display()),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        n,
        name.to_string_lossy()
    );
    Ok(target.with_file_name(tmp_name))
}

impl AtomicFile {
    /// Start writing `target`; its parent directory is created if needed.
    pub fn create(target: impl AsRef<Path>) -> io::Result<Self> {
        let target = target.as_ref().to_path_buf();
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let tmp = tmp_path(&target)?;
        let file = File::create(&tmp)?;
        Ok(Self {
            target,
            tmp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The final path this file will have.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flush, fsync, rename over the target, fsync the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let result = (|| {
            let file = writer.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            fs::rename(&self.tmp, &self.target)
        })();
        if let Err(e) = result {
            // A full disk fails the flush or the fsync: leave no temporary file behind.
            let _ = fs::remove_file(&self.tmp);
            return Err(e);
        }
        sync_dir(&self.target);
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn sync_dir(target: &Path) {
    // Best effort: some filesystems refuse fsync on directories.
    if let Some(parent) = target.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

/// Write `bytes` to `target` atomically.
pub fn write_atomic(target: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
    let mut f = AtomicFile::create(target)?;
    f.write_all(bytes)?;
    f.commit()
}

/// Writes `img` as a PNG file atomically (encoding errors are `InvalidData`).
pub fn write_png(target: impl AsRef<Path>, img: &image::RgbImage) -> io::Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    write_atomic(target, &bytes)
}

/// True for the temporary files [`AtomicFile`] leaves behind after a crash.
pub fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy().starts_with(".tmp-"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_discards() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.txt");
        write_atomic(&p, b"one").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"two-partial").unwrap();
            // dropped without commit: as if the process failed mid-write
        }
        assert_eq!(fs::read(&p).unwrap(), b"one");
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| is_temporary(p))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        write_atomic(&p, b"three").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
    }
}
