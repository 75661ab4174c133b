//! Containers and their lifecycle, one file per verb. The runtime (this process) is the
//! parent of each container's init: it clones it into its namespaces, maps ids, places it in
//! its cgroup, runs the runtime-side hooks and records the state.

mod create;
mod delete;
mod exec;
mod kill;
mod pause;
mod start;
mod update;
mod wait;

pub use create::{CreateOptions, StartMode};
pub use exec::ExecOptions;
pub use kill::parse_signal;
pub use wait::{exit_code, wait_for_exit_of, wait_forwarding_signals};

use crate::cgroups::{Cgroup, CgroupError, CgroupRoot};
use crate::channel::{Channel, ChannelError};
use crate::container_init::InitError;
use crate::hooks::HookError;
use crate::namespaces::NamespaceError;
use crate::seccomp::SeccompError;
use crate::spec::SpecError;
use crate::state::{State, StateError, StateStore, Status};
use nix::errno::Errno;
use std::path::{Path, PathBuf};

/// Where runtime state lives by default (runc-style `--root`).
pub const DEFAULT_ROOT: &str = "/run/berth/runtime";

/// Errors of the lifecycle verbs: misuse is named with the container and its state.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot {op} container `{id}`: it is {status}")]
    WrongState {
        id: String,
        op: &'static str,
        status: Status,
    },
    #[error("container `{id}` is running: stop it first or use --force")]
    Running { id: String },
    #[error("process.terminal is true: a --console-socket is needed")]
    NoConsoleSocket,
    #[error("console socket {path}: {errno}")]
    ConsoleSocket { path: PathBuf, errno: Errno },
    #[error("container `{0}` has no cgroup")]
    NoCgroup(String),
    #[error("{what}: {errno}")]
    Sys { what: String, errno: Errno },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container `{id}`: init process {pid} did not exit after SIGKILL")]
    Unkillable { id: String, pid: i32 },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
}

pub type Result<T> = std::result::Result<T, ContainerError>;

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(Errno) -> ContainerError {
    let what = what.into();
    move |errno| ContainerError::Sys { what, errno }
}

/// The runtime: a state directory and the host's cgroup v2 hierarchy (if any).
#[derive(Debug, Clone)]
pub struct Runtime {
    store: StateStore,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime {
            store: StateStore::new(root),
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Loads a container by id, with its live status.
    pub fn load(&self, id: &str) -> Result<Container> {
        let state = self.store.load(id)?;
        Ok(Container {
            dir: self.store.dir(id),
            store: self.store.clone(),
            state,
            channel: None,
        })
    }

    /// Every container, sorted by id (unreadable ones are skipped).
    pub fn list(&self) -> Result<Vec<Container>> {
        Ok(self
            .store
            .ids()?
            .iter()
            .filter_map(|id| self.load(id).ok())
            .collect())
    }
}

/// One container.
#[derive(Debug)]
pub struct Container {
    store: StateStore,
    dir: PathBuf,
    pub(crate) state: State,
    /// The init's channel while this process is its parent and it waits for `Start`.
    pub(crate) channel: Option<Channel>,
}

impl Container {
    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn status(&self) -> Status {
        self.state.status
    }

    /// Host pid of the container's init process.
    pub fn pid(&self) -> i32 {
        self.state.pid
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the live status.
    pub fn refresh(&mut self) {
        self.state.refresh(&self.dir);
    }

    /// Re-reads the live status and checks that it allows `op`.
    pub(crate) fn ready_to(&mut self, op: &'static str, allowed: fn(Status) -> bool) -> Result<()> {
        self.refresh();
        if allowed(self.state.status) {
            Ok(())
        } else {
            Err(ContainerError::WrongState {
                id: self.state.id.clone(),
                op,
                status: self.state.status,
            })
        }
    }

    pub(crate) fn cgroup(&self) -> Option<Cgroup> {
        let rel = self.state.cgroup.as_deref()?;
        CgroupRoot::host().ok()?.open(rel).ok()
    }

    /// Processes of the container: its cgroup's, else just the init.
    pub fn pids(&self) -> Result<Vec<i32>> {
        if self.state.status == Status::Stopped {
            return Ok(Vec::new());
        }
        match self.cgroup() {
            Some(cg) => Ok(cg.all_pids()?),
            None => Ok(vec![self.state.pid]),
        }
    }

    /// Resource usage from the container's cgroup.
    pub fn stats(&self) -> Result<crate::cgroups::Stats> {
        let cg = self
            .cgroup()
            .ok_or_else(|| ContainerError::NoCgroup(self.state.id.clone()))?;
        Ok(cg.stats()?)
    }

    pub(crate) fn state_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.state.oci()).unwrap_or_default()
    }
}

/// fork-like clone(2) into new namespaces (no new stack: the child continues on a copy of
/// the caller's, as after fork). Returns 0 in the child.
///
/// # Safety
/// The caller must be single-threaded, and the child must only exec or `_exit`.
pub(crate) unsafe fn clone_process(flags: nix::sched::CloneFlags) -> Result<i32> {
    let flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: raw clone without CLONE_VM behaves like fork; the caller upholds the rest.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    Errno::result(r).map(|p| p as i32).map_err(sys("clone"))
}

/// Writes a pid file atomically, as runc does.
pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("berth-tmp");
    let io = |source| ContainerError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, pid.to_string()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
