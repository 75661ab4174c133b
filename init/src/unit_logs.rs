//! The units' logs (berth-init's own messages are [`crate::log`]): each unit's stdout/stderr
//! pipe is read by the event loop (never blocking) into `logs/<unit>.log`, rotated by size,
//! keeping a few old files (`<unit>.log.1` newest … `<unit>.log.N` oldest).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LogPolicy {
    pub dir: PathBuf,
    /// Rotate once the current file would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
}

impl LogPolicy {
    pub fn new(dir: PathBuf) -> LogPolicy {
        LogPolicy {
            dir,
            max_bytes: 1 << 20,
            keep: 3,
        }
    }

    /// The current log file of `unit`.
    pub fn path_of(&self, unit: &str) -> PathBuf {
        self.dir.join(format!("{unit}.log"))
    }

    /// The `n`th rotated file of `unit` (1 is the newest).
    pub fn rotated(&self, unit: &str, n: u32) -> PathBuf {
        self.dir.join(format!("{unit}.log.{n}"))
    }
}

/// How often berth-init says that a unit's log cannot be written (a full disk fails every
/// chunk of output, hundreds a second).
const COMPLAINT_INTERVAL: Duration = Duration::from_secs(60);

/// One unit's log file, opened on first write (silent units cost no descriptor).
pub struct UnitLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    /// Output lost since the last successful write, and why (a marker in the log says so once
    /// writing works again).
    dropped: u64,
    dropped_why: &'static str,
    /// When berth-init last complained, and the failures it kept quiet about since.
    complained: Option<Instant>,
    unreported: u64,
}

impl UnitLog {
    pub fn new(policy: &LogPolicy, unit: &str) -> UnitLog {
        UnitLog {
            path: policy.path_of(unit),
            file: None,
            size: 0,
            dropped: 0,
            dropped_why: "",
            complained: None,
            unreported: 0,
        }
    }

    /// Bytes of output lost since the last successful write (0 while the log is written).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends `data`. What cannot be written is counted and, once a write succeeds again,
    /// noted in the log as `[berth: N bytes of output dropped: no space]`. Returns a complaint
    /// for berth-init's own log, at most one per minute, when bytes were dropped.
    pub fn write(&mut self, policy: &LogPolicy, data: &[u8]) -> Option<String> {
        if self.dropped > 0 {
            let marker = format!(
                "[berth: {} bytes of output dropped: {}]\n",
                self.dropped, self.dropped_why
            );
            if self.append(policy, marker.as_bytes()).is_ok() {
                self.dropped = 0;
            }
        }
        let error = if self.dropped > 0 {
            // The marker could not be written: neither can the output.
            self.dropped += data.len() as u64;
            return self.complain(None);
        } else {
            match self.append(policy, data) {
                Ok(()) => return None,
                Err((written, e)) => {
                    self.dropped += (data.len() - written) as u64;
                    self.dropped_why = match e.raw_os_error() {
                        Some(libc::ENOSPC) | Some(libc::EDQUOT) => "no space",
                        _ => "write error",
                    };
                    e
                }
            }
        };
        self.complain(Some(error))
    }

    fn complain(&mut self, error: Option<io::Error>) -> Option<String> {
        let now = Instant::now();
        let due = self
            .complained
            .is_none_or(|t| now.saturating_duration_since(t) >= COMPLAINT_INTERVAL);
        if !due {
            self.unreported += 1;
            return None;
        }
        self.complained = Some(now);
        let why = error.map_or_else(|| self.dropped_why.to_string(), |e| e.to_string());
        let more = std::mem::take(&mut self.unreported);
        Some(if more > 0 {
            format!(
                "cannot write log {}: {why} ({more} more failures in the last minute)",
                self.path.display()
            )
        } else {
            format!("cannot write log {}: {why}", self.path.display())
        })
    }

    /// Writes all of `data`, or returns how much of it was written and the error.
    fn append(&mut self, policy: &LogPolicy, data: &[u8]) -> Result<(), (usize, io::Error)> {
        if self.file.is_some() && self.size + data.len() as u64 > policy.max_bytes {
            self.rotate(policy).map_err(|e| (0, e))?;
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| (0, e))?;
                self.size = f.metadata().map_err(|e| (0, e))?.len();
                self.file.insert(f)
            }
        };
        let mut written = 0;
        while written < data.len() {
            match file.write(&data[written..]) {
                Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    written += n;
                    self.size += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((written, e)),
            }
        }
        Ok(())
    }

    fn rotate(&mut self, policy: &LogPolicy) -> io::Result<()> {
        self.file = None;
        self.size = 0;
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if policy.keep == 0 {
            return std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(numbered(policy.keep));
        for n in (1..policy.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))
    }
}

