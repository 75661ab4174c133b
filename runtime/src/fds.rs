//! The descriptors a container process takes across exec: stdio, and the ones the caller
//! asks to pass (`--preserve-fds`, socket activation's `LISTEN_FDS`) at 3 and up. Nothing
//! else: a descriptor the caller of the runtime left open (a host directory, a socket) or
//! one the runtime opened for itself would give the container a way out of its root.

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use std::os::fd::{BorrowedFd, RawFd};

/// The first descriptor after stdio.
pub const FIRST_PASSED: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("preserved descriptor {fd} ({count} asked for from 3): {errno}")]
    NotOpen { fd: RawFd, count: u32, errno: Errno },
    #[error("too many preserved descriptors: {0}")]
    TooMany(u32),
    #[error("mark descriptors from {from} close-on-exec: {what}: {errno}")]
    Cloexec {
        from: RawFd,
        what: &'static str,
        errno: Errno,
    },
    #[error("keep preserved descriptor {fd} across exec: {errno}")]
    Keep { fd: RawFd, errno: Errno },
}

/// The first descriptor a process does not take across exec when `preserve` are passed.
pub fn first_closed(preserve: u32) -> Result<RawFd, FdError> {
    RawFd::try_from(preserve)
        .ok()
        .and_then(|n| n.checked_add(FIRST_PASSED))
        .ok_or(FdError::TooMany(preserve))
}

fn flags(fd: RawFd) -> Result<FdFlag, Errno> {
    // SAFETY: fcntl only looks the number up; a closed one is EBADF, never another's memory.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(fd, FcntlArg::F_GETFD).map(FdFlag::from_bits_truncate)
}

fn set_flags(fd: RawFd, f: FdFlag) -> Result<(), Errno> {
    // SAFETY: as in `flags`: a descriptor number, no memory.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(fd, FcntlArg::F_SETFD(f)).map(drop)
}

/// Checks that the `count` descriptors from 3 are open, as runc does before it passes them.
/// Held open, none of them can be taken by a descriptor the runtime opens later (which would
/// then be passed in its place).
pub fn check_preserved(count: u32) -> Result<(), FdError> {
    let end = first_closed(count)?;
    for fd in FIRST_PASSED..end {
        flags(fd).map_err(|errno| FdError::NotOpen { fd, count, errno })?;
    }
    Ok(())
}

/// Marks every descriptor from `from` up close-on-exec, so that exec closes them; until then
/// they stay usable (the exec FIFO, the channel to the runtime, a console socket).
pub fn close_on_exec_from(from: RawFd) -> Result<(), FdError> {
    let first = libc::c_uint::try_from(from).map_err(|_| FdError::Cloexec {
        from,
        what: "close_range",
        errno: Errno::EINVAL,
    })?;
    // SAFETY: close_range with integer arguments; with CLOSE_RANGE_CLOEXEC it closes nothing.
    // nix has no wrapper, and libc's is glibc-only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    match Errno::result(r) {
        Ok(_) => Ok(()),
        // Kernels before 5.9 lack close_range, before 5.11 its CLOSE_RANGE_CLOEXEC.
        Err(Errno::ENOSYS | Errno::EINVAL) => cloexec_listed(from),
        Err(errno) => Err(FdError::Cloexec {
            from,
            what: "close_range",
            errno,
        }),
    }
}

/// [`close_on_exec_from`] one descriptor at a time, from the list in /proc/self/fd.
fn cloexec_listed(from: RawFd) -> Result<(), FdError> {
    let io = |e: std::io::Error| FdError::Cloexec {
        from,
        what: "read /proc/self/fd",
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    };
    let mut open = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        if let Some(fd) = name.to_str().and_then(|n| n.parse::<RawFd>().ok()) {
            open.push(fd);
        }
    }
    for fd in open.into_iter().filter(|fd| *fd >= from) {
        match flags(fd).and_then(|f| set_flags(fd, f | FdFlag::FD_CLOEXEC)) {
            // The listing's own descriptor, closed since.
            Ok(()) | Err(Errno::EBADF) => {}
            Err(errno) => {
                return Err(FdError::Cloexec {
                    from,
                    what: "fcntl F_SETFD",
                    errno,
                })
            }
        }
    }
    Ok(())
}

/// Makes the `count` descriptors from 3 survive exec, as runc passes them (a caller's own
/// descriptor there may be close-on-exec in this process).
pub fn keep_preserved(count: u32) -> Result<(), FdError> {
    let end = first_closed(count)?;
    for fd in FIRST_PASSED..end {
        flags(fd)
            .and_then(|f| set_flags(fd, f - FdFlag::FD_CLOEXEC))
            .map_err(|errno| FdError::Keep { fd, errno })?;
    }
    Ok(())
}

/// Right before exec: only stdio and the `preserve` descriptors from 3 stay open.
pub fn pass_only(preserve: u32) -> Result<(), FdError> {
    close_on_exec_from(first_closed(preserve)?)?;
    keep_preserved(preserve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, OwnedFd};

    /// A descriptor open without close-on-exec, as a caller of the runtime leaves one.
    fn inheritable() -> OwnedFd {
        let f = std::fs::File::open("/").unwrap();
        let fd = OwnedFd::from(f);
        set_flags(fd.as_raw_fd(), FdFlag::empty()).unwrap();
        fd
    }

    fn cloexec(fd: &OwnedFd) -> bool {
        flags(fd.as_raw_fd()).unwrap().contains(FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn every_descriptor_from_the_first_is_marked_and_the_ones_below_are_not() {
        let (a, b) = (inheritable(), inheritable());
        let (low, high) = if a.as_raw_fd() < b.as_raw_fd() {
            (a, b)
        } else {
            (b, a)
        };
        close_on_exec_from(high.as_raw_fd()).unwrap();
        assert!(cloexec(&high));
        assert!(!cloexec(&low));
        // The fallback for kernels without close_range does the same.
        let other = inheritable();
        let from = other.as_raw_fd().max(high.as_raw_fd());
        set_flags(high.as_raw_fd(), FdFlag::empty()).unwrap();
        cloexec_listed(from).unwrap();
        assert_eq!(cloexec(&high), high.as_raw_fd() >= from);
        assert!(!cloexec(&low));
    }

    #[test]
    fn preserved_descriptors_must_be_open_and_are_kept() {
        assert_eq!(first_closed(0).unwrap(), 3);
        assert_eq!(first_closed(2).unwrap(), 5);
        assert!(matches!(first_closed(u32::MAX), Err(FdError::TooMany(_))));
        // Far above anything the test process opens.
        let e = check_preserved(60_000).unwrap_err();
        assert!(
            matches!(
                e,
                FdError::NotOpen {
                    errno: Errno::EBADF,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().starts_with("preserved descriptor "), "{e}");
        check_preserved(0).unwrap();
        keep_preserved(0).unwrap();
    }
}
