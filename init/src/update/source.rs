//! Where `update-apply` reads a bundle from. A local file or stdin is read directly; a URL or
//! an OCI reference is fetched by `berth-runtime fetch SOURCE` (berth-init has no HTTP client:
//! the network side, with the machine config's `[registries]` settings, is berth-runtime's),
//! whose stdout is the bundle stream [`apply`] verifies as it reads.
//!
//! The child's exit status is part of the stream: its end counts as the end of the bundle only
//! when the fetch succeeded, so a fetch that fails after its last byte (a blob digest that does
//! not match) fails the apply before the slot is made bootable.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use berth_store::registry::Reference;

use super::{apply, Applied, Policy, Progress, Target, UpdateError};

/// Most of the fetch's stderr kept for the error message (its last line is the reason).
const STDERR_TAIL: usize = 8 << 10;

/// A bundle source as given to `update-apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Stdin,
    File(PathBuf),
    /// An `http://`/`https://` URL or an image reference: fetched by berth-runtime.
    Remote(String),
}

impl Source {
    /// `-` is stdin; absolute paths, `./` and `../` paths and existing files are files;
    /// `http://` and `https://` are URLs; anything else must parse as an image reference
    /// (`registry/repo:tag`, `registry/repo@sha256:…`).
    pub fn classify(text: &str) -> Result<Source, String> {
        if text == "-" {
            return Ok(Source::Stdin);
        }
        if text.starts_with('/') || text.starts_with("./") || text.starts_with("../") {
            return Ok(Source::File(text.into()));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Source::Remote(text.into()));
        }
        if Path::new(text).exists() {
            return Ok(Source::File(text.into()));
        }
        match Reference::parse(text) {
            Ok(_) => Ok(Source::Remote(text.into())),
            Err(e) => Err(format!(
                "{text:?} is not an existing file, an http(s) URL or an image reference ({})",
                e.reason
            )),
        }
    }
}

/// How remote sources are fetched: the berth-runtime binary and the machine config it reads
/// `[registries]` from (as for image pulls).
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub runtime_bin: PathBuf,
    pub machine_config: PathBuf,
}

impl Fetcher {
    /// The paths of a Berth machine.
    pub fn of_this_machine() -> Fetcher {
        let paths = crate::boot::Paths::for_mode(&crate::boot::Mode::Pid1);
        Fetcher {
            runtime_bin: paths.runtime_bin,
            machine_config: paths.machine_config,
        }
    }
}

/// Verifies and writes the bundle from `source` into `target` (see [`apply`]).
pub fn apply_from(
    source: &Source,
    fetcher: &Fetcher,
    target: &Target,
    policy: &Policy,
    progress: &mut dyn FnMut(Progress),
) -> Result<Applied, UpdateError> {
    match source {
        Source::Stdin => apply(io::stdin().lock(), target, policy, progress),
        Source::File(path) => {
            let file = std::fs::File::open(path).map_err(|source| UpdateError::Io {
                path: path.display().to_string(),
                source,
            })?;
            apply(file, target, policy, progress)
        }
        Source::Remote(text) => {
            let mut fetch = FetchChild::spawn(fetcher, text)?;
            let result = apply(&mut fetch, target, policy, progress);
            let fetch_error = fetch.finish();
            match (result, fetch_error) {
                (Err(error), Some(fetch)) => Err(UpdateError::Fetch {
                    error: Box::new(error),
                    fetch,
                }),
                (result, _) => result,
            }
        }
    }
}

/// A running `berth-runtime fetch`, read as the bundle. Killed and reaped when finished or
/// dropped, whatever happened.
struct FetchChild {
    child: Child,
    stdout: ChildStdout,
    stderr: Option<JoinHandle<Vec<u8>>>,
    status: Option<ExitStatus>,
}

impl FetchChild {
    fn spawn(fetcher: &Fetcher, source: &str) -> Result<FetchChild, UpdateError> {
        let mut cmd = Command::new(&fetcher.runtime_bin);
        cmd.arg("fetch")
            .arg("--config")
            .arg(&fetcher.machine_config)
            .arg(source)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let parent = nix::unistd::getpid();
        // SAFETY: runs in the forked child before exec; only async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || crate::signals::die_with_parent(parent));
        }
        let spawn_error = |error| UpdateError::FetchSpawn {
            command: format!("{} fetch", fetcher.runtime_bin.display()),
            error,
        };
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_error(io::Error::other("no pipes to the child")));
        };
        // Drained all along (a full pipe would stall the fetch); only the tail is kept.
        let stderr = std::thread::spawn(move || {
            let mut tail = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
            tail
        });
        Ok(FetchChild {
            child,
            stdout,
            stderr: Some(stderr),
            status: None,
        })
    }

    /// Ends the child (killed if still running) and reaps it; the reason it failed (its last
    /// stderr line, or its exit status) unless it succeeded or was stopped here (apply gave
    /// up first: its reason is the one that counts).
    fn finish(&mut self) -> Option<String> {
        if self.status.is_none() {
            let running = matches!(self.child.try_wait(), Ok(None));
            if running {
                let _ = self.child.kill();
            }
            self.status = self.child.wait().ok();
            if running {
                let _ = self.stderr.take().map(JoinHandle::join);
                return None;
            }
        }
        let tail = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let status = self.status?;
        if status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&tail);
        let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty());
        Some(match line {
            Some(line) => line.to_string(),
            None => format!("berth-runtime fetch: {status}"),
        })
    }
}

impl Read for FetchChild {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            // The end of the stream is the end of the bundle only if the fetch succeeded.
            let status = match self.status {
                Some(s) => s,
                None => {
                    let s = self.child.wait()?;
                    self.status = Some(s);
                    s
                }
            };
            if !status.success() {
                return Err(io::Error::other(format!(
                    "berth-runtime fetch failed ({status})"
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for FetchChild {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sources() {
        assert_eq!(Source::classify("-"), Ok(Source::Stdin));
        assert_eq!(
            Source::classify("/nonexistent/b.bundle"),
            Ok(Source::File("/nonexistent/b.bundle".into()))
        );
        assert_eq!(
            Source::classify("./b.bundle"),
            Ok(Source::File("./b.bundle".into()))
        );
        assert_eq!(
            Source::classify("https://h.example/b"),
            Ok(Source::Remote("https://h.example/b".into()))
        );
        assert_eq!(
            Source::classify("registry.example/berth/os:0.2.0"),
            Ok(Source::Remote("registry.example/berth/os:0.2.0".into()))
        );
        // An existing relative file wins over a reference of the same spelling (tests run
        // in the package directory).
        assert!(Reference::parse("src/lib.rs").is_ok());
        assert_eq!(
            Source::classify("src/lib.rs"),
            Ok(Source::File("src/lib.rs".into()))
        );
        assert!(Source::classify("Not A Reference").is_err());
    }
}
