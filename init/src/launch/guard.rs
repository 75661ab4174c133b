//! Host mode: the units' processes die with berth-init, however it ends. A parent-death signal
//! on each unit's main process would not reach what the unit started with `setsid` or a double
//! fork, and once berth-init is gone its orphans go to whatever reaper is above it. So a small
//! guard process, forked before berth-init becomes a subreaper and detached from it, waits on a
//! pipe whose only writer is berth-init. When the pipe reaches end of file (berth-init exited,
//! crashed or was killed), the guard kills every process marked with this supervisor's
//! invocation token (see [`super::sweep`]) and exits.
//!
//! PID 1 needs no guard: when it ends, the kernel panics and everything ends.

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::unistd::ForkResult;

use super::sweep::{kill_marked, supervisor_token, Scope};

/// berth-init's (write) end of the guard's pipe; -1 without a guard.
static GUARD_FD: AtomicI32 = AtomicI32::new(-1);

/// Starts the guard. Call before anything else is forked, and before berth-init becomes a
/// subreaper (the guard is detached through a double fork and must not be re-parented to it).
pub fn spawn() -> io::Result<()> {
    let token = supervisor_token().to_string();
    let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: berth-init has not started a thread; both children leave through `_exit`.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            drop(writer);
            // SAFETY: as above.
            if let Ok(ForkResult::Child) = unsafe { nix::unistd::fork() } {
                guard(reader, &token);
            }
            // SAFETY: ends the intermediate child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(reader);
            let _ = nix::sys::wait::waitpid(child, None);
            GUARD_FD.store(writer.into_raw_fd(), Ordering::SeqCst);
            Ok(())
        }
    }
}

/// Closes berth-init's end of the guard pipe in a forked child that does not exec at once (a
/// task), so that only berth-init itself keeps the guard waiting. Async-signal-safe.
pub fn close_in_child() {
    let fd: RawFd = GUARD_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: closes this process's copy of the descriptor; the parent keeps its own.
        unsafe { libc::close(fd) };
    }
}

fn guard(reader: OwnedFd, token: &str) -> ! {
    // Out of berth-init's session and process group: a Ctrl-C or a signal to the group is
    // not the end of berth-init.
    let _ = nix::unistd::setsid();
    // SAFETY: PR_SET_NAME with a NUL-terminated name.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"berth-guard".as_ptr()) };
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reads into a local buffer from a descriptor this process owns.
        let n = unsafe { libc::read(reader.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break;
    }
    let prefix = format!("{token}.");
    // What the units started keeps running until killed; a process forking as fast as it is
    // killed is caught by the next pass (bounded).
    for _ in 0..20 {
        if kill_marked(Scope::All, &|inv| inv.starts_with(&prefix)) == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: ends the guard without running destructors of state copied from berth-init.
    unsafe { libc::_exit(0) }
}