/// The open output pipes of all units, keyed by an id the event loop carries.
pub struct Pipes {
    next: u64,
    open: HashMap<u64, (usize, OwnedFd)>,
}

/// Most bytes taken from one pipe per wake-up, so one chatty unit cannot starve the loop.
const READ_BUDGET: usize = 256 * 1024;

impl Default for Pipes {
    fn default() -> Self {
        Pipes {
            next: 1,
            open: HashMap::new(),
        }
    }
}

impl Pipes {
    /// Keeps `fd` as output of unit `unit`; returns its id.
    pub fn add(&mut self, unit: usize, fd: OwnedFd) -> u64 {
        let id = self.next;
        self.next += 1;
        self.open.insert(id, (unit, fd));
        id
    }

    pub fn fd(&self, id: u64) -> Option<BorrowedFd<'_>> {
        self.open.get(&id).map(|(_, fd)| fd.as_fd())
    }

    /// Reads what is available from pipe `id` and hands it to `sink(unit, bytes)`. Returns
    /// the pipe's fd when it reached end of file (the caller unwatches and drops it).
    pub fn drain(&mut self, id: u64, mut sink: impl FnMut(usize, &[u8])) -> Option<OwnedFd> {
        let (unit, fd) = self.open.get(&id)?;
        let unit = *unit;
        let mut buf = [0u8; 16 * 1024];
        let mut file = File::from(fd.try_clone().ok()?);
        let mut taken = 0;
        let eof = loop {
            match file.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    sink(unit, &buf[..n]);
                    taken += n;
                    if taken >= READ_BUDGET {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        if eof {
            self.open.remove(&id).map(|(_, fd)| fd)
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = crate::testutil::scratch_dir("logs");
        let policy = LogPolicy {
            dir: dir.clone(),
            max_bytes: 10,
            keep: 2,
        };
        let mut log = UnitLog::new(&policy, "u");
        for chunk in ["aaaaaa", "bbbbbb", "cccccc", "dddddd"] {
            assert!(log.write(&policy, chunk.as_bytes()).is_none());
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("u.log"), "dddddd");
        assert_eq!(read("u.log.1"), "cccccc");
        assert_eq!(read("u.log.2"), "bbbbbb");
        assert!(!dir.join("u.log.3").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_disk_drops_output_with_one_complaint_and_a_marker_afterwards() {
        let dir = crate::testutil::scratch_dir("logs-full");
        let policy = LogPolicy::new(dir.clone());
        // Every write to /dev/full fails with ENOSPC, as on a full disk.
        std::os::unix::fs::symlink("/dev/full", dir.join("u.log")).unwrap();
        let mut log = UnitLog::new(&policy, "u");
        let complaint = log.write(&policy, b"lost 1\n").unwrap();
        assert!(complaint.contains("No space left on device"), "{complaint}");
        for _ in 0..500 {
            assert_eq!(log.write(&policy, b"lost 2\n"), None);
        }
        assert_eq!(log.dropped(), 3507);
        // Space comes back.
        std::fs::remove_file(dir.join("u.log")).unwrap();
        log.file = None;
        assert_eq!(log.write(&policy, b"back\n"), None);
        assert_eq!(log.dropped(), 0);
        assert_eq!(
            std::fs::read_to_string(dir.join("u.log")).unwrap(),
            "[berth: 3507 bytes of output dropped: no space]\nback\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drains_pipes_until_eof() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        crate::launch::process::set_nonblocking(&r).unwrap();
        let mut pipes = Pipes::default();
        let id = pipes.add(7, r);
        let mut w = File::from(w);
        w.write_all(b"hello").unwrap();
        let mut got = Vec::new();
        assert!(pipes.drain(id, |u, b| got.push((u, b.to_vec()))).is_none());
        assert_eq!(got, vec![(7, b"hello".to_vec())]);
        drop(w);
        assert!(pipes.drain(id, |_, _| {}).is_some());
        assert!(pipes.is_empty());
    }
}
