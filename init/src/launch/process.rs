//! The process launcher: system units (no `image`) run their command from the host root, in
//! their own process group and (when available) their own cgroup, with the unit's `env` and
//! `user`. stdout and stderr go into one pipe that the supervisor reads into the unit's log.
//!
//! Every process of a start carries the start's invocation id in its environment
//! ([`super::sweep`]): when the main process is gone, whatever it left behind (also with
//! `setsid` or a double fork, re-parented to berth-init) is found and killed.
//!
//! A start costs the same however many units run: the child shares berth-init's memory until
//! it execs (vfork semantics, so nothing is copied), and berth-init does not wait for a report
//! from the exec. The program is looked up in `PATH` before (so "not found" is still a start
//! error); an exec that fails anyway ends the child with 126/127 and a line in the unit's log.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cgroup::Cgroups;
use super::sweep::{kill_marked, supervisor_token, Scope, MARK_VAR};
use super::{LaunchError, Launcher, Spawned, Step};
use crate::unit::value::UserSpec;
use crate::unit::Unit;

/// Stack of a unit's child between clone and exec (it only makes syscalls).
const CHILD_STACK: usize = 64 * 1024;

/// PATH of every unit process unless its `env` sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct ProcessLauncher {
    cgroups: Box<dyn Cgroups>,
    /// Root whose `etc/passwd` and `etc/group` resolve user names.
    etc: PathBuf,
    /// Starts so far: the second half of invocation ids.
    starts: u64,
    /// The current invocation of each running unit (its health checks carry it too).
    current: HashMap<String, String>,
    /// Main process → its invocation, while it runs.
    mains: HashMap<i32, String>,
    /// Invocations whose main process is gone and whose leftovers the next sweep kills.
    ended: HashSet<String>,
    /// Low descriptors a child's stdio passes through, when the child may share berth-init's
    /// descriptor table (see [`Slots`]).
    slots: Option<Slots>,
}

/// Three descriptors opened before any unit's pipe, so their numbers are small. A child is
/// cloned with berth-init's descriptor table shared (no copy: the copy would cost one step per
/// open descriptor, i.e. per running unit), then keeps only the descriptors below the highest
/// slot (`close_range` with `CLOSE_RANGE_UNSHARE`): its stdio, the slots, and berth-init's
/// first few. berth-init points the slots at what one child needs right before the clone and
/// back at /dev/null after it.
struct Slots {
    stdin: OwnedFd,
    out: OwnedFd,
    procs: OwnedFd,
    null: OwnedFd,
}

