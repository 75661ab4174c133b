//! The process launcher: system units (no `image`) run their command from the host root, in
//! their own process group and (when available) their own cgroup, with the unit's `env` and
//! `user`. stdout and stderr go into one pipe that the supervisor reads into the unit's log.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cgroup::Cgroups;
use super::{LaunchError, Launcher, Spawned, Step};
use crate::unit::value::UserSpec;
use crate::unit::Unit;

/// PATH of every unit process unless its `env` sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct ProcessLauncher {
    cgroups: Box<dyn Cgroups>,
    /// Root whose `etc/passwd` and `etc/group` resolve user names.
    etc: PathBuf,
}

impl ProcessLauncher {
    pub fn new(cgroups: Box<dyn Cgroups>) -> ProcessLauncher {
        ProcessLauncher {
            cgroups,
            etc: PathBuf::from("/etc"),
        }
    }

    fn spawn(
        &mut self,
        unit: &Unit,
        argv: &[String],
        capture: bool,
    ) -> Result<Spawned, LaunchError> {
        let program = argv.first().map(String::as_str).unwrap_or_default();
        let mut cmd = Command::new(program);
        cmd.args(argv.iter().skip(1))
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&unit.container.env)
            .current_dir("/")
            .stdin(Stdio::null());
        if let Some(user) = &unit.container.user {
            let (uid, gid) = resolve_user(&self.etc, user)?;
            cmd.uid(uid).gid(gid);
        }
        let mut reader = None;
        if capture {
            let (r, w) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| LaunchError::Pipe(e.into()))?;
            set_nonblocking(&r).map_err(LaunchError::Pipe)?;
            let w2 = w.try_clone().map_err(LaunchError::Pipe)?;
            cmd.stdout(Stdio::from(w)).stderr(Stdio::from(w2));
            reader = Some(r);
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
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
        let procs_raw = procs_fd.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe syscalls (sigprocmask, setsid, write) on memory prepared before
        // the fork.
        unsafe {
            cmd.pre_exec(move || {
                crate::signals::reset_in_child()?;
                // A session of its own, so also a process group whose id is the pid: the unit
                // is signalled as a group, and a unit like getty can take a terminal as its
                // controlling one.
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(fd) = procs_raw {
                    // "0" moves the writing process itself into the cgroup.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| spawn_error(program, e))?;
        // The child is reaped by the supervisor's reaper, never through `Child::wait`.
        let pid = child.id() as i32;
        drop(child);
        Ok(Spawned {
            pid,
            output: reader,
        })
    }
}

fn spawn_error(program: &str, e: io::Error) -> LaunchError {
    let command = program.to_string();
    match e.kind() {
        io::ErrorKind::NotFound => LaunchError::NotFound { command },
        io::ErrorKind::PermissionDenied => LaunchError::NotExecutable { command, source: e },
        _ => LaunchError::Spawn { command, source: e },
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
        self.spawn(unit, &unit.container.command, true)
            .map(Step::Main)
    }

    fn signal(&mut self, unit: &Unit, pid: i32, signal: i32, all: bool) -> Result<(), LaunchError> {
        if all {
            // The process group is the unit's main pid; the cgroup also catches processes
            // that left the group (setsid).
            self.cgroups.kill_all(&unit.name);
            signal_pid(-pid, signal)?;
        }
        signal_pid(pid, signal)
    }

    fn health_check(&mut self, unit: &Unit) -> Result<Spawned, LaunchError> {
        let exec = unit
            .health
            .as_ref()
            .map(|h| h.exec.clone())
            .unwrap_or_default();
        self.spawn(unit, &exec, false)
    }

    fn usage(&self, unit: &Unit) -> Option<super::Usage> {
        self.cgroups.usage(&unit.name)
    }

    fn cleanup(&mut self, unit: &Unit, pid: Option<i32>) {
        // Called right after the main process was reaped, so its pid (the group id) cannot
        // have been reused by a new group yet.
        if let Some(pid) = pid {
            kill_group(pid);
        }
        self.cgroups.kill_all(&unit.name);
        self.cgroups.remove(&unit.name);
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
