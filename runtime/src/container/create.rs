//! `create`: clone the container's init into its namespaces and leave it waiting for `start`.

use super::{clone_process_in, sys, write_pid_file, Container, ContainerError, Result, Runtime};
use crate::cgroups::{Cgroup, CgroupRoot, Resources};
use crate::channel::{self, Message};
use crate::container_init::{self, InitConfig, Wait};
use crate::hooks::{self, HookKind};
use crate::namespaces::{self, NamespacePlan};
use crate::spec::Bundle;
use crate::state::{now_rfc3339, process_start_time, State, Status, EXEC_FIFO, OCI_VERSION};
use crate::syscall::LinuxSyscall;
use crate::trace;
use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// How the created container is told to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// runc's `create`: the init blocks on an exec FIFO until a later `start` process.
    Fifo,
    /// `run` and the library: this process starts it over the init channel.
    Channel,
}

/// What `create` needs besides the bundle.
#[derive(Debug, Clone)]
pub struct CreateOptions<'a> {
    pub id: &'a str,
    pub console_socket: Option<&'a Path>,
    pub pid_file: Option<&'a Path>,
    /// Move the root instead of pivot_root (runc's `--no-pivot`, for ramfs roots).
    pub no_pivot: bool,
    /// stdin, stdout, stderr of the container; inherited from this process when `None`.
    pub stdio: Option<[RawFd; 3]>,
    pub start: StartMode,
    /// Descriptors 3.. passed to the container's program (runc's `--preserve-fds`, plus
    /// socket activation's); they must be open. Every other one is closed on exec.
    pub preserve_fds: u32,
    /// Keep the caller's session keyring instead of a new `_ses.<id>` (runc's
    /// `--no-new-keyring`).
    pub no_new_keyring: bool,
}

/// Undoes a half-created container when dropped without `disarm`.
struct Cleanup<'a> {
    runtime: &'a Runtime,
    id: &'a str,
    pid: Option<i32>,
    cgroup: Option<Cgroup>,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.kill();
            let _ = cg.remove();
        }
        let _ = self.runtime.store().remove(self.id);
    }
}

fn id_map(
    pid: i32,
    file: &str,
    maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>,
) -> Result<()> {
    let mut text = String::new();
    for m in maps.into_iter().flatten() {
        text.push_str(&format!(
            "{} {} {}\n",
            m.container_id(),
            m.host_id(),
            m.size()
        ));
    }
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    std::fs::write(&path, text).map_err(|source| ContainerError::Io { path, source })
}

/// The cgroup for a container: `linux.cgroupsPath` or `/berth/<id>`, created when the host has
/// a v2 hierarchy. Limits without a usable v2 controller are an error, never skipped.
fn prepare_cgroup(
    bundle: &Bundle,
    id: &str,
    resources: &Resources,
) -> Result<Option<(String, Cgroup)>> {
    let root = match CgroupRoot::host() {
        Ok(r) => r,
        Err(_) if resources.is_empty() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let linux = bundle.spec.linux().as_ref();
    let rel = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| format!("/berth/{id}"));
    let cg = root.create(&rel)?;
    if let Err(e) = cg.check(resources) {
        let _ = cg.remove();
        return Err(e.into());
    }
    Ok(Some((rel, cg)))
}

