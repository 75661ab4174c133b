//! `exec`: run another process inside a running container (health checks, `exec` verb).

use super::{clone_process_in, sys, write_pid_file, Container, ContainerError, Result};
use crate::channel::{self, Channel, Message};
use crate::container_init::InitError;
use crate::process;
use crate::state::Status;
use crate::syscall::{LinuxSyscall, Syscall};
use nix::sched::CloneFlags;
use oci_spec::runtime::Process;
use std::convert::Infallible;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The namespaces joined, user first (it grants the rights to join the others), mount last.
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

#[derive(Debug, Clone)]
pub struct ExecOptions<'a> {
    pub process: Process,
    pub console_socket: Option<&'a Path>,
    pub pid_file: Option<&'a Path>,
    pub stdio: Option<[RawFd; 3]>,
    /// Descriptors 3.. passed to the process (runc's `--preserve-fds`); they must be open.
    pub preserve_fds: u32,
}

fn same_ns(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.ino() == y.ino() && x.dev() == y.dev(),
        _ => false,
    }
}

fn open(path: PathBuf) -> Result<File> {
    File::open(&path).map_err(|source| ContainerError::Io { path, source })
}

impl Container {
    /// Starts `process` inside the container and returns its host pid (a child of the
    /// caller) once it has exec'd.
    pub fn exec(&mut self, opts: &ExecOptions<'_>) -> Result<i32> {
        self.ready_to("exec in", Status::can_exec)?;
        crate::process::check_capabilities(&opts.process)?;
        crate::fds::check_preserved(opts.preserve_fds)?;
        let pid = self.state.pid;
        let mut joins: Vec<(File, CloneFlags)> = Vec::new();
        for (name, flag) in NAMESPACES {
            let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
            if !same_ns(&theirs, &PathBuf::from(format!("/proc/self/ns/{name}"))) {
                joins.push((open(theirs)?, flag));
            }
        }
        let linux = self.state.config.linux().as_ref();
        let filters = match linux.and_then(|l| l.seccomp().as_ref()) {
            Some(s) => crate::seccomp::compile(s)?,
            None => Vec::new(),
        };
        let terminal = opts.process.terminal().unwrap_or(false);
        let console = match (terminal, opts.console_socket) {
            (false, _) => None,
            (true, None) => return Err(ContainerError::NoConsoleSocket),
            (true, Some(path)) => Some(crate::console::connect_socket(path).map_err(|errno| {
                ContainerError::ConsoleSocket {
                    path: path.to_path_buf(),
                    errno,
                }
            })?),
        };
        let their_pid = PathBuf::from(format!("/proc/{pid}/ns/pid"));
        let own_pid = if same_ns(&their_pid, Path::new("/proc/self/ns/pid_for_children")) {
            None
        } else {
            let own = open(PathBuf::from("/proc/self/ns/pid_for_children"))?;
            nix::sched::setns(open(their_pid)?, CloneFlags::CLONE_NEWPID)
                .map_err(sys("join the container's pid namespace"))?;
            Some(own)
        };
        // Born in the container's cgroup when the kernel can (no move below).
        let cgroup = self.cgroup();
        let (parent, child) = channel::pair()?;
        // The child is born in the container's pid namespace and runs the runtime's code
        // until it execs: non-dumpable from birth, nothing in the container can open its
        // /proc files (exe, fd, cwd, root) meanwhile.
        let non_dumpable = crate::sealed::NonDumpable::set();
        // SAFETY: single-threaded caller; the child only execs or exits.
        let forked =
            unsafe { clone_process_in(CloneFlags::empty(), cgroup.as_ref().map(|cg| cg.path())) };
        if let Ok((0, _)) = forked {
            drop(parent);
            let err = match exec_child(
                &child,
                &ExecChild {
                    joins: &joins,
                    process: &opts.process,
                    filters: &filters,
                    console: console.as_ref(),
                    stdio: opts.stdio,
                    preserve_fds: opts.preserve_fds,
                    keyring_of: (!self.state.no_new_keyring).then_some(self.state.id.as_str()),
                },
            ) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let _ = child.send(&Message::Error(err.to_string()));
            // SAFETY: ends the child without unwinding into the caller's frames.
            unsafe {
                libc::_exit(
                    if matches!(err, InitError::Process(process::ProcessError::NotFound(_))) {
                        127
                    } else {
                        126
                    },
                )
            }
        }
        drop(non_dumpable);
        if let Some(own) = own_pid {
            nix::sched::setns(own, CloneFlags::CLONE_NEWPID)
                .map_err(sys("restore pid namespace"))?;
        }
        drop(child);
        let (child_pid, born_in_cgroup) = forked?;
        let reap = |e: ContainerError| {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child_pid), None);
            e
        };
        if let (Some(cg), false) = (&cgroup, born_in_cgroup) {
            cg.add_pid(child_pid).map_err(|e| reap(e.into()))?;
        }
        parent
            .send(&Message::Continue(Vec::new()))
            .map_err(|e| reap(e.into()))?;
        parent.wait_for_exec().map_err(|e| reap(e.into()))?;
        if let Some(path) = opts.pid_file {
            write_pid_file(path, child_pid)?;
        }
        Ok(child_pid)
    }
}

/// What the process `exec` clones needs until it execs.
struct ExecChild<'a> {
    joins: &'a [(File, CloneFlags)],
    process: &'a Process,
    filters: &'a [seccompiler::BpfProgram],
    console: Option<&'a OwnedFd>,
    stdio: Option<[RawFd; 3]>,
    preserve_fds: u32,
    /// The container whose session keyring to join (none with `--no-new-keyring`).
    keyring_of: Option<&'a str>,
}

fn exec_child(channel: &Channel, c: &ExecChild<'_>) -> std::result::Result<Infallible, InitError> {
    let p = c.process;
    let sys = |what: &str| {
        let what = what.to_string();
        move |errno| InitError::Sys { what, errno }
    };
    process::reset_signals();
    process::wire_stdio(c.stdio)?;
    // Nothing of the caller's but stdio and the preserved descriptors reaches the container.
    crate::fds::close_on_exec_from(crate::fds::first_closed(c.preserve_fds)?)?;
    channel.wait_for_continue()?;
    for (file, flag) in c.joins {
        LinuxSyscall
            .setns(file.as_fd(), *flag)
            .map_err(sys("setns"))?;
    }
    if let Some(id) = c.keyring_of {
        // The container's session keyring, found by name, not the caller's.
        crate::keyring::join_existing(id)?;
    }
    if let Some(sock) = c.console {
        crate::console::attach(sock.as_fd(), p)?;
    }
    let program = process::Program::resolve(p, Path::new("/"))?;
    Err(program
        .exec(&LinuxSyscall, p, c.filters, c.preserve_fds)
        .into())
}
