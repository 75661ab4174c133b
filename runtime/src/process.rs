//! The last steps inside the container before exec: rlimits, identity, capabilities,
//! no_new_privs, seccomp, working directory, and finding the program.

use crate::syscall::{CapSets, Syscall};
use oci_spec::runtime::{Capabilities, Capability, PosixRlimitType, Process};
use seccompiler::BpfProgram;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every capability this build knows, in the kernel's numbering (`CAP_CHOWN` is 0,
/// `CAP_CHECKPOINT_RESTORE` 40). A running kernel may know fewer (`cap_last_cap`).
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{what}: {errno}")]
    Sys {
        what: String,
        errno: nix::errno::Errno,
    },
    /// A name is looked up on PATH; a path (`./start.sh`) only where it points.
    #[error(
        "executable file `{name}` not found{where_}",
        name = .0,
        where_ = if .0.contains('/') { "" } else { " in $PATH" }
    )]
    NotFound(String),
    #[error("`{0}` is not an executable file")]
    NotExecutable(String),
    #[error("process.capabilities: unknown capability {0}")]
    Capability(String),
    #[error(
        "process.capabilities: {cap} is in {set} but not in {missing}; the kernel refuses to \
         raise it (EPERM)"
    )]
    CapabilityNotGrantable {
        cap: String,
        set: &'static str,
        missing: &'static str,
    },
    #[error("{0} contains a NUL byte")]
    Nul(String),
    #[error("process.cwd `{0}` leads outside the container's root")]
    CwdOutsideRoot(PathBuf),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Fd(#[from] crate::fds::FdError),
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> ProcessError {
    let what = what.into();
    move |errno| ProcessError::Sys { what, errno }
}

fn rlimit_resource(t: PosixRlimitType) -> i32 {
    use PosixRlimitType::*;
    (match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }) as i32
}

pub fn set_rlimits(sys: &dyn Syscall, p: &Process) -> Result<(), ProcessError> {
    for r in p.rlimits().iter().flatten() {
        sys.setrlimit(rlimit_resource(r.typ()), r.soft(), r.hard())
            .map_err(sys_err(format!("setrlimit {}", r.typ())))?;
    }
    Ok(())
}

/// Capability numbers of a set, as a bit mask.
fn mask(set: Option<&Capabilities>) -> Result<u64, ProcessError> {
    let mut m = 0u64;
    for c in set.into_iter().flatten() {
        m |= 1 << cap_index(c)?;
    }
    Ok(m)
}

fn cap_index(c: &Capability) -> Result<u8, ProcessError> {
    let name = format!("CAP_{c}");
    name.parse::<caps::Capability>()
        .map(|c| c.index())
        .map_err(|_| ProcessError::Capability(name))
}

/// Checks the capability sets against the kernel's rules for raising them (an ambient
/// capability must also be permitted and inheritable, an effective one permitted), so a set
/// the init could never apply is an error at `create`, before anything runs.
pub fn check_capabilities(p: &Process) -> Result<(), ProcessError> {
    let Some(caps) = p.capabilities().as_ref() else {
        return Ok(());
    };
    let permitted = mask(caps.permitted().as_ref())?;
    let inheritable = mask(caps.inheritable().as_ref())?;
    let rules: [(&Option<Capabilities>, &'static str, u64, &'static str); 3] = [
        (caps.ambient(), "ambient", permitted, "permitted"),
        (caps.ambient(), "ambient", inheritable, "inheritable"),
        (caps.effective(), "effective", permitted, "permitted"),
    ];
    for (set, name, required, missing) in rules {
        for c in set.iter().flatten() {
            if required & (1 << cap_index(c)?) == 0 {
                return Err(ProcessError::CapabilityNotGrantable {
                    cap: format!("CAP_{c}"),
                    set: name,
                    missing,
                });
            }
        }
    }
    Ok(())
}

