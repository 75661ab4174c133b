//! The typed channel between the runtime (parent) and the container's init process (child),
//! over a SOCK_SEQPACKET pair: one message per datagram, EOF when the other side exits or
//! execs (both ends are close-on-exec).

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Parent → init: namespaces are mapped and the process is in its cgroup; go on. Carries
    /// the container state (JSON) that hooks run inside the container read.
    Continue(Vec<u8>),
    /// Init → parent: mounts are prepared, run createRuntime hooks now.
    RunRuntimeHooks,
    /// Init → parent: set up and waiting for start.
    Ready,
    /// Parent → init (`run`, library): start now, without the exec FIFO.
    Start,
    /// Either way: setup failed.
    Error(String),
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        match self {
            Message::Continue(state) => {
                let mut v = vec![b'c'];
                v.extend_from_slice(state);
                v
            }
            Message::RunRuntimeHooks => vec![b'h'],
            Message::Ready => vec![b'r'],
            Message::Start => vec![b's'],
            Message::Error(m) => {
                let mut v = vec![b'e'];
                v.extend_from_slice(m.as_bytes());
                v
            }
        }
    }

    fn decode(b: &[u8]) -> Option<Message> {
        Some(match b.first()? {
            b'c' => Message::Continue(b[1..].to_vec()),
            b'h' => Message::RunRuntimeHooks,
            b'r' => Message::Ready,
            b's' => Message::Start,
            b'e' => Message::Error(String::from_utf8_lossy(&b[1..]).into_owned()),
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Message::Continue(_) => "continue",
            Message::RunRuntimeHooks => "run-runtime-hooks",
            Message::Ready => "ready",
            Message::Start => "start",
            Message::Error(_) => "error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel: {0}")]
    Sys(#[from] nix::errno::Errno),
    #[error("container init exited before sending `{expected}`")]
    Closed { expected: &'static str },
    #[error("container init failed: {0}")]
    Remote(String),
    #[error("expected `{expected}` on the init channel, got `{got}`")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("garbled message on the init channel")]
    Garbled,
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

/// Creates the pair: (runtime end, init end).
pub fn pair() -> Result<(Channel, Channel), ChannelError> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn send(&self, m: &Message) -> Result<(), ChannelError> {
        // MSG_NOSIGNAL: the peer may be gone (a `create` that already exited); that is EPIPE,
        // not a SIGPIPE that kills the init.
        send(self.fd.as_raw_fd(), &m.encode(), MsgFlags::MSG_NOSIGNAL)?;
        Ok(())
    }

    /// The next message; `None` at EOF.
    pub fn recv(&self) -> Result<Option<Message>, ChannelError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    return Message::decode(&buf[..n])
                        .map(Some)
                        .ok_or(ChannelError::Garbled)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn expect(&self, expected: Message) -> Result<(), ChannelError> {
        match self.recv()? {
            Some(m) if m == expected => Ok(()),
            Some(Message::Error(e)) => Err(ChannelError::Remote(e)),
            Some(other) => Err(ChannelError::Unexpected {
                expected: expected.name(),
                got: other.name(),
            }),
            None => Err(ChannelError::Closed {
                expected: expected.name(),
            }),
        }
    }

    /// Init side: waits until the runtime has mapped ids and placed it in its cgroup (or ran
    /// the createRuntime hooks); returns the state document for hooks.
    pub fn wait_for_continue(&self) -> Result<Vec<u8>, ChannelError> {
        match self.recv()? {
            Some(Message::Continue(state)) => Ok(state),
            Some(Message::Error(e)) => Err(ChannelError::Remote(e)),
            Some(other) => Err(ChannelError::Unexpected {
                expected: "continue",
                got: other.name(),
            }),
            None => Err(ChannelError::Closed {
                expected: "continue",
            }),
        }
    }

    /// Init side (`run`): waits for the start signal.
    pub fn wait_for_start(&self) -> Result<(), ChannelError> {
        self.expect(Message::Start)
    }

    /// Runtime side: waits for the init to be ready, or for its request to run the
    /// createRuntime hooks (`Ok(false)`).
    pub fn wait_for_init_ready(&self) -> Result<bool, ChannelError> {
        match self.recv()? {
            Some(Message::Ready) => Ok(true),
            Some(Message::RunRuntimeHooks) => Ok(false),
            Some(Message::Error(e)) => Err(ChannelError::Remote(e)),
            Some(other) => Err(ChannelError::Unexpected {
                expected: "ready",
                got: other.name(),
            }),
            None => Err(ChannelError::Closed { expected: "ready" }),
        }
    }

    /// Runtime side, after `Start`: EOF means the init exec'd the user process.
    pub fn wait_for_exec(&self) -> Result<(), ChannelError> {
        match self.recv()? {
            None => Ok(()),
            Some(Message::Error(e)) => Err(ChannelError::Remote(e)),
            Some(other) => Err(ChannelError::Unexpected {
                expected: "exec (EOF)",
                got: other.name(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_errors_are_typed() {
        let (parent, child) = pair().unwrap();
        child.send(&Message::RunRuntimeHooks).unwrap();
        child.send(&Message::Ready).unwrap();
        child
            .send(&Message::Error("mount /proc: EPERM".into()))
            .unwrap();
        assert!(!parent.wait_for_init_ready().unwrap());
        assert!(parent.wait_for_init_ready().unwrap());
        let e = parent.wait_for_init_ready().unwrap_err().to_string();
        assert!(e.contains("mount /proc: EPERM"), "{e}");
        parent.send(&Message::Start).unwrap();
        let e = child.wait_for_continue().unwrap_err().to_string();
        assert!(
            e.contains("expected `continue`") && e.contains("got `start`"),
            "{e}"
        );
        drop(child);
        assert!(parent.wait_for_exec().is_ok());
    }
}
