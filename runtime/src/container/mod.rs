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
    #[error(transparent)]
    Fd(#[from] crate::fds::FdError),
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

/// `struct clone_args` of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// CLONE_INTO_CGROUP (Linux 5.7): the child starts as a member of the cgroup `cgroup` is open on.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// [`clone_process`], with the child born in the cgroup directory `cgroup` when there is one
/// and the kernel can (clone3 with CLONE_INTO_CGROUP): then `true`, and no move is needed.
/// Moving a process afterwards (cgroup.procs) write-locks every thread group's membership and
/// runs the whole migration. `false`: the caller moves the child itself.
///
/// # Safety
/// As [`clone_process`].
pub(crate) unsafe fn clone_process_in(
    flags: nix::sched::CloneFlags,
    cgroup: Option<&Path>,
) -> Result<(i32, bool)> {
    if let Some(path) = cgroup {
        use std::os::fd::AsFd;
        let dir = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(sys(format!("open cgroup {}", path.display())))?;
        // SAFETY: as this function's.
        if let Some(pid) = unsafe { clone_into_cgroup(flags, dir.as_fd()) }? {
            return Ok((pid, true));
        }
    }
    // SAFETY: as this function's.
    unsafe { clone_process(flags) }.map(|pid| (pid, false))
}

/// clone3 into the cgroup open at `cgroup`; `Ok(None)` when the kernel has no clone3 or no
/// CLONE_INTO_CGROUP (nothing was created).
///
/// # Safety
/// As [`clone_process`].
unsafe fn clone_into_cgroup(
    flags: nix::sched::CloneFlags,
    cgroup: std::os::fd::BorrowedFd<'_>,
) -> Result<Option<i32>> {
    use std::os::fd::AsRawFd;
    let args = CloneArgs {
        // The clone flags are the low 32 bits; CLONE_INTO_CGROUP is above them.
        flags: u64::from(flags.bits() as u32) | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 reads `args` (size given); without CLONE_VM and with no stack it behaves
    // like fork. The caller upholds the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(r) {
        Ok(pid) => Ok(Some(pid as i32)),
        // No clone3 (before 5.3), or a clone_args without `cgroup` (before 5.7).
        Err(Errno::ENOSYS | Errno::E2BIG) => Ok(None),
        Err(e) => Err(sys("clone into the container's cgroup")(e)),
    }
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
