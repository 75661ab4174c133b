//! The container's init process (PID 1 inside the container, not Berth's own `berth-init`):
//! runs in the child the runtime cloned into the new namespaces, prepares the root
//! filesystem, waits for `start`, then execs the user program. It never returns: it execs or
//! exits.

use crate::channel::{Channel, ChannelError, Message};
use crate::console::ConsoleError;
use crate::hooks::{self, HookError, HookKind};
use crate::namespaces::{self, NamespaceError, NamespacePlan};
use crate::process::{self, ProcessError};
use crate::rootfs::{self, RootfsError, RootfsSetup};
use crate::spec::Bundle;
use crate::state::EXEC_FIFO;
use crate::syscall::{LinuxSyscall, Syscall};
use nix::sched::CloneFlags;
use oci_spec::runtime::{Process, Spec};
use seccompiler::BpfProgram;
use std::convert::Infallible;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Fd(#[from] crate::fds::FdError),
    #[error(transparent)]
    Keyring(#[from] crate::keyring::KeyringError),
    #[error("{what}: {errno}")]
    Sys {
        what: String,
        errno: nix::errno::Errno,
    },
    #[error("linux.sysctl {key}: {source}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> InitError {
    let what = what.into();
    move |errno| InitError::Sys { what, errno }
}

/// How the init learns that it may exec.
pub enum Wait {
    /// `create`: block opening the exec FIFO in this state directory until `start` reads it.
    Fifo(OwnedFd),
    /// `run` and the library: a `Start` message on the channel.
    Channel,
}

pub struct InitConfig<'a> {
    pub id: &'a str,
    pub bundle: &'a Bundle,
    pub plan: &'a NamespacePlan,
    pub channel: Channel,
    pub wait: Wait,
    pub console: Option<OwnedFd>,
    pub stdio: Option<[RawFd; 3]>,
    pub filters: &'a [BpfProgram],
    pub no_pivot: bool,
    /// Descriptors 3.. passed to the program (`--preserve-fds`, socket activation).
    pub preserve_fds: u32,
    /// Keep the caller's session keyring (runc's `--no-new-keyring`).
    pub no_new_keyring: bool,
}

/// Entry point of the cloned child.
pub fn run(cfg: InitConfig<'_>) -> ! {
    let mut ready = false;
    let err = match setup(&cfg, &mut ready) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = cfg.channel.send(&Message::Error(err.to_string()));
    if ready {
        // After `create` returned nobody reads the channel: the container's stderr is the
        // only place left to say why it did not start.
        let _ = writeln!(std::io::stderr(), "berth-runtime: {err}");
    }
    let code = match err {
        InitError::Process(ProcessError::NotFound(_)) => 127,
        InitError::Process(ProcessError::NotExecutable(_)) => 126,
        _ => 1,
    };
    // SAFETY: _exit ends the process without running the parent's atexit handlers.
    unsafe { libc::_exit(code) }
}

