//! One API connection: its transport (unix socket or TLS over TCP), bounded input and output
//! buffers, and where it is in its life (reading the request, writing the answer, following a
//! log).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::http;
use super::tls::TlsStream;

/// Largest backlog of a log stream; past it output is dropped (and the drop reported in the
/// stream) rather than letting a slow reader grow PID 1's memory.
pub const MAX_STREAM_BUFFER: usize = 256 * 1024;

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

    pub fn close(&mut self) {
        if let Stream::Tls(s) = self {
            s.close();
        }
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Reading the request.
    Reading { continue_sent: bool },
    /// Writing one response; closed once it is out.
    Responding,
    /// Streaming a unit's log (chunked) until the client goes or the unit is removed.
    Following { unit: String, dropped: u64 },
}

pub struct Conn {
    pub stream: Stream,
    pub input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    pub phase: Phase,
    /// When the connection is closed unless it has moved on (reading) or finished (writing).
    pub deadline: Option<Instant>,
}

fn gap_note(dropped: &mut u64, out: &mut Vec<u8>) {
    if *dropped > 0 {
        let note = format!("[berth: {dropped} bytes of output dropped: slow reader]\n");
        http::chunk(note.as_bytes(), out);
        *dropped = 0;
    }
}

/// What a flush left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything is out.
    Done,
    /// The socket is full: wait until it is writable.
    Blocked,
    /// The peer is gone.
    Failed,
}

impl Conn {
    pub fn new(stream: Stream, deadline: Instant) -> Conn {
        Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            phase: Phase::Reading {
                continue_sent: false,
            },
            deadline: Some(deadline),
        }
    }

    /// Reads what is available into `input`, at most `limit` bytes in all. Returns true when
    /// the peer closed or failed.
    pub fn fill(&mut self, limit: usize) -> bool {
        let mut buf = [0u8; 8192];
        while self.input.len() <= limit {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    if e.kind() == io::ErrorKind::PermissionDenied {
                        // Debug only: a hostile peer must not be able to flood the log.
                        log::debug!("api: TLS handshake refused: {e}");
                    }
                    return true;
                }
            }
        }
        false
    }

    /// Reads and throws away what the peer sends after its request (a follower has nothing to
    /// say). Returns true when the peer closed or failed.
    pub fn discard_input(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        // Bounded: a client flooding us yields to the others after 64 KiB.
        for _ in 0..16 {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        false
    }

    pub fn pending(&self) -> usize {
        self.output.len() - self.written
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.written > 0 && self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
        self.output.extend_from_slice(bytes);
    }

    /// Queues `data` as one chunk of a log stream, unless the backlog is full: then it is
    /// dropped and counted, and the count is reported in the stream once there is room.
    pub fn push_chunk(&mut self, data: &[u8]) {
        let pending = self.pending();
        let Phase::Following { dropped, .. } = &mut self.phase else {
            return;
        };
        if pending + data.len() > MAX_STREAM_BUFFER {
            *dropped += data.len() as u64;
            return;
        }
        let mut out = Vec::with_capacity(data.len() + 80);
        gap_note(dropped, &mut out);
        http::chunk(data, &mut out);
        self.push(&out);
    }

    /// Once a stream's backlog is out, tells the reader about output dropped meanwhile.
    /// Returns true when it queued the note.
    pub fn note_gap(&mut self) -> bool {
        if self.pending() > 0 {
            return false;
        }
        let Phase::Following { dropped, .. } = &mut self.phase else {
            return false;
        };
        let mut out = Vec::new();
        gap_note(dropped, &mut out);
        if out.is_empty() {
            return false;
        }
        self.push(&out);
        true
    }

    /// Writes as much queued output as the socket takes.
    pub fn flush(&mut self) -> Flushed {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Flushed::Failed,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Blocked,
                Err(_) => return Flushed::Failed,
            }
        }
        // Compact once everything is out, so a long stream does not keep old bytes.
        self.output.clear();
        self.written = 0;
        if self.stream.send_pending().is_err() {
            return Flushed::Failed;
        }
        if self.stream.wants_write() {
            Flushed::Blocked
        } else {
            Flushed::Done
        }
    }
}
