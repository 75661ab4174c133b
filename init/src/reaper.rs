//! Reaping: collects every exited child (units, health checks and re-parented orphans) with
//! `waitpid(-1, WNOHANG)` until none is left.

use std::fmt;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }

    /// Shell-style code: the exit code, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exited with status {c}"),
            ExitStatus::Signaled(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("?");
                write!(f, "killed by signal {s} ({name})")
            }
        }
    }
}

impl ExitStatus {
    /// The exit a wait reported, with its pid; `None` for anything that is not an exit
    /// (stopped, continued, still alive).
    pub fn of_wait(status: WaitStatus) -> Option<(i32, ExitStatus)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid.as_raw(), ExitStatus::Exited(code))),
            WaitStatus::Signaled(pid, sig, _) => {
                Some((pid.as_raw(), ExitStatus::Signaled(sig as i32)))
            }
            _ => None,
        }
    }
}

/// What happened to a child: it exited, was stopped by a signal, or was continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEvent {
    Exited(i32, ExitStatus),
    Stopped(i32, i32),
    Continued(i32),
}

/// Reaps every child that has exited, and collects stops and continues, in the order the
/// kernel reports them. Bounded by the number of children (each reports one change per call).
pub fn reap_events() -> Vec<ChildEvent> {
    let mut out = Vec::new();
    let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED | WaitPidFlag::WCONTINUED;
    loop {
        match waitpid(Pid::from_raw(-1), Some(flags)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(WaitStatus::Stopped(pid, sig)) => {
                out.push(ChildEvent::Stopped(pid.as_raw(), sig as i32))
            }
            Ok(WaitStatus::Continued(pid)) => out.push(ChildEvent::Continued(pid.as_raw())),
            Ok(status) => out.extend(
                ExitStatus::of_wait(status).map(|(pid, exit)| ChildEvent::Exited(pid, exit)),
            ),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break, // ECHILD: no children left
        }
    }
    out
}

/// Reaps every child that has exited and returns them. Bounded by the number of children.
pub fn reap() -> Vec<(i32, ExitStatus)> {
    let mut out = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break,
            // Stopped/continued children are not exits; keep draining.
            Ok(status) => out.extend(ExitStatus::of_wait(status)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break, // ECHILD: no children left
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_shell_conventions() {
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert!(ExitStatus::Exited(0).success() && !ExitStatus::Signaled(15).success());
        assert_eq!(
            ExitStatus::Signaled(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
