//! Long image operations run as child processes (`berth-runtime image pull …`, `… prune`),
//! never inside PID 1: the event loop reads their output pipe and the reaper reports their
//! exit. A bounded number run at once and a bounded history is kept, each with the last lines
//! of its output.
//!
//! No job can hold a slot forever: each has a deadline (the machine config's
//! `registries.pull_timeout` plus a grace) after which its process group is killed, a client
//! can cancel it, and it dies with berth-init (`PR_SET_PDEATHSIG`) or at shutdown.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_runtime::registry::RegistriesConfig;
use log::{info, warn};
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::event::{after, Key, Reactor, Timer};
use crate::launch::process::{set_nonblocking, DEFAULT_PATH};
use crate::reaper::ExitStatus;

/// Jobs running at once.
pub const MAX_RUNNING: usize = 4;
/// Jobs remembered (finished ones are forgotten oldest first).
const MAX_KEPT: usize = 32;
/// Output lines kept per job, and the longest line kept.
const KEEP_LINES: usize = 40;
const MAX_LINE: usize = 512;
/// Most time a job gets past `pull_timeout` (the pull enforces that one itself; this covers
/// waits outside its transfers, such as the store's locks, and the last unpack).
const MAX_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Pull,
    Prune,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    /// Stopped by a client (`DELETE /v1/images/jobs/{id}`).
    Cancelled,
}

/// A job as the API shows it.
#[derive(Debug, Serialize)]
pub struct Job {
    pub id: u64,
    pub kind: JobKind,
    /// The image reference (pulls).
    pub target: String,
    pub state: JobState,
    pub exit_code: Option<i32>,
    /// The last line of output of a failed job.
    pub error: Option<String>,
    /// The last lines of output (progress, then the result or error).
    pub output: VecDeque<String>,
    /// The process (and its group), until reaped; it may outlive `Running` once killed.
    #[serde(skip)]
    pid: Option<i32>,
    #[serde(skip)]
    pipe: Option<OwnedFd>,
    #[serde(skip)]
    partial: Vec<u8>,
    /// How long it may run before it is killed.
    #[serde(skip)]
    limit: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{MAX_RUNNING} image jobs are running already; try again when one has finished")]
    Busy,
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("job {0} has finished already")]
    Finished(u64),
}

pub struct Jobs {
    runtime: PathBuf,
    store: PathBuf,
    config: PathBuf,
    jobs: BTreeMap<u64, Job>,
    next: u64,
}

impl Jobs {
    /// Jobs on the image store `store`, with registry settings from `config`.
    pub fn new(runtime: PathBuf, store: &Path, config: &Path) -> Jobs {
        Jobs {
            runtime,
            store: store.to_path_buf(),
            config: config.to_path_buf(),
            jobs: BTreeMap::new(),
            next: 1,
        }
    }

    pub fn store(&self) -> &Path {
        &self.store
    }

    pub fn list(&self) -> Vec<&Job> {
        self.jobs.values().collect()
    }

    pub fn get(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// How long a job may run: the pull timeout of the machine config as it is now (the
    /// pull reads the same file), plus a grace.
    fn time_limit(&self) -> Duration {
        let timeout = match RegistriesConfig::load(&self.config) {
            Ok(c) => c.pull_timeout(),
            Err(e) => {
                warn!("{e}; image jobs get the default pull timeout");
                RegistriesConfig::default().pull_timeout()
            }
        };
        timeout + timeout.min(MAX_GRACE)
    }

    /// Starts `berth-runtime image <kind> [target]` on the store.
    pub fn start(
        &mut self,
        kind: JobKind,
        target: &str,
        r: &mut dyn Reactor,
    ) -> Result<&Job, JobError> {
        let running = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .count();
        if running >= MAX_RUNNING {
            return Err(JobError::Busy);
        }
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "image".as_ref(),
            "--store".as_ref(),
            self.store.as_os_str(),
            "--config".as_ref(),
            self.config.as_os_str(),
        ];
        match kind {
            JobKind::Pull => args.extend(["pull", target].map(std::ffi::OsStr::new)),
            JobKind::Prune => args.push(std::ffi::OsStr::new("prune")),
        }
        let (pid, pipe) = spawn(&self.runtime, &args).map_err(|source| JobError::Spawn {
            program: self.runtime.display().to_string(),
            source,
        })?;
        let id = self.next;
        self.next += 1;
        if let Err(e) = r.watch(pipe.as_fd(), Key::JobOutput(id), false) {
            warn!("job {id}: cannot watch its output: {e}");
        }
        let limit = self.time_limit();
        r.schedule(after(Instant::now(), limit), Timer::Job(id));
        info!("job {id}: image {kind:?} {target} started, pid {pid}");
        self.jobs.insert(
            id,
            Job {
                id,
                kind,
                target: target.to_string(),
                state: JobState::Running,
                exit_code: None,
                error: None,
                output: VecDeque::new(),
                pid: Some(pid),
                pipe: Some(pipe),
                partial: Vec::new(),
                limit,
            },
        );
        self.forget_old();
        self.jobs.get(&id).ok_or(JobError::Busy)
    }

