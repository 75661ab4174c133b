//! Signals as events: the ones berth-init cares about are blocked and read from a signalfd,
//! one at a time, inside the event loop (no handlers, no races). Children get a clean mask.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals berth-init handles through the signalfd.
pub const HANDLED: [Signal; 8] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGPWR,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the handled signals for this (single) thread and opens a signalfd for them.
    pub fn new() -> io::Result<Signals> {
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(s);
        }
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// Every pending signal, in arrival order.
    pub fn drain(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        // Bounded: at most one entry per signal number can be pending at once, plus arrivals
        // while draining; 1024 reads is far more than that.
        for _ in 0..1024 {
            match self.fd.read_signal() {
                Ok(Some(info)) => {
                    if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                        out.push(sig);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        out
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Restores an empty signal mask and default dispositions in a freshly forked child, before
/// exec. Async-signal-safe: only raw syscalls.
pub fn reset_in_child() -> io::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    Ok(())
}
