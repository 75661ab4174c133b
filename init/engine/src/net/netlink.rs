//! Hand-built netlink messages and a blocking socket that sends them and collects the acks.
//! Messages are plain byte buffers built by pure functions, so their encoding is unit-tested;
//! the socket is the only part that talks to the kernel.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NLMSG_HDRLEN: usize = 16;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message under construction: header, fixed payload, attributes.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    pub fn new(typ: u16, flags: u16) -> Message {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&typ.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        Message {
            buf,
            nests: Vec::new(),
        }
    }

    /// Appends raw bytes (the family header: ifinfomsg, nfgenmsg, ...), padded.
    pub fn raw(mut self, bytes: &[u8]) -> Message {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub fn attr(mut self, typ: u16, data: &[u8]) -> Message {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&typ.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub fn attr_str(self, typ: u16, s: &str) -> Message {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(typ, &v)
    }

    pub fn attr_u32(self, typ: u16, v: u32) -> Message {
        self.attr(typ, &v.to_ne_bytes())
    }

    /// A big-endian u32 (nftables' convention).
    pub fn attr_be32(self, typ: u16, v: u32) -> Message {
        self.attr(typ, &v.to_be_bytes())
    }

    pub fn begin(mut self, typ: u16) -> Message {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(typ | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end(mut self) -> Message {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// The finished message with its length and sequence number filled in.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// The type and flags of an encoded message (for tests and acks).
pub fn header(msg: &[u8]) -> (u32, u16, u16, u32) {
    let u32_at = |i: usize| u32::from_ne_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
    let u16_at = |i: usize| u16::from_ne_bytes([msg[i], msg[i + 1]]);
    (u32_at(0), u16_at(4), u16_at(6), u32_at(8))
}

/// Attributes of a message body starting at `offset`: (type without flags, payload).
pub fn attrs(body: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= body.len() {
        let len = u16::from_ne_bytes([body[i], body[i + 1]]) as usize;
        let typ = u16::from_ne_bytes([body[i + 2], body[i + 3]]) & !NLA_F_NESTED;
        if len < 4 || i + len > body.len() {
            break;
        }
        out.push((typ, &body[i + 4..i + len]));
        i += align(len);
    }
    out
}

/// A netlink socket of one protocol, bound to the network namespace it was opened in.
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    pub fn open(protocol: i32) -> io::Result<Socket> {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        Ok(Socket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends `msgs` in one datagram and waits for an ack of each message flagged NLM_F_ACK;
    /// the first error wins. Sequence numbers must be distinct.
    pub fn transact(&self, msgs: &[Vec<u8>]) -> io::Result<()> {
        let mut pending: Vec<u32> = msgs
            .iter()
            .filter(|m| header(m).2 & NLM_F_ACK != 0)
            .map(|m| header(m).3)
            .collect();
        let datagram: Vec<u8> = msgs.concat();
        // SAFETY: sending a live buffer; the kernel is the default destination.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                datagram.as_ptr().cast(),
                datagram.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 * 1024];
        while !pending.is_empty() {
            // SAFETY: receiving into a live buffer of the given size.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut i = 0;
            let n = n as usize;
            while i + NLMSG_HDRLEN <= n {
                let (len, typ, _, seq) = header(&buf[i..]);
                let len = len as usize;
                if len < NLMSG_HDRLEN || i + len > n {
                    break;
                }
                if typ == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
                    let code =
                        i32::from_ne_bytes([buf[i + 16], buf[i + 17], buf[i + 18], buf[i + 19]]);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    pending.retain(|s| *s != seq);
                } else if typ == NLMSG_DONE {
                    pending.retain(|s| *s != seq);
                }
                i += align(len);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_are_sized_and_padded() {
        let m = Message::new(16, NLM_F_REQUEST | NLM_F_ACK)
            .raw(&[0u8; 16])
            .attr_str(3, "br0")
            .begin(18)
            .attr_str(1, "bridge")
            .end()
            .finish(7);
        let (len, typ, flags, seq) = header(&m);
        assert_eq!(
            (len as usize, typ, flags, seq),
            (m.len(), 16, NLM_F_REQUEST | NLM_F_ACK, 7)
        );
        let a = attrs(&m[NLMSG_HDRLEN + 16..]);
        assert_eq!(a[0], (3, &b"br0\0"[..]));
        assert_eq!(a[1].0, 18);
        assert_eq!(attrs(a[1].1), vec![(1, &b"bridge\0"[..])]);
        assert_eq!(m.len() % 4, 0);
    }
}
