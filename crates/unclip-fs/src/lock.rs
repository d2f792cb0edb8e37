//! One writer per folder: an exclusive OS advisory lock (`flock` on Unix, `LockFileEx` on
//! Windows, through `std::fs::File::try_lock`) on the file `.unclip-lock` inside the folder a
//! command writes. The OS drops the lock when the process ends however it ends, so a crash
//! never leaves a stale lock; the file itself stays (removing it would let a third process lock
//! a fresh file while a second still holds the old one) and only says who held it last.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside a locked folder.
pub const LOCK_FILE: &str = ".unclip-lock";

/// Why a folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{folder} is in use by another unclip process ({holder}); wait for it to finish or \
         stop it, or use another folder"
    )]
    Held { folder: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An exclusive lock on a folder, held until dropped (or the process ends).
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
    folder: PathBuf,
}

impl FolderLock {
    /// Creates `folder` if needed and locks it for `command` (e.g. `"unclip train"`), or
    /// fails at once, naming the holder's command, pid and host, when another process holds
    /// it.
    pub fn acquire(folder: &Path, command: &str) -> Result<FolderLock, LockError> {
        let path = folder.join(LOCK_FILE);
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(folder).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    folder: folder.to_path_buf(),
                    holder: holder(&path),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let me = format!("{command}, pid {} on {}\n", std::process::id(), host_name());
        file.set_len(0).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        file.write_all(me.as_bytes()).map_err(io_err)?;
        file.flush().map_err(io_err)?;
        Ok(FolderLock {
            _file: file,
            folder: folder.to_path_buf(),
        })
    }

    /// The locked folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }
}

/// Who holds the lock, from the lock file (the holder writes it right after locking; a reader
/// that comes in between waits a moment for it).
fn holder(path: &Path) -> String {
    for _ in 0..20 {
        let mut text = String::new();
        if let Ok(mut f) = File::open(path) {
            let _ = f.read_to_string(&mut text);
        }
        let text = text.trim();
        if !text.is_empty() {
            return text.to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    "holder unknown".into()
}

/// This machine's name, for lock messages (a run folder may sit on a shared file system).
pub fn host_name() -> String {
    let from_file = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_string());
    from_file
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "an unknown host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("run");
        let first = FolderLock::acquire(&folder, "unclip train").unwrap();
        assert_eq!(first.folder(), folder);
        let err = FolderLock::acquire(&folder, "unclip train").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("unclip train"), "{msg}");
        assert!(msg.contains(&host_name()), "{msg}");
        drop(first);
        let again = FolderLock::acquire(&folder, "unclip embed").unwrap();
        let text = fs::read_to_string(folder.join(LOCK_FILE)).unwrap();
        assert!(text.starts_with("unclip embed, pid"), "{text}");
        drop(again);
    }
}