/// Switches to the process's user and groups and sets its capabilities, no_new_privs and
/// seccomp filters. Filters go in last when no_new_privs is set (so setup calls are not
/// filtered), else while CAP_SYS_ADMIN is still held, as the kernel requires.
pub fn apply_identity(
    sys: &dyn Syscall,
    p: &Process,
    filters: &[BpfProgram],
    set_groups: bool,
) -> Result<(), ProcessError> {
    let nnp = p.no_new_privileges().unwrap_or(false);
    if !nnp && !filters.is_empty() {
        crate::seccomp::install(sys, filters)?;
    }
    // Capabilities newer than the kernel are left out, as runc does: a spec written for
    // every capability (a privileged container) must not fail on an older kernel, whose
    // capset refuses bits it does not know.
    let last = sys
        .cap_last_cap()
        .map_err(sys_err("find the last capability"))?;
    let known = u64::MAX >> (63 - last.min(63));
    let caps = p.capabilities().as_ref();
    let bounding = mask(caps.and_then(|c| c.bounding().as_ref()))?;
    let sets = CapSets {
        effective: mask(caps.and_then(|c| c.effective().as_ref()))? & known,
        permitted: mask(caps.and_then(|c| c.permitted().as_ref()))? & known,
        inheritable: mask(caps.and_then(|c| c.inheritable().as_ref()))? & known,
    };
    let ambient = mask(caps.and_then(|c| c.ambient().as_ref()))? & known;
    for cap in 0..64u64 {
        if bounding & (1 << cap) == 0 {
            match sys.capbset_drop(cap) {
                Ok(()) => {}
                // Past the last capability this kernel knows.
                Err(nix::errno::Errno::EINVAL) => break,
                Err(errno) => return Err(sys_err("drop bounding capability")(errno)),
            }
        }
    }
    sys.set_keepcaps(true)
        .map_err(sys_err("keep capabilities"))?;
    let user = p.user();
    if set_groups {
        let gids: Vec<u32> = user.additional_gids().iter().flatten().copied().collect();
        sys.setgroups(&gids).map_err(sys_err("setgroups"))?;
    }
    sys.setresgid(user.gid())
        .map_err(sys_err(format!("setgid {}", user.gid())))?;
    sys.setresuid(user.uid())
        .map_err(sys_err(format!("setuid {}", user.uid())))?;
    sys.set_keepcaps(false)
        .map_err(sys_err("clear keep capabilities"))?;
    sys.capset(sets).map_err(sys_err("capset"))?;
    for cap in (0..64u64).filter(|c| ambient & (1 << c) != 0) {
        sys.ambient_raise(cap)
            .map_err(sys_err("raise ambient capability"))?;
    }
    if nnp {
        sys.set_no_new_privs().map_err(sys_err("no_new_privs"))?;
        crate::seccomp::install(sys, filters)?;
    }
    Ok(())
}

/// Puts the caller's descriptors on 0, 1, 2 (a freshly cloned child).
pub fn wire_stdio(stdio: Option<[std::os::fd::RawFd; 3]>) -> Result<(), ProcessError> {
    if let Some([i, o, e]) = stdio {
        for (from, to) in [(i, 0), (o, 1), (e, 2)] {
            if from != to {
                crate::syscall::dup2(from, to).map_err(sys_err("dup2 stdio"))?;
            }
        }
    }
    Ok(())
}

/// The program a container process runs, resolved inside the container before it may start
/// (so a missing program is reported while the caller still listens).
pub struct Program {
    path: PathBuf,
    args: Vec<CString>,
    env: Vec<CString>,
}

impl Program {
    /// `root` is the container root as this process sees it ("/" after pivot_root).
    pub fn resolve(p: &Process, root: &Path) -> Result<Program, ProcessError> {
        let env = environment(p, root);
        let args = p.args().clone().unwrap_or_default();
        let path = find_executable(
            root,
            p.cwd(),
            args.first().map(String::as_str).unwrap_or_default(),
            &env,
        )?;
        Ok(Program {
            path,
            args: cstrings(&args, "process.args")?,
            env: cstrings(&env, "process.env")?,
        })
    }