    fn forget_old(&mut self) {
        while self.jobs.len() > MAX_KEPT {
            let oldest = self
                .jobs
                .values()
                .find(|j| j.state != JobState::Running && j.pipe.is_none())
                .map(|j| j.id);
            match oldest {
                Some(id) => {
                    self.jobs.remove(&id);
                }
                None => break,
            }
        }
    }

    /// A job's output pipe is readable (or closed).
    pub fn on_output(&mut self, id: u64, r: &mut dyn Reactor) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(fd) = job.pipe.as_ref().and_then(|p| p.try_clone().ok()) else {
            return;
        };
        let mut file = File::from(fd);
        let mut buf = [0u8; 8192];
        // Bounded per wake-up so a chatty job cannot starve the loop.
        let mut eof = false;
        for _ in 0..32 {
            match file.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => job.take_output(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            if let Some(pipe) = job.pipe.take() {
                r.unwatch(pipe.as_fd());
            }
            if !job.partial.is_empty() {
                let rest = std::mem::take(&mut job.partial);
                job.push_line(&rest);
            }
            job.settle_error();
        }
    }

    /// `DELETE /v1/images/jobs/{id}`: kills a running job; it is `cancelled` at once and its
    /// slot is free. `None` for an unknown job.
    pub fn cancel(&mut self, id: u64) -> Option<Result<&Job, JobError>> {
        let job = self.jobs.get_mut(&id)?;
        if job.state != JobState::Running {
            return Some(Err(JobError::Finished(id)));
        }
        job.kill();
        job.state = JobState::Cancelled;
        job.error = Some("cancelled".to_string());
        info!("job {id}: image {:?} {}: cancelled", job.kind, job.target);
        Some(Ok(job))
    }

    /// A job's deadline passed: kill it if it still runs.
    pub fn on_deadline(&mut self, id: u64) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.state != JobState::Running {
            return;
        }
        job.kill();
        job.state = JobState::Failed;
        let limit = job.limit.as_secs_f64();
        job.error = Some(format!(
            "killed: still running after {limit:.1} s (registries.pull_timeout and a grace)"
        ));
        warn!(
            "job {id}: image {:?} {}: killed after {limit:.1} s",
            job.kind, job.target
        );
    }

    /// Kills every running job (berth-init is shutting down).
    pub fn kill_all(&mut self) {
        for job in self.jobs.values_mut() {
            if job.state == JobState::Running {
                job.kill();
                job.state = JobState::Cancelled;
                job.error = Some("cancelled: berth-init is shutting down".to_string());
            }
        }
    }

    /// A reaped child; false when it is not a job.
    pub fn on_exit(&mut self, pid: i32, status: ExitStatus) -> bool {
        let Some(job) = self.jobs.values_mut().find(|j| j.pid == Some(pid)) else {
            return false;
        };
        job.pid = None;
        job.exit_code = Some(status.code());
        if job.state == JobState::Running {
            job.state = if status.success() {
                JobState::Succeeded
            } else {
                JobState::Failed
            };
        }
        job.settle_error();
        info!(
            "job {}: image {:?} {}: {status}",
            job.id, job.kind, job.target
        );
        true
    }
}

impl Job {
    /// SIGKILL to the job's process group (its own, see [`spawn`]), while it is unreaped.
    fn kill(&self) {
        if let Some(pid) = self.pid {
            match killpg(Pid::from_raw(pid), Signal::SIGKILL) {
                // Exited already, waiting to be reaped.
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => warn!("job {}: cannot kill process group {pid}: {e}", self.id),
            }
        }
    }

    fn take_output(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.push_line(&line);
        }
        // A line without end is cut rather than grown without bound.
        if self.partial.len() > MAX_LINE {
            let line = std::mem::take(&mut self.partial);
            self.push_line(&line);
        }
    }

    fn push_line(&mut self, line: &[u8]) {
        let mut text = String::from_utf8_lossy(line).trim_end().to_string();
        if text.is_empty() {
            return;
        }
        if text.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        if self.output.len() == KEEP_LINES {
            self.output.pop_front();
        }
        self.output.push_back(text);
    }

    /// A failed job's error is its last line of output (unless it was killed: that says why).
    fn settle_error(&mut self) {
        if self.state == JobState::Failed && self.error.is_none() {
            self.error = self.output.back().cloned().or_else(|| {
                self.exit_code
                    .map(|c| format!("berth-runtime exited with status {c}"))
            });
        }
    }
}