fn setup(cfg: &InitConfig<'_>, ready: &mut bool) -> Result<Infallible, InitError> {
    let spec = &cfg.bundle.spec;
    let empty = Process::default();
    let proc_ = spec.process().as_ref().unwrap_or(&empty);
    process::reset_signals();
    process::wire_stdio(cfg.stdio)?;
    // Whatever the runtime's caller left open (a host directory, a socket) must not reach
    // the container: not the hooks run inside it, not its program. Close-on-exec keeps what
    // the init itself still needs (channel, state directory, console socket) until exec.
    crate::fds::close_on_exec_from(crate::fds::first_closed(cfg.preserve_fds)?)?;
    // Device nodes and directories get exactly the modes the spec asks for.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let mut state = cfg.channel.wait_for_continue()?;
    let sys_ = LinuxSyscall;
    enter_namespaces(&sys_, cfg.plan, spec)?;
    if !cfg.no_new_keyring {
        // Not the caller's session keyring and its keys: one of the container's own, made by
        // its root (after the user namespace's setuid), before any of its code runs.
        crate::keyring::join_new(cfg.id, cfg.plan.has(CloneFlags::CLONE_NEWUSER))?;
    }
    let new_mnt = cfg.plan.new.contains(CloneFlags::CLONE_NEWNS);
    if new_mnt {
        let setup = RootfsSetup {
            rootfs: &cfg.bundle.rootfs,
            bundle: &cfg.bundle.dir,
            spec,
            user_ns: cfg.plan.user(),
        };
        setup.prepare(&sys_)?;
    }
    let hooks = spec.hooks().as_ref();
    let runtime_hooks = hooks.is_some_and(|h| {
        !HookKind::CreateRuntime.of(h).is_empty() || !HookKind::Prestart.of(h).is_empty()
    });
    if runtime_hooks {
        cfg.channel.send(&Message::RunRuntimeHooks)?;
        state = cfg.channel.wait_for_continue()?;
    }
    hooks::run(hooks, HookKind::CreateContainer, &state)?;
    if new_mnt {
        rootfs::pivot(&sys_, &cfg.bundle.rootfs, cfg.no_pivot)?;
    }
    // Before `finish`, which may make /proc/sys read-only (readonlyPaths). The keys were
    // checked with the bundle (`spec::validate`): only namespaced ones, never the host's.
    if let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) {
        for (key, value) in sysctl {
            let path = crate::spec::sysctl_file(key).ok_or_else(|| InitError::Sysctl {
                key: key.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a sysctl name (an empty, `.` or `..` component)",
                ),
            })?;
            std::fs::write(&path, value).map_err(|source| InitError::Sysctl {
                key: key.clone(),
                source,
            })?;
        }
    }
    if new_mnt {
        rootfs::finish(&sys_, Path::new("/"), spec)?;
    }
    if let Some(sock) = &cfg.console {
        crate::console::attach(sock.as_fd(), proc_)?;
    }
    // Without a mount namespace of its own or joined, the root is entered by chroot, as runc
    // does.
    if !cfg.plan.has(CloneFlags::CLONE_NEWNS) {
        nix::unistd::chroot(&cfg.bundle.rootfs).map_err(sys_err("chroot into the root"))?;
        nix::unistd::chdir("/").map_err(sys_err("chdir /"))?;
    }
    let root = if new_mnt || !cfg.plan.has(CloneFlags::CLONE_NEWNS) {
        Path::new("/")
    } else {
        cfg.bundle.rootfs.as_path()
    };
    let program = process::Program::resolve(proc_, root)?;
    // Limits the kernel refuses (a hard limit raised without CAP_SYS_RESOURCE) fail `create`,
    // as with runc, instead of the process after `start`; exec sets the same values again.
    process::set_rlimits(&sys_, proc_)?;

    cfg.channel.send(&Message::Ready)?;
    *ready = true;
    // Held open (close-on-exec) until exec: `start` reads EOF exactly when the program runs.
    let _fifo = match &cfg.wait {
        Wait::Channel => {
            cfg.channel.wait_for_start()?;
            None
        }
        Wait::Fifo(dir) => Some(wait_on_fifo(dir)?),
    };
    hooks::run(hooks, HookKind::StartContainer, &state)?;
    Err(program
        .exec(&sys_, proc_, cfg.filters, cfg.preserve_fds)
        .into())
}

/// The namespace steps of the init, once it is in the container's cgroup: root of a new user
/// namespace, a new cgroup namespace, the joined ones, then the UTS names.
fn enter_namespaces(sys: &dyn Syscall, plan: &NamespacePlan, spec: &Spec) -> Result<(), InitError> {
    if plan.user() {
        // Become the namespace's root so that files created during setup are owned by it.
        sys.setresgid(0)
            .map_err(sys_err("setgid 0 in user namespace"))?;
        sys.setresuid(0)
            .map_err(sys_err("setuid 0 in user namespace"))?;
    }
    // Only now, inside the container's cgroup: the new cgroup namespace is rooted at it, so
    // the container sees `0::/` and only its own subtree under /sys/fs/cgroup.
    if plan.new.contains(CloneFlags::CLONE_NEWCGROUP) {
        sys.unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(sys_err("unshare cgroup namespace"))?;
    }
    for (flag, path) in &plan.join {
        namespaces::enter(sys, path, *flag)?;
    }
    if plan.has(CloneFlags::CLONE_NEWUTS) {
        if let Some(h) = spec.hostname() {
            sys.sethostname(h).map_err(sys_err("sethostname"))?;
        }
        if let Some(d) = spec.domainname() {
            sys.setdomainname(d).map_err(sys_err("setdomainname"))?;
        }
    }
    Ok(())
}

