//! Long operations run as child processes, never inside PID 1: image pulls and prunes
//! (`berth-runtime image pull …`, `… prune`) and updates (`berth-init update-apply SOURCE`).
//! The event loop reads their output pipe and the reaper reports their exit. A bounded
//! number run at once (one update at most) and a bounded history is kept, each with the last
//! lines of its output; an update's progress lines become its `progress`.
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

use berth_store::registry::{Reference, RegistriesConfig};
use log::{info, warn};
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::event::{after, Key, Reactor, Timer};
use crate::launch::process::set_nonblocking;
use crate::launch::pull::{clean_command, image_command, pull_command};
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
    Update,
}

impl JobKind {
    fn describe(self) -> &'static str {
        match self {
            JobKind::Pull => "image pull",
            JobKind::Prune => "image prune",
            JobKind::Update => "update",
        }
    }

    /// The program the job runs, for messages.
    fn program(self) -> &'static str {
        match self {
            JobKind::Update => "update-apply",
            _ => "berth-runtime",
        }
    }
}

/// An update's last progress line: `{"phase":"root","done":N,"total":M}` (more fields are
/// left out, so a later update program may add some).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub phase: String,
    pub done: u64,
    pub total: u64,
}

/// Where an update job reads its bundle.
#[derive(Debug, Clone, Copy)]
pub enum UpdateSource<'a> {
    /// A URL, registry reference or path on the machine, passed on as it is.
    Named(&'a str),
    /// The request body, streamed into the child's stdin.
    Upload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    /// Stopped by a client (`DELETE /v1/images/jobs/{id}`, `DELETE /v1/update/jobs/{id}`).
    Cancelled,
}

/// A job as the API shows it.
#[derive(Debug, Serialize)]
pub struct Job {
    pub id: u64,
    pub kind: JobKind,
    /// The image reference (pulls), the source (updates: `upload` for a streamed body).
    pub target: String,
    pub state: JobState,
    pub exit_code: Option<i32>,
    /// The last line of output of a failed job.
    pub error: Option<String>,
    /// The last lines of output (progress, then the result or error; an update's progress
    /// and result lines are in `progress` and `applied` instead).
    pub output: VecDeque<String>,
    /// Updates: the last progress line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,
    /// Updates: what was applied (slot, version, build id, key), once it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<serde_json::Value>,
    /// Updates streamed in the request body: bytes handed to the update so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded: Option<u64>,
    /// Updates: the machine reboots once the update succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot: Option<bool>,
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
    #[error("update job {0} is running; one update at a time")]
    UpdateRunning(u64),
    #[error("this berth-init has no update program (it did not boot from a Berth disk)")]
    NoUpdater,
}

pub struct Jobs {
    runtime: PathBuf,
    store: PathBuf,
    config: PathBuf,
    /// `registries.pull_timeout` as berth-init parsed it at boot.
    pull_timeout: Duration,
    /// The program run as `PROGRAM update-apply SOURCE …` (berth-init itself).
    updater: Option<PathBuf>,
    jobs: BTreeMap<u64, Job>,
    next: u64,
    /// An update asked for a reboot and succeeded: the main loop takes it.
    reboot_due: bool,
}

impl Jobs {
    /// Jobs on the image store `store`, with registry settings from `config`.
    pub fn new(runtime: PathBuf, store: &Path, config: &Path) -> Jobs {
        Jobs {
            runtime,
            store: store.to_path_buf(),
            config: config.to_path_buf(),
            pull_timeout: RegistriesConfig::default().pull_timeout(),
            updater: None,
            jobs: BTreeMap::new(),
            next: 1,
            reboot_due: false,
        }
    }

    /// The registry settings berth-init parsed from the machine config: they bound each
    /// job's time (the pull process reads the same file for itself).
    pub fn with_registries(mut self, registries: &RegistriesConfig) -> Jobs {
        self.pull_timeout = registries.pull_timeout();
        self
    }

    /// Update jobs run `updater update-apply SOURCE …`.
    pub fn with_updater(mut self, updater: Option<PathBuf>) -> Jobs {
        self.updater = updater;
        self
    }

    pub fn has_updater(&self) -> bool {
        self.updater.is_some()
    }

    pub fn store(&self) -> &Path {
        &self.store
    }

    pub fn list(&self) -> Vec<&Job> {
        self.jobs.values().collect()
    }

    /// Update jobs (`update`) or image jobs (the others).
    pub fn list_of(&self, update: bool) -> Vec<&Job> {
        self.jobs
            .values()
            .filter(|j| (j.kind == JobKind::Update) == update)
            .collect()
    }

    /// The running update job, if any.
    pub fn running_update(&self) -> Option<u64> {
        self.jobs
            .values()
            .find(|j| j.kind == JobKind::Update && j.state == JobState::Running)
            .map(|j| j.id)
    }

