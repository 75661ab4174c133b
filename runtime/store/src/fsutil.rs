//! Small filesystem helpers the store relies on: crash-safe writes and advisory locks.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A name no other writer (thread or process) of this store picks at the same time.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}.{}.{n}.{nanos}", std::process::id())
}

/// Writes `data` to `path` so that a crash leaves either the old or the new content:
/// temp file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, true)
}

/// Replaces `path` atomically (temp file, rename) without waiting for the disk: readers see
/// the old or the new content, and a crash may lose the new one. For state rewritten on every
/// container start (leases), where an fsync only slows starts down.
pub fn write_replace(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, false)
}

/// Temp file beside `path`, renamed over it; with `durable`, the file is synced before the
/// rename and the directory after it.
fn replace(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(unique_name(&format!(".{name}.tmp")));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            fsync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and missing parents) reachable by root only, and takes group and other
/// access away from an existing one. For the top of a tree whose content must stay away from
/// unprivileged host users (image layers carry setuid files and device nodes with their
/// modes): a 0700 top makes everything below unreachable for them, whatever its modes.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // Created 0700 (the umask can only take more away), never wider for a moment.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}

/// Makes a rename or create in `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An advisory `flock` held until dropped. Pulls and imports hold the store's lock shared
/// while they write; garbage collection holds it exclusive, so it never sweeps a blob or a
/// layer that a writer is about to reference.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    pub fn shared(path: &Path) -> io::Result<FileLock> {
        Self::lock(path, libc::LOCK_SH)
    }

    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        Self::lock(path, libc::LOCK_EX)
    }

    /// The exclusive lock if nobody holds the file, else `None`.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        match Self::lock(path, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn lock(path: &Path, op: libc::c_int) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(unique_name("berth-fsutil"));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("index.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        write_replace(&p, b"three").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exclusive_lock_excludes() {
        let dir = std::env::temp_dir().join(unique_name("berth-lock"));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("lock");
        let shared = FileLock::shared(&p).unwrap();
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(shared);
        assert!(FileLock::try_exclusive(&p).unwrap().is_some());
        fs::remove_dir_all(&dir).unwrap();
    }
}