impl Slots {
    fn open() -> Option<Slots> {
        // Probe: an unshared table makes this a no-op where the flag exists (Linux 5.9+).
        // SAFETY: close_range on an empty range of this process's descriptors.
        let probe = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                u32::MAX - 1,
                u32::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            )
        };
        if probe != 0 {
            return None;
        }
        let null = || std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
        Some(Slots {
            stdin: null()?,
            out: null()?,
            procs: null()?,
            null: null()?,
        })
    }

    /// The first descriptor a child does not keep.
    fn keep_below(&self) -> RawFd {
        [&self.stdin, &self.out, &self.procs]
            .iter()
            .map(|f| f.as_raw_fd())
            .max()
            .unwrap_or(2)
            + 1
    }

    /// Points slot `slot` at `fd` (close-on-exec: only the child's dup2 onto 0–2 survives).
    fn set(slot: &OwnedFd, fd: RawFd) -> io::Result<()> {
        // SAFETY: dup3 onto a descriptor this launcher owns.
        if unsafe { libc::dup3(fd, slot.as_raw_fd(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Back to /dev/null: the unit's pipe must have no writer left in berth-init.
    fn clear(&self) {
        for slot in [&self.stdin, &self.out, &self.procs] {
            let _ = Slots::set(slot, self.null.as_raw_fd());
        }
    }
}

impl ProcessLauncher {
    pub fn new(cgroups: Box<dyn Cgroups>) -> ProcessLauncher {
        ProcessLauncher {
            cgroups,
            etc: PathBuf::from("/etc"),
            starts: 0,
            current: HashMap::new(),
            mains: HashMap::new(),
            ended: HashSet::new(),
            slots: Slots::open(),
        }
    }

    fn spawn(
        &mut self,
        unit: &Unit,
        argv: &[String],
        capture: bool,
        invocation: &str,
    ) -> Result<Spawned, LaunchError> {
        let program = argv.first().map(String::as_str).unwrap_or_default();
        let nul = |what: &str| LaunchError::Spawn {
            command: program.to_string(),
            source: io::Error::new(io::ErrorKind::InvalidInput, format!("NUL byte in {what}")),
        };
        // Everything the child needs is built before the fork: it may not allocate.
        let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into())];
        for (k, v) in &unit.container.env {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        env.retain(|(k, _)| k != MARK_VAR && k != "BERTH_UNIT");
        env.push((MARK_VAR.into(), invocation.into()));
        env.push(("BERTH_UNIT".into(), unit.name.clone()));
        let search = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let exe = resolve_program(program, &search)?;
        let exe = CString::new(exe.as_os_str().as_bytes()).map_err(|_| nul("the program"))?;
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| nul("an argument"))?;
        let envs: Vec<CString> = env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<_, _>>()
            .map_err(|_| nul("the environment"))?;
        let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        arg_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        let ids = match &unit.container.user {
            Some(user) => Some(resolve_user(&self.etc, user)?),
            None => None,
        };
        let null = std::fs::File::open("/dev/null").map_err(|source| LaunchError::Spawn {
            command: "(opening /dev/null)".into(),
            source,
        })?;
        let mut reader = None;
        let mut writer = None;
        if capture {
            let (r, w) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| LaunchError::Pipe(e.into()))?;
            set_nonblocking(&r).map_err(LaunchError::Pipe)?;
            reader = Some(r);
            writer = Some(w);
        }
        let out: RawFd = writer
            .as_ref()
            .map_or(null.as_raw_fd(), |w: &OwnedFd| w.as_raw_fd());
        let procs = self.cgroups.prepare(&unit.name, &unit.resources)?;
        let procs_fd = match procs {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|source| LaunchError::Spawn {
                        command: format!("(joining cgroup {})", path.display()),
                        source,
                    })?,
            ),
            None => None,
        };
        let mut child = ChildSetup {
            exe: &exe,
            argv: arg_ptrs.as_ptr(),
            envp: env_ptrs.as_ptr(),
            stdio: [null.as_raw_fd(), out, out],
            procs: procs_fd.as_ref().map(|f| f.as_raw_fd()),
            ids,
            keep_below: None,
        };
        // The child shares berth-init's memory until its exec (vfork semantics): no copy of
        // the page tables and no copy-on-write faults afterwards, whose cost would grow with
        // berth-init's heap, i.e. with the number of units. berth-init waits meanwhile.
        let mut flags = nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK;
        if let Some(slots) = &self.slots {
            let routed = Slots::set(&slots.stdin, null.as_raw_fd())
                .and_then(|()| Slots::set(&slots.out, out))
                .and_then(|()| match child.procs {
                    Some(fd) => Slots::set(&slots.procs, fd),
                    None => Ok(()),
                });
            if routed.is_ok() {
                child.stdio = [
                    slots.stdin.as_raw_fd(),
                    slots.out.as_raw_fd(),
                    slots.out.as_raw_fd(),
                ];
                child.procs = child.procs.map(|_| slots.procs.as_raw_fd());
                child.keep_below = Some(slots.keep_below());
                flags |= nix::sched::CloneFlags::CLONE_FILES;
            }
        }
        let mut stack = vec![0u8; CHILD_STACK];
        let setup: nix::sched::CloneCb<'_> = Box::new(|| child.run());
        // SAFETY: berth-init is single-threaded and suspended until the child execs or exits;
        // the child runs on its own stack, only makes async-signal-safe syscalls on memory
        // prepared above (no allocation, no locks), touches a shared descriptor table only to
        // unshare it, and leaves through execve or `_exit`.
        let cloned = unsafe { nix::sched::clone(setup, &mut stack, flags, Some(libc::SIGCHLD)) };
        if let Some(slots) = &self.slots {
            slots.clear();
        }
        match cloned {
            Ok(pid) => Ok(Spawned {
                // The child is reaped by the supervisor's reaper.
                pid: pid.as_raw(),
                output: reader,
            }),
            Err(e) => Err(LaunchError::Spawn {
                command: program.to_string(),
                source: e.into(),
            }),
        }
    }

    fn new_invocation(&mut self) -> String {
        self.starts += 1;
        format!("{}.{}", supervisor_token(), self.starts)
    }
}

