//! The last steps inside the container before exec: rlimits, identity, capabilities,
//! no_new_privs, seccomp, working directory, and finding the program.

use oci_spec::runtime::{Capabilities, Capability, PosixRlimitType, Process};
use seccompiler::BpfProgram;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{what}: {errno}")]
    Sys {
        what: String,
        errno: nix::errno::Errno,
    },
    #[error("executable file `{0}` not found in $PATH")]
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
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> ProcessError {
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

pub fn set_rlimits(p: &Process) -> Result<(), ProcessError> {
    for r in p.rlimits().iter().flatten() {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: a valid resource number and a pointer to a live rlimit.
        if unsafe { libc::setrlimit(rlimit_resource(r.typ()) as _, &lim) } != 0 {
            return Err(ProcessError::Sys {
                what: format!("setrlimit {}", r.typ()),
                errno: nix::errno::Errno::last(),
            });
        }
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

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result<(), ProcessError> {
    let hdr = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and two data structs of the v3 ABI, both live for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) };
    nix::errno::Errno::result(r)
        .map(drop)
        .map_err(sys("capset"))
}

fn prctl(what: &str, op: i32, a: u64) -> Result<(), ProcessError> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(op, a, 0, 0, 0) };
    nix::errno::Errno::result(r).map(drop).map_err(sys(what))
}

/// Switches to the process's user and groups and sets its capabilities, no_new_privs and
/// seccomp filters. Filters go in last when no_new_privs is set (so setup calls are not
/// filtered), else while CAP_SYS_ADMIN is still held, as the kernel requires.
pub fn apply_identity(
    p: &Process,
    filters: &[BpfProgram],
    set_groups: bool,
) -> Result<(), ProcessError> {
    let nnp = p.no_new_privileges().unwrap_or(false);
    if !nnp && !filters.is_empty() {
        crate::seccomp::install(filters)?;
    }
    let caps = p.capabilities().as_ref();
    let bounding = mask(caps.and_then(|c| c.bounding().as_ref()))?;
    let effective = mask(caps.and_then(|c| c.effective().as_ref()))?;
    let permitted = mask(caps.and_then(|c| c.permitted().as_ref()))?;
    let inheritable = mask(caps.and_then(|c| c.inheritable().as_ref()))?;
    let ambient = mask(caps.and_then(|c| c.ambient().as_ref()))?;
    for cap in 0..64u64 {
        if bounding & (1 << cap) == 0 {
            match prctl("drop bounding capability", libc::PR_CAPBSET_DROP, cap) {
                Ok(()) => {}
                // Past the last capability this kernel knows.
                Err(ProcessError::Sys {
                    errno: nix::errno::Errno::EINVAL,
                    ..
                }) => break,
                Err(e) => return Err(e),
            }
        }
    }
    prctl("keep capabilities", libc::PR_SET_KEEPCAPS, 1)?;
    let user = p.user();
    if set_groups {
        let gids: Vec<nix::unistd::Gid> = user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids).map_err(sys("setgroups"))?;
    }
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(sys(format!("setgid {}", user.gid())))?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(sys(format!("setuid {}", user.uid())))?;
    prctl("clear keep capabilities", libc::PR_SET_KEEPCAPS, 0)?;
    capset(effective, permitted, inheritable)?;
    if ambient != 0 {
        for cap in (0..64u64).filter(|c| ambient & (1 << c) != 0) {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                )
            };
            nix::errno::Errno::result(r).map_err(sys("raise ambient capability"))?;
        }
    }
    if nnp {
        prctl("no_new_privs", libc::PR_SET_NO_NEW_PRIVS, 1)?;
        crate::seccomp::install(filters)?;
    }
    Ok(())
}

/// Puts the caller's descriptors on 0, 1, 2 (a freshly cloned child).
pub fn wire_stdio(stdio: Option<[std::os::fd::RawFd; 3]>) -> Result<(), ProcessError> {
    if let Some([i, o, e]) = stdio {
        for (from, to) in [(i, 0), (o, 1), (e, 2)] {
            if from != to {
                crate::syscall::dup2(from, to).map_err(sys("dup2 stdio"))?;
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
            args.first().map(String::as_str).unwrap_or_default(),
            &env,
        )?;
        Ok(Program {
            path,
            args: cstrings(&args, "process.args")?,
            env: cstrings(&env, "process.env")?,
        })
    }

    /// Sets rlimits, identity, capabilities, seccomp, umask and working directory, then
    /// execs. Returns only on failure.
    pub fn exec(self, p: &Process, filters: &[BpfProgram]) -> ProcessError {
        let setup = || -> Result<(), ProcessError> {
            set_rlimits(p)?;
            apply_identity(p, filters, true)?;
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
    nix::unistd::chdir(cwd).map_err(sys(format!("chdir {}", cwd.display())))?;
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

/// The environment with PATH and HOME filled in when the spec leaves them out.
pub fn environment(p: &Process, root: &Path) -> Vec<String> {
    let mut env: Vec<String> = p.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home_of(root, p.user().uid())));
    }
    env
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
/// (the container root: "/" after pivot_root). Returns the path to exec.
pub fn find_executable(
    root: &Path,
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
        let p = PathBuf::from(program);
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
            find_executable(&root, "true", &env).unwrap(),
            PathBuf::from("/bin/true")
        );
        assert_eq!(
            find_executable(&root, "/bin/true", &env).unwrap(),
            PathBuf::from("/bin/true")
        );
        assert!(matches!(
            find_executable(&root, "nope", &env),
            Err(ProcessError::NotFound(_))
        ));
        assert!(matches!(
            find_executable(&root, "/bin/data", &env),
            Err(ProcessError::NotExecutable(_))
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
