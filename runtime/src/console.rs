//! `process.terminal`: a pseudo-terminal made inside the container, its master end sent to
//! the caller's console socket (SCM_RIGHTS, as runc does), its slave end the process's
//! controlling terminal and stdio.

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{
    connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use oci_spec::runtime::Process;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// A failed step of [`attach`]; the container init and `exec` wrap it in their own errors.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {errno}")]
pub struct ConsoleError {
    pub what: &'static str,
    pub errno: nix::errno::Errno,
}

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> ConsoleError {
    move |errno| ConsoleError { what, errno }
}

/// Connects to the console socket the caller listens on (before clone, in the runtime).
pub fn connect_socket(path: &Path) -> Result<OwnedFd, nix::errno::Errno> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

/// In the container init, after pivot_root.
pub fn attach(sock: BorrowedFd<'_>, p: &Process) -> Result<(), ConsoleError> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(sys("open /dev/ptmx"))?;
    grantpt(&master).map_err(sys("grantpt"))?;
    unlockpt(&master).map_err(sys("unlockpt"))?;
    let name = ptsname_r(&master).map_err(sys("ptsname"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(sys("open pty slave"))?;
    if let Some(size) = p.console_size() {
        let ws = libc::winsize {
            ws_row: size.height() as u16,
            ws_col: size.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
        unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(sys("send pty to console socket"))?;
    drop(master);
    nix::unistd::setsid().map_err(sys("setsid"))?;
    // SAFETY: TIOCSCTTY takes an integer argument.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(sys("set controlling terminal")(nix::errno::Errno::last()));
    }
    for fd in 0..3 {
        crate::syscall::dup2(slave.as_raw_fd(), fd).map_err(sys("dup2 pty"))?;
    }
    Ok(())
}