/// What the forked child does before exec, with everything prepared in the parent.
struct ChildSetup<'a> {
    exe: &'a CString,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdio: [RawFd; 3],
    procs: Option<RawFd>,
    ids: Option<(u32, u32)>,
    /// Set when the child starts on berth-init's own descriptor table: it first makes a copy
    /// of only the descriptors below this one.
    keep_below: Option<RawFd>,
}

impl ChildSetup<'_> {
    /// Runs in the child: never returns. Async-signal-safe syscalls only.
    fn run(&self) -> ! {
        // SAFETY: raw syscalls on descriptors and memory the child owns; `_exit` on failure.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            // Rust ignores SIGPIPE in its own process; units get the default back.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if let Some(first) = self.keep_below {
                // Nothing may change in the shared table: unshare before anything else, and
                // end without a word (fd 2 is still berth-init's) if that fails.
                let r = libc::syscall(
                    libc::SYS_close_range,
                    first as u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_UNSHARE,
                );
                if r != 0 {
                    libc::_exit(1);
                }
            }
            super::guard::close_in_child();
            // A session of its own, so also a process group whose id is the pid: the unit is
            // signalled as a group, and a unit like getty can take a terminal as its
            // controlling one.
            if libc::setsid() < 0 {
                fail(b"setsid", 1);
            }
            if let Some(fd) = self.procs {
                // "0" moves the writing process itself into the cgroup.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    fail(b"joining the cgroup", 1);
                }
            }
            for (target, fd) in self.stdio.into_iter().enumerate() {
                let target = target as RawFd;
                let ok = if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0) >= 0
                } else {
                    libc::dup2(fd, target) >= 0
                };
                if !ok {
                    fail(b"redirecting output", 1);
                }
            }
            if libc::chdir(c"/".as_ptr()) < 0 {
                fail(b"chdir /", 1);
            }
            if let Some((uid, gid)) = self.ids {
                if libc::getuid() == 0 && libc::setgroups(0, std::ptr::null()) < 0 {
                    fail(b"setgroups", 1);
                }
                if libc::setgid(gid) < 0 || libc::setuid(uid) < 0 {
                    fail(b"changing user", 1);
                }
            }
            libc::execve(self.exe.as_ptr(), self.argv, self.envp);
            let code = match *libc::__errno_location() {
                libc::ENOENT => 127,
                _ => 126,
            };
            fail(b"exec", code)
        }
    }
}

/// Ends a child whose setup failed, with a line in the unit's log (its stderr).
fn fail(what: &[u8], code: i32) -> ! {
    // SAFETY: write(2) of static bytes, then `_exit`.
    unsafe {
        let errno = *libc::__errno_location();
        let mut line = [0u8; 96];
        let mut n = 0;
        for part in [
            b"berth-init: cannot start unit: ".as_slice(),
            what,
            b": errno ",
        ] {
            for &b in part {
                if n < line.len() {
                    line[n] = b;
                    n += 1;
                }
            }
        }
        let mut digits = [0u8; 12];
        let mut d = digits.len();
        let mut v = errno.unsigned_abs();
        loop {
            d -= 1;
            digits[d] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 || d == 0 {
                break;
            }
        }
        for &b in digits[d..].iter().chain(b"\n") {
            if n < line.len() {
                line[n] = b;
                n += 1;
            }
        }
        libc::write(2, line.as_ptr().cast(), n);
        libc::_exit(code)
    }
}