    /// The job has ended and all its output is in (`None`: no such job).
    pub fn settled(&self, id: u64) -> Option<bool> {
        self.jobs
            .get(&id)
            .map(|j| j.state != JobState::Running && j.pipe.is_none())
    }

    /// Records the bytes of a streamed body handed to the job so far.
    pub fn set_uploaded(&mut self, id: u64, bytes: u64) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.uploaded = Some(bytes);
        }
    }

    /// True once after an update that asked for a reboot succeeded.
    pub fn take_reboot(&mut self) -> bool {
        std::mem::take(&mut self.reboot_due)
    }

    pub fn get(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// How long a job may run: the pull timeout of the machine config plus a grace.
    fn time_limit(&self) -> Duration {
        let timeout = self.pull_timeout;
        timeout + timeout.min(MAX_GRACE)
    }

    /// Starts `berth-runtime image … pull REFERENCE` on the store.
    pub fn pull(&mut self, reference: &Reference, r: &mut dyn Reactor) -> Result<&Job, JobError> {
        let cmd = pull_command(&self.runtime, &self.store, &self.config, reference);
        self.start_image(JobKind::Pull, &reference.to_string(), cmd, r)
    }

    /// Starts `berth-runtime image … prune` on the store.
    pub fn prune(&mut self, r: &mut dyn Reactor) -> Result<&Job, JobError> {
        let mut cmd = image_command(&self.runtime, &self.store, &self.config);
        cmd.arg("prune");
        self.start_image(JobKind::Prune, "", cmd, r)
    }

    fn start_image(
        &mut self,
        kind: JobKind,
        target: &str,
        cmd: Command,
        r: &mut dyn Reactor,
    ) -> Result<&Job, JobError> {
        let running = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running && j.kind != JobKind::Update)
            .count();
        if running >= MAX_RUNNING {
            return Err(JobError::Busy);
        }
        let (id, _) = self.launch(kind, target, cmd, false, r)?;
        self.jobs.get(&id).ok_or(JobError::Busy)
    }

    /// Starts `updater update-apply SOURCE [--allow-downgrade]`; at most one at a time. For
    /// an upload, also returns the write end (non-blocking) of the child's stdin.
    pub fn start_update(
        &mut self,
        source: UpdateSource<'_>,
        allow_downgrade: bool,
        reboot: bool,
        r: &mut dyn Reactor,
    ) -> Result<(&Job, Option<OwnedFd>), JobError> {
        let program = self.updater.clone().ok_or(JobError::NoUpdater)?;
        if let Some(id) = self.running_update() {
            return Err(JobError::UpdateRunning(id));
        }
        let (target, arg) = match source {
            UpdateSource::Named(s) => (s, s),
            UpdateSource::Upload => ("upload", "-"),
        };
        let mut cmd = clean_command(&program);
        cmd.args(["update-apply", arg]);
        if allow_downgrade {
            cmd.arg("--allow-downgrade");
        }
        let upload = matches!(source, UpdateSource::Upload);
        let (id, stdin) = self.launch(JobKind::Update, target, cmd, upload, r)?;
        let job = self.jobs.get_mut(&id).ok_or(JobError::Busy)?;
        job.reboot = Some(reboot);
        job.uploaded = upload.then_some(0);
        Ok((job, stdin))
    }

    /// Spawns a job's process, watches its output and schedules its deadline.
    fn launch(
        &mut self,
        kind: JobKind,
        target: &str,
        cmd: Command,
        stdin: bool,
        r: &mut dyn Reactor,
    ) -> Result<(u64, Option<OwnedFd>), JobError> {
        let program = Path::new(cmd.get_program()).display().to_string();
        let (pid, pipe, input) =
            spawn(cmd, stdin).map_err(|source| JobError::Spawn { program, source })?;
        let id = self.next;
        self.next += 1;
        if let Err(e) = r.watch(pipe.as_fd(), Key::JobOutput(id), false) {
            warn!("job {id}: cannot watch its output: {e}");
        }
        let limit = self.time_limit();
        r.schedule(after(Instant::now(), limit), Timer::Job(id));
        info!("job {id}: {} {target} started, pid {pid}", kind.describe());
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
                progress: None,
                applied: None,
                uploaded: None,
                reboot: None,
                pid: Some(pid),
                pipe: Some(pipe),
                partial: Vec::new(),
                limit,
            },
        );
        self.forget_old();
        Ok((id, input))
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
        if job.read_pipe() {
            if let Some(pipe) = job.pipe.take() {
                r.unwatch(pipe.as_fd());
            }
            job.settle_error();
        }
    }

    /// `DELETE /v1/images/jobs/{id}` (or `/v1/update/jobs/{id}`): kills a running job; it is
    /// `cancelled` at once and its slot is free. `None` for an unknown job.
    pub fn cancel(&mut self, id: u64) -> Option<Result<&Job, JobError>> {
        let job = self.jobs.get_mut(&id)?;
        if job.state != JobState::Running {
            return Some(Err(JobError::Finished(id)));
        }
        job.kill();
        job.state = JobState::Cancelled;
        job.error = Some("cancelled".to_string());
        info!(
            "job {id}: {} {}: cancelled",
            job.kind.describe(),
            job.target
        );
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
            "job {id}: {} {}: killed after {limit:.1} s",
            job.kind.describe(),
            job.target
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
        // What the child wrote before it exited is in the pipe: read it now, so that its
        // error is its last line even when the exit is seen before the pipe's wake-up. The
        // pipe itself is closed by that wake-up.
        job.read_pipe();
        if job.state == JobState::Running {
            job.state = if status.success() {
                JobState::Succeeded
            } else {
                JobState::Failed
            };
        }
        job.settle_error();
        if job.kind == JobKind::Update
            && job.state == JobState::Succeeded
            && job.reboot == Some(true)
        {
            self.reboot_due = true;
        }
        info!(
            "job {}: {} {}: {status}",
            job.id,
            job.kind.describe(),
            job.target
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

    /// Reads what is in the output pipe, bounded so a chatty job cannot starve the loop.
    /// True at its end (every writer gone), when a last unterminated line is kept too.
    fn read_pipe(&mut self) -> bool {
        let Some(fd) = self.pipe.as_ref().and_then(|p| p.try_clone().ok()) else {
            return false;
        };
        let mut file = File::from(fd);
        let mut buf = [0u8; 8192];
        let mut eof = false;
        for _ in 0..32 {
            match file.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.take_output(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof && !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.push_line(&rest);
        }
        eof
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
        if self.kind == JobKind::Update && self.take_update_line(&text) {
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

    /// An update's progress or result line (JSON): kept as `progress` or `applied` rather
    /// than in the output, which it would flood. True when it was one.
    fn take_update_line(&mut self, text: &str) -> bool {
        if !text.starts_with('{') {
            return false;
        }
        if let Ok(p) = serde_json::from_str::<JobProgress>(text) {
            self.progress = Some(p);
            return true;
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(mut o)) if o.len() == 1 && o.contains_key("applied") => {
                self.applied = o.remove("applied");
                true
            }
            _ => false,
        }
    }

    /// A failed job's error is its last line of output (unless it was killed: that says why).
    fn settle_error(&mut self) {
        if self.state == JobState::Failed && self.error.is_none() {
            let program = self.kind.program();
            self.error = self.output.back().cloned().or_else(|| {
                self.exit_code
                    .map(|c| format!("{program} exited with status {c}"))
            });
        }
    }
}

/// Starts `cmd` (built by [`clean_command`] and its kin) in its own process group with
/// stdout and stderr on a non-blocking pipe; the reaper collects it. The child gets SIGKILL
/// when berth-init dies. With `stdin` its stdin is a pipe too, whose write end
/// (non-blocking) is returned.
fn spawn(mut cmd: Command, stdin: bool) -> io::Result<(i32, OwnedFd, Option<OwnedFd>)> {
    let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    set_nonblocking(&reader)?;
    let err = writer.try_clone()?;
    let (child_stdin, input) = if stdin {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        set_nonblocking(&w)?;
        // Larger than the default 64 KiB: fewer wake-ups per MiB (kernel memory, best effort).
        let _ = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        (Stdio::from(r), Some(w))
    } else {
        (Stdio::null(), None)
    };
    cmd.stdin(child_stdin)
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
    Ok((pid, reader, input))
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
            progress: None,
            applied: None,
            uploaded: None,
            reboot: None,
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

    #[test]
    fn an_exit_seen_before_the_output_still_reports_the_last_line() {
        let mut jobs = Jobs::new("/nonexistent".into(), Path::new("/s"), Path::new("/c"));
        let mut sh = clean_command(Path::new("/bin/sh"));
        sh.args([
            "-c",
            "echo working; echo 'update-apply: registry said 404' >&2; exit 3",
        ]);
        let (pid, pipe, _) = spawn(sh, false).unwrap();
        let mut j = job();
        j.pid = Some(pid);
        j.pipe = Some(pipe);
        jobs.jobs.insert(1, j);
        // Exited and reaped before the event loop read any of its output.
        let status = nix::sys::wait::waitpid(Pid::from_raw(pid), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(Pid::from_raw(pid), 3)
        );
        assert!(jobs.on_exit(pid, ExitStatus::Exited(3)));
        let j = jobs.get(1).unwrap();
        assert_eq!(
            (j.state, j.error.as_deref()),
            (JobState::Failed, Some("update-apply: registry said 404"))
        );
    }

    /// A job around a real child (`sleep`) started the way jobs are; never a made-up pid, so
    /// a kill cannot reach anything else.
    fn sleeping_job(id: u64) -> (Job, i32) {
        let mut sleep = clean_command(Path::new("/bin/sleep"));
        sleep.arg("60");
        let (pid, pipe, _) = spawn(sleep, false).unwrap();
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
    fn update_progress_and_result_lines_become_fields() {
        let mut j = job();
        j.kind = JobKind::Update;
        j.take_output(b"{\"phase\":\"root\",\"done\":5,\"total\":10}\n");
        j.take_output(b"{\"phase\":\"kernel\",\"done\":1,\"total\":2}\n");
        let want = JobProgress {
            phase: "kernel".into(),
            done: 1,
            total: 2,
        };
        assert_eq!(j.progress.as_ref(), Some(&want));
        j.take_output(b"{\"applied\":{\"slot\":\"B\"}}\nberth-init update-apply: oops\n");
        assert_eq!(j.applied, Some(serde_json::json!({"slot": "B"})));
        assert_eq!(j.output, ["berth-init update-apply: oops"]);
        // Other JSON stays output; a pull keeps progress-like lines as output.
        j.take_output(b"{\"phase\":\"root\"}\n");
        assert_eq!(j.output.len(), 2);
        let mut pull = job();
        pull.take_output(b"{\"phase\":\"root\",\"done\":5,\"total\":10}\n");
        assert_eq!((pull.progress, pull.output.len()), (None, 1));
    }

    /// A reactor that ignores everything (the jobs' pipes are never polled here).
    struct Deaf;

    impl Reactor for Deaf {
        fn watch(&mut self, _: std::os::fd::BorrowedFd<'_>, _: Key, _: bool) -> io::Result<()> {
            Ok(())
        }
        fn unwatch(&mut self, _: std::os::fd::BorrowedFd<'_>) {}
        fn schedule(&mut self, _: Instant, _: Timer) {}
    }

    #[test]
    fn one_update_at_a_time_and_a_reboot_only_after_it_succeeded() {
        let mut jobs = Jobs::new("/nonexistent".into(), Path::new("/s"), Path::new("/c"));
        let refused = jobs.start_update(UpdateSource::Named("x"), false, true, &mut Deaf);
        assert!(matches!(refused, Err(JobError::NoUpdater)));
        // `true update-apply -`: a real child; the test reports its exit.
        let mut jobs = jobs.with_updater(Some("/bin/true".into()));
        let (job, stdin) = jobs
            .start_update(UpdateSource::Upload, false, true, &mut Deaf)
            .unwrap();
        let (id, pid) = (job.id, job.pid.unwrap());
        assert_eq!((job.target.as_str(), job.uploaded), ("upload", Some(0)));
        assert!(stdin.is_some());
        let second = jobs.start_update(UpdateSource::Named("y"), false, false, &mut Deaf);
        assert!(matches!(second, Err(JobError::UpdateRunning(i)) if i == id));
        assert_eq!(jobs.running_update(), Some(id));
        use nix::sys::wait::waitpid;
        waitpid(Pid::from_raw(pid), None).unwrap();
        assert!(!jobs.take_reboot());
        assert!(jobs.on_exit(pid, ExitStatus::Exited(0)));
        assert!(jobs.take_reboot());
        assert!(!jobs.take_reboot());
        assert_eq!(jobs.running_update(), None);
        // A failed update never reboots.
        let (job, _) = jobs
            .start_update(UpdateSource::Named("z"), true, true, &mut Deaf)
            .unwrap();
        let pid = job.pid.unwrap();
        waitpid(Pid::from_raw(pid), None).unwrap();
        assert!(jobs.on_exit(pid, ExitStatus::Exited(1)));
        assert!(!jobs.take_reboot());
        assert_eq!(jobs.list_of(true).len(), 2);
        assert!(jobs.list_of(false).is_empty());
    }

    #[test]
    fn default_time_limit_is_the_pull_timeout_and_a_grace() {
        let jobs = Jobs::new("/nonexistent".into(), Path::new("/s"), Path::new("/c"));
        assert_eq!(
            jobs.time_limit(),
            berth_store::registry::config::DEFAULT_PULL_TIMEOUT + MAX_GRACE
        );
    }

    #[test]
    fn the_time_limit_follows_the_parsed_pull_timeout() {
        let registries = RegistriesConfig::parse("[registries]\npull_timeout = \"2m\"\n").unwrap();
        // The config path is never read: the limit comes from what berth-init parsed.
        let jobs = Jobs::new(
            "/nonexistent".into(),
            Path::new("/s"),
            Path::new("/nonexistent"),
        )
        .with_registries(&registries);
        assert_eq!(
            jobs.time_limit(),
            Duration::from_secs(120) + Duration::from_secs(120).min(MAX_GRACE)
        );
    }
}
