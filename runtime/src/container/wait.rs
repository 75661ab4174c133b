//! Waiting for container processes: bounded waits on any pid (pidfd + poll), and the
//! foreground wait of `run`/`exec` that forwards signals to the container, tini-style.

use super::{sys, Result};
use crate::state::process_start_time;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Signals a foreground `run` or `exec` passes on to the container process.
const FORWARDED: [Signal; 10] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
    Signal::SIGPIPE,
];

/// True once the process `pid` (started at `start_time`) has exited, waiting at most `timeout`.
/// A zombie counts as exited.
pub fn wait_for_exit_of(pid: i32, start_time: u64, timeout: Duration) -> bool {
    let gone = || process_start_time(pid).is_none_or(|(t, zombie)| zombie || t != start_time);
    if gone() {
        return true;
    }
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return gone();
    }
    // SAFETY: a fresh fd the kernel returned to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd. EINTR just means we look again below.
    unsafe { libc::poll(&mut pfd, 1, ms) };
    gone() || pfd.revents & libc::POLLIN != 0
}

/// The shell's view of a wait status: the exit code, or 128 + signal.
pub fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 1,
    }
}

/// Waits for our child `pid`, forwarding the usual signals to it; returns its exit code.
pub fn wait_forwarding_signals(pid: i32) -> Result<i32> {
    let child = Pid::from_raw(pid);
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
        .map_err(sys("block signals"))?;
    let result = (|| loop {
        // SIGCHLD may have come before it was blocked: look before waiting.
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return Ok(exit_code(status)),
            Err(e) => return Err(sys("waitpid")(e)),
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = kill(child, sig);
            }
            Err(e) => return Err(sys("sigwait")(e)),
        }
    })();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    result
}