/// The file `program` names: itself when it contains a `/`, else the first executable file of
/// that name in `search` (a `PATH` value), as execvp would pick it. Relative to `/`.
fn resolve_program(program: &str, search: &str) -> Result<PathBuf, LaunchError> {
    let command = program.to_string();
    if program.is_empty() {
        return Err(LaunchError::NotFound { command });
    }
    let check = |p: &Path| -> io::Result<()> {
        let meta = std::fs::metadata(p)?;
        if !meta.is_file() {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).map_err(io::Error::from)
    };
    // The child runs in `/`: relative names resolve from there, as its exec will.
    let root = Path::new("/");
    if program.contains('/') {
        let path = root.join(program);
        return match check(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LaunchError::NotFound { command }),
            Err(source) => Err(LaunchError::NotExecutable { command, source }),
        };
    }
    let mut denied = None;
    for dir in search.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let path = root.join(OsStr::new(dir)).join(program);
        match check(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                denied.get_or_insert(e);
            }
        }
    }
    match denied {
        Some(source) => Err(LaunchError::NotExecutable { command, source }),
        None => Err(LaunchError::NotFound { command }),
    }
}

pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

pub(crate) fn signal_pid(pid: i32, signal: i32) -> Result<(), LaunchError> {
    let Ok(sig) = Signal::try_from(signal) else {
        return Ok(());
    };
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(source) => Err(LaunchError::Signal { pid, source }),
    }
}

impl Launcher for ProcessLauncher {
    fn handles(&self, unit: &Unit) -> bool {
        unit.is_system()
    }

    fn start(&mut self, unit: &Unit, _prepared: u32) -> Result<Step, LaunchError> {
        let invocation = self.new_invocation();
        let spawned = self.spawn(unit, &unit.container.command, true, &invocation)?;
        self.mains.insert(spawned.pid, invocation.clone());
        self.current.insert(unit.name.clone(), invocation);
        Ok(Step::Main(spawned))
    }

    fn signal(&mut self, unit: &Unit, pid: i32, signal: i32, all: bool) -> Result<(), LaunchError> {
        if all {
            // The process group is the unit's main pid; the cgroup also catches processes
            // that left the group (setsid); without one, the sweep after the main process
            // has exited does.
            self.cgroups.kill_all(&unit.name);
            signal_pid(-pid, signal)?;
        }
        signal_pid(pid, signal)?;
        if signal != libc::SIGKILL && signal != libc::SIGCONT {
            // A stopped process only acts on its stop signal once continued.
            signal_pid(-pid, libc::SIGCONT)?;
            signal_pid(pid, libc::SIGCONT)?;
        }
        Ok(())
    }

    fn health_check(&mut self, unit: &Unit) -> Result<Spawned, LaunchError> {
        let exec = unit
            .health
            .as_ref()
            .map(|h| h.exec.clone())
            .unwrap_or_default();
        let invocation = match self.current.get(&unit.name) {
            Some(inv) => inv.clone(),
            None => self.new_invocation(),
        };
        self.spawn(unit, &exec, false, &invocation)
    }

    fn usage(&self, unit: &Unit) -> Option<super::Usage> {
        self.cgroups.usage(&unit.name)
    }

    fn cleanup(&mut self, unit: &Unit, pid: Option<i32>) -> Option<Spawned> {
        // Called right after the main process was reaped, so its pid (the group id) cannot
        // have been reused by a new group yet.
        if let Some(pid) = pid {
            kill_group(pid);
            if let Some(invocation) = self.mains.remove(&pid) {
                if self.current.get(&unit.name) == Some(&invocation) {
                    self.current.remove(&unit.name);
                }
                self.ended.insert(invocation);
            }
        }
        self.cgroups.kill_all(&unit.name);
        self.cgroups.remove(&unit.name);
        None
    }

    fn sweep(&mut self) {
        if self.ended.is_empty() {
            return;
        }
        let skip: HashSet<i32> = self.mains.keys().copied().collect();
        let ended = std::mem::take(&mut self.ended);
        let killed = kill_marked(Scope::Children { skip: &skip }, &|inv| ended.contains(inv));
        if killed > 0 {
            log::info!("killed {killed} leftover processes of stopped units");
        }
    }
}

/// Kills what is left of a unit's process group once its leader is gone.
pub fn kill_group(pgid: i32) {
    let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
}

