//! Launching: the supervisor talks only to the [`Launcher`] trait. A launcher turns a unit into
//! processes: optional preparation steps (an image pull, run as a child process so PID 1 never
//! blocks), the main process, health-check processes, and the cleanup after the main process
//! is gone (leftover processes, cgroup, container state).
//!
//! [`process::ProcessLauncher`] runs system units (no `image`) from the host root. A container
//! launcher plugs in beside it: `handles` picks the launcher for a unit.

pub mod cgroup;
pub mod container;
pub mod guard;
pub mod limits;
pub mod process;
pub mod pull;
pub mod removal;
pub mod root_layers;
pub mod sweep;
pub mod task;

use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::unit::Unit;

/// A process a launcher started. The supervisor reaps it (never the launcher) and reads its
/// output.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// Read end of a pipe carrying the process's stdout and stderr, for the unit's log.
    pub output: Option<OwnedFd>,
}

/// What starting a unit produced.
#[derive(Debug)]
pub enum Step {
    /// A preparation process; when it exits 0 the supervisor calls `start` again with one
    /// more completed step. Any other exit is a failed start. With `done`, the read end of a
    /// pipe, one byte the process writes there is its success already: the supervisor goes on
    /// at once and leaves the process, which only has to exit, to be reaped as an orphan. Its
    /// exit (a forked copy of PID 1 tearing down) is then not on the way to the main process.
    Prepare {
        task: Spawned,
        done: Option<OwnedFd>,
    },
    /// The unit's main process: the unit is running.
    Main(Spawned),
}

/// What a unit's cgroup reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub stats: berth_runtime::cgroups::Stats,
    /// `memory.max`: a byte limit, `Max` for none, `None` without the memory controller.
    pub memory_max: Option<berth_runtime::cgroups::Limit>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("command `{command}` not found")]
    NotFound { command: String },
    #[error("command `{command}` is not executable: {source}")]
    NotExecutable {
        command: String,
        source: std::io::Error,
    },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("unknown user or group `{0}`")]
    UnknownUser(String),
    #[error("cgroup: {0}")]
    Cgroup(#[from] berth_runtime::cgroups::CgroupError),
    #[error("cannot create output pipe: {0}")]
    Pipe(std::io::Error),
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: i32, source: nix::errno::Errno },
    #[error("no launcher for this unit: {0}")]
    Unsupported(String),
    #[error("container: {0}")]
    Container(String),
}

impl LaunchError {
    /// Exit code a shell would report for this failure (127 not found, 126 not executable).
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::NotFound { .. } => 127,
            LaunchError::NotExecutable { .. } => 126,
            _ => 1,
        }
    }
}

pub trait Launcher {
    /// Whether this launcher runs `unit`.
    fn handles(&self, unit: &Unit) -> bool;

    /// Starts `unit` after `prepared` preparation steps have completed successfully.
    fn start(&mut self, unit: &Unit, prepared: u32) -> Result<Step, LaunchError>;

    /// Why the unit's last preparation step failed, when the launcher knows more than the
    /// step's exit status (shown as the unit's error).
    fn preparation_error(&mut self, _unit: &Unit) -> Option<String> {
        None
    }

    /// Sends `signal` to the unit's main process `pid`, or to every process of the unit
    /// when `all` (used for the final SIGKILL).
    fn signal(&mut self, unit: &Unit, pid: i32, signal: i32, all: bool) -> Result<(), LaunchError>;

    /// Starts one run of the unit's health check (for containers, inside the container).
    fn health_check(&mut self, unit: &Unit) -> Result<Spawned, LaunchError>;

    /// Resource usage of the unit's cgroup; `None` when the unit runs without one (no fake
    /// zeros: metrics leave such units out).
    fn usage(&self, _unit: &Unit) -> Option<Usage> {
        None
    }

    /// The main process `pid` has exited (or, with `None`, the start failed): remove what is
    /// left of the unit (processes, cgroup, container). Must not block: work that can take
    /// long runs in a task whose process is returned. The supervisor reaps it, kills it after
    /// [`CLEANUP_LIMIT`], and starts the unit again only once it is gone.
    fn cleanup(&mut self, unit: &Unit, pid: Option<i32>) -> Option<Spawned>;

    /// Runs once per turn of the event loop, after the events: work batched over all units
    /// (killing what stopped units left behind).
    fn sweep(&mut self) {}

    /// The unit `name` was removed, after its last cleanup: drop what the launcher keeps for
    /// it beyond a run (a container's writes). Called on every launcher, whatever kind the
    /// unit was, since its last definition may have been invalid or of another kind. Must not
    /// block.
    fn removed(&mut self, _name: &str) {}
}

/// How long a unit's cleanup task may run before it is killed (the next start removes what
/// is left).
pub const CLEANUP_LIMIT: Duration = Duration::from_secs(20);