impl Runtime {
    /// Creates a container from a loaded bundle. Every check that can fail on bad input runs
    /// before anything is created; a failure later undoes what was done.
    pub fn create(&self, bundle: &Bundle, opts: &CreateOptions<'_>) -> Result<Container> {
        let spec = &bundle.spec;
        let linux = spec.linux().as_ref();
        let plan = NamespacePlan::from_linux(linux)?;
        let resources = match linux.and_then(|l| l.resources().as_ref()) {
            Some(r) => Resources::from_oci(r)?,
            None => Resources::default(),
        };
        let filters = match linux.and_then(|l| l.seccomp().as_ref()) {
            Some(s) => crate::seccomp::compile(s)?,
            None => Vec::new(),
        };
        if let Some(p) = spec.process() {
            crate::process::check_capabilities(p)?;
        }
        crate::fds::check_preserved(opts.preserve_fds)?;
        trace::step("checks and seccomp");
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        if terminal && opts.console_socket.is_none() {
            return Err(ContainerError::NoConsoleSocket);
        }
        let console = match (terminal, opts.console_socket) {
            (true, Some(path)) => Some(crate::console::connect_socket(path).map_err(|errno| {
                ContainerError::ConsoleSocket {
                    path: path.to_path_buf(),
                    errno,
                }
            })?),
            _ => None,
        };

        let dir = self.store().claim(opts.id)?;
        let mut cleanup = Cleanup {
            runtime: self,
            id: opts.id,
            pid: None,
            cgroup: None,
            armed: true,
        };
        let cgroup = prepare_cgroup(bundle, opts.id, &resources)?;
        cleanup.cgroup = cgroup.as_ref().map(|(_, cg)| cg.clone());
        trace::step("cgroup");
        // The FIFO also marks the container as `created` to other processes until start
        // removes it, in both start modes.
        let fifo = dir.join(EXEC_FIFO);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622))
            .map_err(sys("mkfifo exec.fifo"))?;
        // Past the umask: the init may be an unprivileged uid (user namespace) and must open it.
        std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
            .map_err(|source| ContainerError::Io {
                path: fifo.clone(),
                source,
            })?;
        let wait = match opts.start {
            StartMode::Fifo => Wait::Fifo(
                open(
                    &dir,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(sys("open state dir"))?,
            ),
            StartMode::Channel => Wait::Channel,
        };
        // The limits go on the cgroup before the init exists, so that it is born in the cgroup
        // with them (see `spawn_init`); a kernel that cannot do that gets them after the move.
        if let Some((_, cg)) = &cgroup {
            cg.apply(&resources)?;
        }
        trace::step("limits");
        let (parent, child) = channel::pair()?;
        let (pid, born_in_cgroup) = spawn_init(
            &plan,
            InitConfig {
                id: opts.id,
                bundle,
                plan: &plan,
                channel: child,
                wait,
                console,
                stdio: opts.stdio,
                filters: &filters,
                no_pivot: opts.no_pivot,
                preserve_fds: opts.preserve_fds,
                no_new_keyring: opts.no_new_keyring,
            },
            cgroup.as_ref().map(|(_, cg)| cg.path()),
        )?;
        cleanup.pid = Some(pid);
        trace::step("clone");

        if plan.user() {
            // gid_map needs setgroups allowed, which it is for a privileged writer.
            id_map(
                pid,
                "uid_map",
                linux.and_then(|l| l.uid_mappings().as_ref()),
            )?;
            id_map(
                pid,
                "gid_map",
                linux.and_then(|l| l.gid_mappings().as_ref()),
            )?;
        }
        if let (Some((_, cg)), false) = (&cgroup, born_in_cgroup) {
            cg.add_pid(pid)?;
            trace::step("cgroup: join");
        }
        if let Some(adj) = spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
            let path = PathBuf::from(format!("/proc/{pid}/oom_score_adj"));
            std::fs::write(&path, adj.to_string())
                .map_err(|source| ContainerError::Io { path, source })?;
        }
        let mut container = Container {
            store: self.store().clone(),
            dir,
            state: State {
                oci_version: OCI_VERSION.to_string(),
                id: opts.id.to_string(),
                status: Status::Creating,
                pid,
                bundle: bundle.dir.clone(),
                rootfs: bundle.rootfs.clone(),
                created: now_rfc3339(),
                owner: String::new(),
                annotations: spec.annotations().clone().unwrap_or_default(),
                pid_start_time: process_start_time(pid).map(|(t, _)| t).unwrap_or(0),
                cgroup: cgroup.as_ref().map(|(rel, _)| rel.clone()),
                no_new_keyring: opts.no_new_keyring,
                config: spec.clone(),
            },
            channel: None,
        };
        // The init hands the state document only to hooks; without any, serialising it (and
        // the whole spec in it) once more would be for nothing.
        let for_hooks = if spec.hooks().is_some() {
            container.state_json()
        } else {
            Vec::new()
        };
        parent.send(&Message::Continue(for_hooks))?;
        while !parent.wait_for_init_ready()? {
            let state = container.state_json();
            hooks::run(spec.hooks().as_ref(), HookKind::Prestart, &state)?;
            hooks::run(spec.hooks().as_ref(), HookKind::CreateRuntime, &state)?;
            parent.send(&Message::Continue(state))?;
        }
        trace::step("init ready");
        container.state.status = Status::Created;
        container.store.save(&container.state)?;
        if let Some(path) = opts.pid_file {
            write_pid_file(path, pid)?;
        }
        if opts.start == StartMode::Channel {
            container.channel = Some(parent);
        }
        cleanup.armed = false;
        trace::step("state");
        Ok(container)
    }
}

/// Clones the init, into the container's cgroup directory `cgroup` when the kernel can (then
/// `true`: no move needed). A pid namespace joined by path is entered by this process around
/// the clone (it only affects children), so the init is born inside it.
fn spawn_init(
    plan: &NamespacePlan,
    cfg: InitConfig<'_>,
    cgroup: Option<&Path>,
) -> Result<(i32, bool)> {
    let own_pid_ns = match &plan.join_pid {
        Some(path) => {
            let own =
                std::fs::File::open("/proc/self/ns/pid").map_err(|source| ContainerError::Io {
                    path: "/proc/self/ns/pid".into(),
                    source,
                })?;
            namespaces::enter(&LinuxSyscall, path, CloneFlags::CLONE_NEWPID)?;
            Some(own)
        }
        None => None,
    };
    // The cgroup namespace is not created by clone: its root is the cgroup of the process
    // that creates it, and the init is only moved into the container's cgroup after clone.
    // The init unshares it once the runtime says it is there (see `container_init::setup`).
    let flags = plan.new - CloneFlags::CLONE_NEWCGROUP;
    // The init runs the runtime's code until it execs: born non-dumpable, nothing in the
    // container can open its /proc files meanwhile.
    let non_dumpable = crate::sealed::NonDumpable::set();
    // SAFETY: the runtime is single-threaded (CLI and PID 1 alike); the child never returns
    // from `container_init::run` (it execs or exits).
    let cloned = unsafe { clone_process_in(flags, cgroup) };
    if let Ok((0, _)) = cloned {
        container_init::run(cfg);
    }
    drop(non_dumpable);
    if let Some(own) = own_pid_ns {
        nix::sched::setns(&own, CloneFlags::CLONE_NEWPID).map_err(sys("restore pid namespace"))?;
    }
    drop(cfg);
    cloned
}