/// Resolves a user spec to (uid, gid) through `etc/passwd` and `etc/group` (no NSS: the
/// binary is static and the root filesystem is minimal).
pub fn resolve_user(etc: &std::path::Path, user: &UserSpec) -> Result<(u32, u32), LaunchError> {
    match user {
        UserSpec::Id { uid, gid } => Ok((*uid, gid.unwrap_or(*uid))),
        UserSpec::Name { user, group } => {
            let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap_or_default();
            let (uid, primary) = lookup(&passwd, user)
                .and_then(|f| Some((f.first()?.parse().ok()?, f.get(1)?.parse().ok()?)))
                .ok_or_else(|| LaunchError::UnknownUser(user.clone()))?;
            let gid = match group {
                None => primary,
                Some(g) => {
                    let groups = std::fs::read_to_string(etc.join("group")).unwrap_or_default();
                    lookup(&groups, g)
                        .and_then(|f| f.first()?.parse().ok())
                        .ok_or_else(|| LaunchError::UnknownUser(g.clone()))?
                }
            };
            Ok((uid, gid))
        }
    }
}

/// The fields after name and password of the `name` line of a passwd/group file.
fn lookup<'a>(file: &'a str, name: &str) -> Option<Vec<&'a str>> {
    file.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name)).then(|| fields.skip(1).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_process_gets_only_its_stdio_and_its_pipe_only_its_writer() {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::io::Read;
        use std::os::fd::AsFd;
        let mut launcher = ProcessLauncher::new(Box::new(super::super::cgroup::NoCgroups));
        // Many open descriptors in the parent, as with many units.
        let held: Vec<std::fs::File> = (0..64)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let text =
            "[container]\ncommand = [\"sh\", \"-c\", \"ls /proc/$$/fd; echo $BERTH_UNIT\"]\n";
        let unit = crate::unit::parse("fds", "fds.toml", text).unwrap();
        let Step::Main(spawned) = launcher.start(&unit, 0).unwrap() else {
            panic!("no main process");
        };
        let pipe = spawned.output.unwrap();
        let mut out = Vec::new();
        let mut file = std::fs::File::from(pipe.try_clone().unwrap());
        loop {
            // End of file only comes when berth-init holds no writer of the pipe.
            let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
            assert_eq!(poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(), 1);
            let mut buf = [0u8; 4096];
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        nix::sys::wait::waitpid(Pid::from_raw(spawned.pid), None).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "0\n1\n2\nfds\n");
        drop(held);
    }

    #[test]
    fn programs_are_found_in_the_units_path_like_execvp_does() {
        let found = resolve_program("sh", "/nonexistent:/usr/bin:/bin").unwrap();
        assert!(found.ends_with("sh") && found.is_absolute(), "{found:?}");
        assert_eq!(
            resolve_program("/bin/sh", "").unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(matches!(
            resolve_program("no-such-program", DEFAULT_PATH),
            Err(LaunchError::NotFound { .. })
        ));
        // A file that exists but cannot be executed, and a directory.
        let dir = crate::testutil::scratch_dir("resolve");
        std::fs::write(dir.join("data"), "").unwrap();
        let data = dir.join("data").display().to_string();
        for path in [data.as_str(), "/etc"] {
            assert!(matches!(
                resolve_program(path, DEFAULT_PATH),
                Err(LaunchError::NotExecutable { .. })
            ));
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            resolve_program("", DEFAULT_PATH),
            Err(LaunchError::NotFound { .. })
        ));
    }

    #[test]
    fn resolves_users_from_passwd_and_group() {
        let dir = crate::testutil::scratch_dir("etc");
        std::fs::write(
            dir.join("passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:101:102::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(dir.join("group"), "root:x:0:\nwww:x:33:\n").unwrap();
        let name = |u: &str, g: Option<&str>| UserSpec::Name {
            user: u.into(),
            group: g.map(Into::into),
        };
        assert_eq!(resolve_user(&dir, &name("web", None)).unwrap(), (101, 102));
        assert_eq!(
            resolve_user(&dir, &name("web", Some("www"))).unwrap(),
            (101, 33)
        );
        assert!(resolve_user(&dir, &name("nobody", None)).is_err());
        assert!(resolve_user(&dir, &name("web", Some("nogroup"))).is_err());
        assert_eq!(
            resolve_user(&dir, &UserSpec::Id { uid: 5, gid: None }).unwrap(),
            (5, 5)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