    /// Closes (on exec) every descriptor but stdio and the `preserve_fds` from 3, sets
    /// rlimits, identity, capabilities, seccomp, umask and working directory, then execs.
    /// Returns only on failure.
    pub fn exec(
        self,
        sys: &dyn Syscall,
        p: &Process,
        filters: &[BpfProgram],
        preserve_fds: u32,
    ) -> ProcessError {
        let setup = || -> Result<(), ProcessError> {
            // First: a seccomp profile may deny close_range, and after the switch to the
            // process's user the fallback may not read this non-dumpable process's
            // /proc/self/fd.
            crate::fds::pass_only(preserve_fds)?;
            set_rlimits(sys, p)?;
            apply_identity(sys, p, filters, true)?;
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
                p.user().umask().unwrap_or(0o022) as _,
            ));
            enter_cwd(p.cwd())
        };
        match setup() {
            Ok(()) => exec(&self.path, &self.args, &self.env),
            Err(e) => e,
        }
    }
}

/// Changes into the process's working directory, which must lie inside the container's root.
/// A path through a descriptor the runtime still holds (`/proc/self/fd/N` of a host
/// directory, the CVE-2024-21626 pattern) would otherwise start the program outside it. The
/// kernel's getcwd names such a directory `(unreachable)/...` instead of an absolute path.
fn enter_cwd(cwd: &Path) -> Result<(), ProcessError> {
    nix::unistd::chdir(cwd).map_err(sys_err(format!("chdir {}", cwd.display())))?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the raw syscall writes at most `buf.len()` bytes into `buf`.
    let r = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    if r < 0 {
        return Err(ProcessError::Sys {
            what: format!("getcwd after chdir {}", cwd.display()),
            errno: nix::errno::Errno::last(),
        });
    }
    if buf.first() != Some(&b'/') {
        return Err(ProcessError::CwdOutsideRoot(cwd.to_path_buf()));
    }
    Ok(())
}

/// Gives a freshly cloned child default signal handling: the parent may block signals (a
/// supervisor reading them from a signalfd) or ignore SIGPIPE (Rust's runtime does), and both
/// would survive exec into the container.
pub fn reset_signals() {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL has no preconditions.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// The environment with PATH and HOME filled in when the spec leaves them out, one entry per
/// name (see [`merge_env`]).
pub fn environment(p: &Process, root: &Path) -> Vec<String> {
    let mut env = merge_env(p.env().as_deref().unwrap_or_default());
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(root, p.user().uid())));
    }
    env
}

/// One entry per name, as runc does: a later `NAME=value` replaces an earlier one in its
/// place (`exec -e` after the config's environment overrides it). An entry without `=` is
/// a name of its own.
pub fn merge_env(env: &[String]) -> Vec<String> {
    let name = |e: &str| e.split_once('=').map_or(e, |(n, _)| n).to_string();
    let mut out: Vec<String> = Vec::with_capacity(env.len());
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in env {
        let key = name(e);
        match at.get(&key).and_then(|&i| out.get_mut(i)) {
            Some(slot) => *slot = e.clone(),
            None => {
                at.insert(key, out.len());
                out.push(e.clone());
            }
        }
    }
    out
}

/// The home directory of `uid` in the container's /etc/passwd, else `/`.
fn home_of(root: &Path, uid: u32) -> String {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[2].parse() == Ok(uid))
        .map(|f| f[5].to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// Finds `program` like execvp would, with the container's PATH, relative to `root`
/// (the container root: "/" after pivot_root). A path with a `/` that is not absolute
/// (`./start.sh`, `bin/server`) is taken from `cwd`, the directory the program will run in.
/// Returns the path to exec, absolute so that it does not depend on the directory exec
/// happens in.
pub fn find_executable(
    root: &Path,
    cwd: &Path,
    program: &str,
    env: &[String],
) -> Result<PathBuf, ProcessError> {
    let in_root = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let check = |p: &Path| -> Result<bool, ProcessError> {
        let full = in_root(p);
        match std::fs::metadata(&full) {
            Ok(m) if m.is_file() => {
                let c = CString::new(full.as_os_str().as_bytes())
                    .map_err(|_| ProcessError::Nul(program.into()))?;
                // SAFETY: a valid C string.
                Ok(unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
            }
            _ => Ok(false),
        }
    };
    if program.contains('/') {
        // `cwd` is absolute (the spec requires it); a relative one is taken from the root.
        let p: PathBuf = Path::new("/")
            .join(cwd)
            .join(program)
            .components()
            .collect();
        if check(&p)? {
            return Ok(p);
        }
        return Err(if in_root(&p).exists() {
            ProcessError::NotExecutable(program.into())
        } else {
            ProcessError::NotFound(program.into())
        });
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if check(&candidate)? {
            return Ok(candidate);
        }
    }
    Err(ProcessError::NotFound(program.into()))
}

pub fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>, ProcessError> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| ProcessError::Nul(what.into())))
        .collect()
}

