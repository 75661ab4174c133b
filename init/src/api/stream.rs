//! A connection's transport: a unix socket or TLS over TCP, read and written the same way.
//! [`super::conn`] and [`super::upload`] both move bytes through it.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use super::tls::TlsStream;

/// A connection's socket.
pub enum Stream {
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    /// Bytes below the plaintext (TLS records) still wait for the socket.
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Unix(_) => false,
            Stream::Tls(s) => s.wants_write(),
        }
    }

    pub fn send_pending(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(_) => Ok(()),
            Stream::Tls(s) => s.send_pending(),
        }
    }

    /// A TLS peer still in its handshake (no request can have come yet).
    pub fn handshaking(&self) -> bool {
        match self {
            Stream::Unix(_) => false,
            Stream::Tls(s) => s.handshaking(),
        }
    }

    pub fn close(&mut self) {
        if let Stream::Tls(s) = self {
            s.close();
        }
    }

    /// A TCP stream: closing it with unread input resets the connection, and can take the
    /// answer still on its way with it.
    pub fn resets_on_close(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Ends our side (close_notify, then FIN), keeping the reading side open.
    pub fn shut_write(&mut self) {
        if let Stream::Tls(s) = self {
            s.close();
            let _ = s.tcp().shutdown(std::net::Shutdown::Write);
        }
    }

    /// Reads and drops what the peer sends, below TLS (nothing of it matters any more), a
    /// bounded amount per call. True when the peer closed or failed.
    pub fn drop_input(&mut self) -> bool {
        let Stream::Tls(s) = self else {
            return true;
        };
        let mut buf = [0u8; 16 * 1024];
        drain(|b| (&mut s.tcp()).read(b), &mut buf, 64)
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tls(s) => s.tcp().as_fd(),
        }
    }
}

/// Reads and drops input with `read` into `buf`, at most `rounds` reads. True when the peer
/// closed or failed; false when nothing more is there for now (or the rounds ran out).
pub(super) fn drain(
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    buf: &mut [u8],
    rounds: usize,
) -> bool {
    for _ in 0..rounds {
        match read(buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}
