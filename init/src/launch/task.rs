//! Work that runs in a forked copy of berth-init, without exec: container setup, cleanup and
//! health checks call berth-runtime's library there. The pages that work touches (OCI spec
//! serialisation, netlink, nftables, image store) and the heap it grows then belong to the
//! child, so PID 1's resident set stays that of the supervisor.
//!
//! Forking without exec is safe here because berth-init never starts a thread. The child never
//! returns into the supervisor: it ends with `_exit`, so none of the parent's objects are
//! dropped (or their file descriptors closed twice) in it.

use std::io::{self, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use crate::reaper::ExitStatus;

/// Forks a child that runs `task` with `stdio` as its stdin, stdout and stderr, in its own
/// process group (so the supervisor can kill it with whatever it started), and exits with the
/// code `task` returns. Returns the child's pid; the caller (or the reaper) collects it.
/// Tasks report on stderr (unbuffered): stdout is not flushed before `_exit`.
pub fn fork_task(stdio: [RawFd; 3], task: impl FnOnce() -> i32) -> io::Result<i32> {
    let parent = nix::unistd::getpid();
    // SAFETY: berth-init is single-threaded, so the child's copy of the heap and of every
    // lock is consistent; the child leaves through `_exit` only.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child } => Ok(child.as_raw()),
        ForkResult::Child => {
            let code = match prepare_child(stdio, parent) {
                Ok(()) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(task))
                    .unwrap_or(TASK_PANICKED),
                Err(e) => {
                    let _ = writeln!(io::stderr(), "berth-init: cannot prepare task: {e}");
                    1
                }
            };
            // SAFETY: ends the child without running the parent's destructors or atexit work.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Exit code of a task whose code panicked (the panic itself is logged by the hook).
const TASK_PANICKED: i32 = 101;

/// Puts the calling task at idle priority: it runs only when nothing else wants the CPU.
pub fn at_idle_priority() {
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets this process's own policy from a valid parameter struct.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) };
}

fn prepare_child(stdio: [RawFd; 3], parent: Pid) -> io::Result<()> {
    crate::signals::reset_in_child()?;
    // A task never outlives berth-init (in host mode berth-init can die; as PID 1 it cannot).
    crate::signals::die_with_parent(parent)?;
    super::guard::close_in_child();
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    for (target, fd) in stdio.into_iter().enumerate() {
        if fd != target as RawFd {
            // SAFETY: plain dup2 on descriptors this process owns.
            if unsafe { libc::dup2(fd, target as RawFd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // Everything else berth-init holds (the API socket, the event loop, unit logs) must not
    // outlive an exec of whatever this task starts. The descriptors stay usable here.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the task `pid` for at most `limit`, then kills its process group and collects
/// it. For short, bounded work that PID 1 must see finished before it goes on (the cleanup
/// before a restart or before the state partition is unmounted). Waits on a pidfd, so no
/// sleeping poll. `limit` is capped at 65 s.
pub fn wait_task(pid: i32, limit: Duration) -> ExitStatus {
    let target = Pid::from_raw(pid);
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw >= 0 {
        // SAFETY: the descriptor was just returned to us and nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let ms = limit.as_millis().min(u128::from(u16::MAX)) as u16;
        let exited = loop {
            match poll(&mut fds, PollTimeout::from(ms)) {
                Err(Errno::EINTR) => continue,
                Ok(n) => break n > 0,
                Err(_) => break false,
            }
        };
        if !exited {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            let _ = kill(target, Signal::SIGKILL);
        }
    }
    wait_child(pid)
}

/// Waits for the child `pid` to end, however long that takes (inside a task, never in PID 1).
pub fn wait_child(pid: i32) -> ExitStatus {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(status) => {
                if let Some((_, exit)) = ExitStatus::of_wait(status) {
                    return exit;
                }
            }
            Err(Errno::EINTR) => {}
            // Already collected elsewhere: nothing left to wait for.
            Err(_) => return ExitStatus::Exited(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdio() -> [RawFd; 3] {
        [0, 1, 2]
    }

    #[test]
    fn a_task_exits_with_the_code_it_returns() {
        let pid = fork_task(stdio(), || 7).unwrap();
        assert_eq!(
            wait_task(pid, Duration::from_secs(10)),
            ExitStatus::Exited(7)
        );
    }

    #[test]
    fn a_task_that_overruns_its_limit_is_killed() {
        let pid = fork_task(stdio(), || {
            std::thread::sleep(Duration::from_secs(30));
            0
        })
        .unwrap();
        assert_eq!(
            wait_task(pid, Duration::from_millis(50)),
            ExitStatus::Signaled(libc::SIGKILL)
        );
    }

    #[test]
    fn a_task_runs_in_its_own_process_group() {
        let pid = fork_task(stdio(), || {
            let own = nix::unistd::getpgrp() == nix::unistd::getpid();
            if own {
                0
            } else {
                1
            }
        })
        .unwrap();
        assert_eq!(
            wait_task(pid, Duration::from_secs(10)),
            ExitStatus::Exited(0)
        );
    }
}