/// Replaces the process image. Returns only on failure.
pub fn exec(path: &Path, args: &[CString], env: &[CString]) -> ProcessError {
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else {
        return ProcessError::Nul("program path".into());
    };
    match nix::unistd::execve(&p, args, env) {
        Err(errno) => ProcessError::Sys {
            what: format!("exec {}", path.display()),
            errno,
        },
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::test::{Call, RecordingSyscall};
    use nix::errno::Errno;

    fn process(json: &str) -> Process {
        serde_json::from_str(json).unwrap()
    }

    const WEB: &str = r#"{"cwd":"/","user":{"uid":1000,"gid":100,"additionalGids":[10,20]},
        "capabilities":{"bounding":["CAP_CHOWN","CAP_NET_BIND_SERVICE"],
        "effective":["CAP_NET_BIND_SERVICE"],"permitted":["CAP_CHOWN","CAP_NET_BIND_SERVICE"],
        "inheritable":["CAP_NET_BIND_SERVICE"],"ambient":["CAP_NET_BIND_SERVICE"]}"#;

    fn filters() -> Vec<BpfProgram> {
        let s = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        crate::seccomp::compile(&s).unwrap()
    }

    /// A kernel that knows capabilities 0..=`last`.
    fn kernel_up_to(last: u64) -> RecordingSyscall {
        let sys = RecordingSyscall::default();
        sys.last_cap.set(Some(last));
        sys
    }

    /// A kernel that knows capabilities 0..=40.
    fn kernel() -> RecordingSyscall {
        kernel_up_to(40)
    }

    #[test]
    fn identity_then_capabilities_then_no_new_privs_and_seccomp() {
        let p = process(&format!(r#"{WEB},"noNewPrivileges":true}}"#));
        let f = filters();
        let sys = kernel();
        apply_identity(&sys, &p, &f, true).unwrap();
        let mut want: Vec<Call> = (1..=9).chain(11..=40).map(Call::CapbsetDrop).collect();
        want.extend([
            Call::Keepcaps(true),
            Call::Setgroups(vec![10, 20]),
            Call::Setresgid(100),
            Call::Setresuid(1000),
            Call::Keepcaps(false),
            Call::Capset(CapSets {
                effective: 1 << 10,
                permitted: 1 | 1 << 10,
                inheritable: 1 << 10,
            }),
            Call::AmbientRaise(10),
            Call::NoNewPrivs,
        ]);
        want.extend(f.iter().map(|f| Call::Seccomp(f.len())));
        assert_eq!(sys.calls(), want);
    }

    #[test]
    fn without_no_new_privs_seccomp_goes_first() {
        let p = process(&format!("{WEB}}}"));
        let f = filters();
        let sys = kernel();
        apply_identity(&sys, &p, &f, true).unwrap();
        let calls = sys.calls();
        let seccomp: Vec<Call> = f.iter().map(|f| Call::Seccomp(f.len())).collect();
        assert_eq!(calls[..seccomp.len()], seccomp[..]);
        assert_eq!(calls[seccomp.len()], Call::CapbsetDrop(1));
        assert!(!calls.contains(&Call::NoNewPrivs));
        assert_eq!(calls.last(), Some(&Call::AmbientRaise(10)));
    }

    #[test]
    fn without_capabilities_every_set_is_empty() {
        let p = process(r#"{"cwd":"/","user":{"uid":0,"gid":0}}"#);
        let sys = kernel();
        apply_identity(&sys, &p, &[], false).unwrap();
        let calls = sys.calls();
        assert_eq!(calls.first(), Some(&Call::CapbsetDrop(0)));
        assert!(!calls.iter().any(|c| matches!(c, Call::Setgroups(_))));
        assert_eq!(calls.last(), Some(&Call::Capset(CapSets::default())));
    }

    #[test]
    fn a_failing_identity_step_is_named_and_stops() {
        let p = process(&format!("{WEB}}}"));
        let sys = kernel();
        sys.fail_on(Call::Setresgid(100), Errno::EPERM);
        let e = apply_identity(&sys, &p, &[], true).unwrap_err().to_string();
        assert!(e.starts_with("setgid 100: EPERM"), "{e}");
        assert_eq!(sys.calls().last(), Some(&Call::Setgroups(vec![10, 20])));

        let sys = RecordingSyscall::default();
        sys.fail_on(Call::CapbsetDrop(1), Errno::EPERM);
        let e = apply_identity(&sys, &p, &[], true).unwrap_err().to_string();
        assert!(e.starts_with("drop bounding capability: EPERM"), "{e}");
        assert!(sys.calls().is_empty());

        let sys = kernel();
        sys.fail_on(Call::AmbientRaise(10), Errno::EPERM);
        let e = apply_identity(&sys, &p, &[], true).unwrap_err().to_string();
        assert!(e.starts_with("raise ambient capability: EPERM"), "{e}");
    }

    #[test]
    fn rlimits_are_set_in_spec_order_and_a_refusal_is_named() {
        let p = process(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"rlimits":[{"type":"RLIMIT_NOFILE","soft":512,"hard":1024},
                {"type":"RLIMIT_CORE","soft":0,"hard":0}]}"#,
        );
        let sys = RecordingSyscall::default();
        set_rlimits(&sys, &p).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::Setrlimit {
                    resource: libc::RLIMIT_NOFILE as i32,
                    soft: 512,
                    hard: 1024
                },
                Call::Setrlimit {
                    resource: libc::RLIMIT_CORE as i32,
                    soft: 0,
                    hard: 0
                },
            ]
        );
        let sys = RecordingSyscall::default();
        sys.fail_on(
            Call::Setrlimit {
                resource: libc::RLIMIT_NOFILE as i32,
                soft: 512,
                hard: 1024,
            },
            Errno::EPERM,
        );
        let e = set_rlimits(&sys, &p).unwrap_err();
        assert!(
            matches!(&e, ProcessError::Sys { what, errno: Errno::EPERM } if what.contains("NOFILE")),
            "{e}"
        );
        assert!(sys.calls().is_empty());
    }

    #[test]
    fn finds_programs_on_the_container_path() {
        let root = std::env::temp_dir().join(format!("berth-proc-{}", std::process::id()));
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::copy("/bin/true", root.join("bin/true")).unwrap();
        std::fs::write(root.join("bin/data"), "x").unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:101:101::/srv/web:/bin/sh\n",
        )
        .unwrap();
        let env = vec!["PATH=/usr/bin:/bin".to_string()];
        assert_eq!(
            find_executable(&root, Path::new("/"), "true", &env).unwrap(),
            PathBuf::from("/bin/true")
        );
        assert_eq!(
            find_executable(&root, Path::new("/"), "/bin/true", &env).unwrap(),
            PathBuf::from("/bin/true")
        );
        assert!(matches!(
            find_executable(&root, Path::new("/"), "nope", &env),
            Err(ProcessError::NotFound(_))
        ));
        assert!(matches!(
            find_executable(&root, Path::new("/"), "/bin/data", &env),
            Err(ProcessError::NotExecutable(_))
        ));
        // A relative path with a `/` is found from the working directory, not the root nor
        // PATH; a bare name is never taken from the working directory.
        std::fs::create_dir_all(root.join("app/bin")).unwrap();
        std::fs::copy("/bin/true", root.join("app/start.sh")).unwrap();
        std::fs::copy("/bin/true", root.join("app/bin/server")).unwrap();
        let app = Path::new("/app");
        assert_eq!(
            find_executable(&root, app, "./start.sh", &env).unwrap(),
            PathBuf::from("/app/start.sh")
        );
        assert_eq!(
            find_executable(&root, app, "bin/server", &env).unwrap(),
            PathBuf::from("/app/bin/server")
        );
        assert_eq!(
            find_executable(&root, Path::new("/app/bin"), "../start.sh", &env).unwrap(),
            PathBuf::from("/app/bin/../start.sh")
        );
        assert_eq!(
            find_executable(&root, app, "/bin/true", &env).unwrap(),
            PathBuf::from("/bin/true")
        );
        let e = find_executable(&root, Path::new("/"), "./start.sh", &env).unwrap_err();
        assert_eq!(e.to_string(), "executable file `./start.sh` not found");
        let e = find_executable(&root, app, "nope", &env).unwrap_err();
        assert_eq!(e.to_string(), "executable file `nope` not found in $PATH");
        assert!(matches!(
            find_executable(&root, app, "start.sh", &env),
            Err(ProcessError::NotFound(_))
        ));
        let mut p = Process::default();
        p.set_env(Some(vec!["A=1".into()]));
        let mut u = p.user().clone();
        u.set_uid(101);
        p.set_user(u);
        let env = environment(&p, &root);
        assert!(
            env.contains(&format!("PATH={DEFAULT_PATH}"))
                && env.contains(&"HOME=/srv/web".to_string()),
            "{env:?}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn later_environment_entries_replace_earlier_ones_in_place() {
        let env: Vec<String> = ["PATH=/bin", "A=1", "B=2", "A=3", "C", "C=x", "B=", "D=a=b"]
            .map(String::from)
            .to_vec();
        assert_eq!(merge_env(&env), ["PATH=/bin", "A=3", "B=", "C=x", "D=a=b"]);
        let mut p = Process::default();
        p.set_env(Some(["HOME=/a", "HOME=/b"].map(String::from).to_vec()));
        let env = environment(&p, Path::new("/nonexistent"));
        assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
        assert!(env.contains(&"HOME=/b".to_string()), "{env:?}");
    }

    #[test]
    fn capabilities_newer_than_the_kernel_are_left_out() {
        // Every capability this build knows, on a kernel whose last one is CAP_AUDIT_READ
        // (37, Linux 3.16 to 5.7): capset gets only what that kernel can grant.
        let all: Vec<String> = ALL_CAPABILITIES
            .iter()
            .map(|c| format!("\"CAP_{c}\""))
            .collect();
        let all = all.join(",");
        let p = process(&format!(
            r#"{{"cwd":"/","user":{{"uid":0,"gid":0}},"capabilities":{{"bounding":[{all}],
            "effective":[{all}],"permitted":[{all}],"inheritable":[{all}],"ambient":[{all}]}}}}"#
        ));
        check_capabilities(&p).unwrap();
        let sys = kernel_up_to(37);
        apply_identity(&sys, &p, &[], false).unwrap();
        let known = (1u64 << 38) - 1;
        let calls = sys.calls();
        assert!(
            !calls.iter().any(|c| matches!(c, Call::CapbsetDrop(_))),
            "{calls:?}"
        );
        assert!(calls.contains(&Call::Capset(CapSets {
            effective: known,
            permitted: known,
            inheritable: known,
        })));
        let raised: Vec<u64> = calls
            .iter()
            .filter_map(|c| match c {
                Call::AmbientRaise(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(raised, (0..=37).collect::<Vec<_>>());
    }

    #[test]
    fn all_capabilities_are_in_kernel_order() {
        for (i, c) in ALL_CAPABILITIES.iter().enumerate() {
            assert_eq!(usize::from(cap_index(c).unwrap()), i, "{c}");
        }
    }

    #[test]
    fn capability_names_map_to_numbers() {
        let set: Capabilities = [
            Capability::Chown,
            Capability::NetBindService,
            Capability::SysAdmin,
        ]
        .into_iter()
        .collect();
        assert_eq!(mask(Some(&set)).unwrap(), (1 << 0) | (1 << 10) | (1 << 21));
    }
}
