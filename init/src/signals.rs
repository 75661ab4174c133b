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

/// In a freshly forked child: SIGKILL when `parent` (the process that forked it) dies, so
/// nothing berth-init started (image pulls, setup and cleanup tasks, the runtime commands those
/// run) outlives it. Async-signal-safe: only raw syscalls.
///
/// The death signal follows the thread that forked, not the process: berth-init and its tasks
/// fork only from their main thread, which lives as long as the process.
pub fn die_with_parent(parent: nix::unistd::Pid) -> io::Result<()> {
    // prctl(2) reads its arguments as unsigned longs: pass them as such.
    let (sig, zero) = (libc::SIGKILL as libc::c_ulong, 0 as libc::c_ulong);
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig, zero, zero, zero) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The parent died between the fork and the prctl: no signal will come.
    if nix::unistd::getppid() != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}