/// Blocks until `start` opens the FIFO for reading, then tells it the init is alive.
fn wait_on_fifo(dir: &OwnedFd) -> Result<OwnedFd, InitError> {
    use nix::fcntl::{openat, OFlag};
    let fd = openat(
        dir,
        EXEC_FIFO,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys_err("open exec fifo"))?;
    nix::unistd::write(&fd, b"0").map_err(sys_err("write exec fifo"))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    //! The namespace steps checked with the recording syscall seam (no root needed).
    use super::*;
    use crate::syscall::test::{Call, RecordingSyscall};
    use nix::errno::Errno;
    use std::path::PathBuf;

    fn spec(linux: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"hostname":"web",
                "domainname":"example.org","linux":{linux}}}"#
        ))
        .unwrap()
    }

    fn plan(s: &Spec) -> NamespacePlan {
        NamespacePlan::from_linux(s.linux().as_ref()).unwrap()
    }

    #[test]
    fn a_console_failure_reads_as_the_step_and_errno() {
        // The container's stderr and the runtime show this text: the same as when the console
        // built an `InitError::Sys` itself.
        let console = ConsoleError {
            what: "set controlling terminal",
            errno: Errno::EPERM,
        };
        let sys = InitError::Sys {
            what: "set controlling terminal".into(),
            errno: Errno::EPERM,
        };
        assert_eq!(InitError::from(console).to_string(), sys.to_string());
    }

    #[test]
    fn user_namespace_root_first_then_cgroup_then_names() {
        let s = spec(
            r#"{"namespaces":[{"type":"user"},{"type":"mount"},{"type":"uts"},{"type":"cgroup"}]}"#,
        );
        let sys = RecordingSyscall::default();
        enter_namespaces(&sys, &plan(&s), &s).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::Setresgid(0),
                Call::Setresuid(0),
                Call::Unshare(CloneFlags::CLONE_NEWCGROUP),
                Call::Hostname("web".into()),
                Call::Domainname("example.org".into()),
            ]
        );
    }

    #[test]
    fn joined_namespaces_mount_last_and_no_names_without_uts() {
        let s = spec(
            r#"{"namespaces":[{"type":"mount","path":"/run/c/mnt"},
                {"type":"network","path":"/run/netns/x"},{"type":"ipc","path":"/run/c/ipc"}]}"#,
        );
        let sys = RecordingSyscall::default();
        enter_namespaces(&sys, &plan(&s), &s).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::Setns("/run/netns/x".into(), CloneFlags::CLONE_NEWNET),
                Call::Setns("/run/c/ipc".into(), CloneFlags::CLONE_NEWIPC),
                Call::Setns("/run/c/mnt".into(), CloneFlags::CLONE_NEWNS),
            ]
        );
    }

    #[test]
    fn a_failing_step_is_named_and_stops_the_setup() {
        let s = spec(
            r#"{"namespaces":[{"type":"uts"},{"type":"network","path":"/run/netns/x"},
                {"type":"ipc","path":"/run/c/ipc"}]}"#,
        );
        let sys = RecordingSyscall::default();
        sys.fail_on(
            Call::Setns("/run/netns/x".into(), CloneFlags::CLONE_NEWNET),
            Errno::EPERM,
        );
        let e = enter_namespaces(&sys, &plan(&s), &s).unwrap_err();
        match &e {
            InitError::Namespace(NamespaceError::Setns { path, source }) => {
                assert_eq!(
                    (path, *source),
                    (&PathBuf::from("/run/netns/x"), Errno::EPERM)
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().starts_with("setns /run/netns/x: "), "{e}");
        assert!(sys.calls().is_empty(), "{:?}", sys.calls());

        let s = spec(r#"{"namespaces":[{"type":"user"},{"type":"uts"}]}"#);
        let sys = RecordingSyscall::default();
        sys.fail_on(Call::Setresuid(0), Errno::EINVAL);
        let e = enter_namespaces(&sys, &plan(&s), &s).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("setuid 0 in user namespace: EINVAL"),
            "{e}"
        );
        assert_eq!(sys.calls(), vec![Call::Setresgid(0)]);
    }
}
