//! Bringing up the loopback interface with one ioctl (no external binaries). The kernel adds
//! 127.0.0.1/8 and ::1 itself when `lo` goes up.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn ifreq_for(name: &[u8]) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    req
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Flags of interface `name` (IFF_UP, IFF_RUNNING, …).
pub fn interface_flags(name: &str) -> io::Result<i32> {
    let sock = control_socket()?;
    let mut req = ifreq_for(name.as_bytes());
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds flags.
    Ok(i32::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// Sets IFF_UP on `lo`.
pub fn loopback_up() -> io::Result<()> {
    let flags = interface_flags("lo")?;
    let sock = control_socket()?;
    let mut req = ifreq_for(b"lo");
    req.ifr_ifru.ifru_flags = (flags | libc::IFF_UP) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a fresh network namespace (needs root; unshare affects only the calling thread).
    #[test]
    fn brings_loopback_up_in_a_new_network_namespace() {
        if !crate::testutil::running_as_root() {
            return;
        }
        let result = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let before = interface_flags("lo").unwrap();
            loopback_up().unwrap();
            let after = interface_flags("lo").unwrap();
            // A bound socket on 127.0.0.1 proves the address is there.
            let bound = std::net::UdpSocket::bind("127.0.0.1:0").is_ok();
            (before & libc::IFF_UP, after & libc::IFF_UP, bound)
        })
        .join()
        .unwrap();
        assert_eq!(result, (0, libc::IFF_UP, true));
    }
}