/// Starts `program args` in its own process group with stdout and stderr on a non-blocking
/// pipe; the reaper collects it. The child gets SIGKILL when berth-init dies.
fn spawn(program: &Path, args: &[&std::ffi::OsStr]) -> io::Result<(i32, OwnedFd)> {
    let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    set_nonblocking(&reader)?;
    let err = writer.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(err))
        .process_group(0);
    let parent = nix::unistd::getpid();
    // SAFETY: runs in the forked child before exec; only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            crate::signals::reset_in_child()?;
            // Jobs are only started from the event loop, berth-init's main thread.
            crate::signals::die_with_parent(parent)
        });
    }
    let child = cmd.spawn()?;
    // Reaped by the supervisor's reaper, never through `Child::wait`.
    let pid = child.id() as i32;
    drop(child);
    Ok((pid, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            id: 1,
            kind: JobKind::Pull,
            target: "x".into(),
            state: JobState::Running,
            exit_code: None,
            error: None,
            output: VecDeque::new(),
            pid: Some(5),
            pipe: None,
            partial: Vec::new(),
            limit: Duration::from_secs(1),
        }
    }

    #[test]
    fn keeps_the_last_lines_and_cuts_endless_ones() {
        let mut j = job();
        for i in 0..50 {
            j.take_output(format!("line {i}\n").as_bytes());
        }
        assert_eq!(j.output.len(), KEEP_LINES);
        assert_eq!(j.output.back().map(String::as_str), Some("line 49"));
        j.take_output(&[b'x'; 2000]);
        assert!(j.partial.is_empty());
        assert_eq!(j.output.back().map(String::len), Some(MAX_LINE));
    }

    #[test]
    fn a_failed_job_reports_its_last_line() {
        let mut jobs = Jobs::new("/nonexistent".into(), Path::new("/s"), Path::new("/c"));
        let mut j = job();
        j.take_output(b"pulling\nberth-runtime image: registry said no\n");
        jobs.jobs.insert(1, j);
        assert!(!jobs.on_exit(99, ExitStatus::Exited(1)));
        assert!(jobs.on_exit(5, ExitStatus::Exited(1)));
        let j = jobs.get(1).unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(
            j.error.as_deref(),
            Some("berth-runtime image: registry said no")
        );
    }

    /// A job around a real child (`sleep`) started the way jobs are; never a made-up pid, so
    /// a kill cannot reach anything else.
    fn sleeping_job(id: u64) -> (Job, i32) {
        let (pid, pipe) = spawn(Path::new("/bin/sleep"), &[std::ffi::OsStr::new("60")]).unwrap();
        let mut j = job();
        j.id = id;
        j.pid = Some(pid);
        j.pipe = Some(pipe);
        (j, pid)
    }

    fn wait_killed(pid: i32) {
        use nix::sys::wait::{waitpid, WaitStatus};
        let status = waitpid(Pid::from_raw(pid), None).unwrap();
        assert!(
            matches!(status, WaitStatus::Signaled(_, Signal::SIGKILL, _)),
            "{status:?}"
        );
    }

    #[test]
    fn cancel_kills_the_process_and_frees_the_slot_at_once() {
        let mut jobs = Jobs::new("/nonexistent".into(), Path::new("/s"), Path::new("/c"));
        let (j, pid) = sleeping_job(1);
        jobs.jobs.insert(1, j);
        let cancelled = jobs.cancel(1).unwrap().unwrap();
        assert_eq!(cancelled.state, JobState::Cancelled);
        assert!(jobs.cancel(2).is_none());
        wait_killed(pid);
        // Reaped later: still cancelled, and cancelling again is refused.
        assert!(jobs.on_exit(pid, ExitStatus::Signaled(9)));
        let j = jobs.get(1).unwrap();
        assert_eq!(
            (j.state, j.error.as_deref()),
            (JobState::Cancelled, Some("cancelled"))
        );
        assert!(matches!(jobs.cancel(1), Some(Err(JobError::Finished(1)))));
    }

    #[test]
    fn a_job_past_its_deadline_is_killed_and_failed() {
        let mut jobs = Jobs::new("/nonexistent".into(), Path::new("/s"), Path::new("/c"));
        let (j, pid) = sleeping_job(3);
        jobs.jobs.insert(3, j);
        jobs.on_deadline(3);
        wait_killed(pid);
        assert!(jobs.on_exit(pid, ExitStatus::Signaled(9)));
        let j = jobs.get(3).unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert!(
            j.error.as_deref().unwrap_or_default().contains("killed"),
            "{j:?}"
        );
        // A stale deadline of a finished job changes nothing.
        jobs.on_deadline(3);
        assert_eq!(jobs.get(3).unwrap().state, JobState::Failed);
    }

    #[test]
    fn default_time_limit_is_the_pull_timeout_and_a_grace() {
        let jobs = Jobs::new("/nonexistent".into(), Path::new("/s"), Path::new("/c"));
        assert_eq!(
            jobs.time_limit(),
            berth_runtime::registry::config::DEFAULT_PULL_TIMEOUT + MAX_GRACE
        );
    }
}
