//! One API connection: its transport (unix socket or TLS over TCP), bounded input and output
//! buffers, and where it is in its life (reading the request, writing the answer, following a
//! log).

use std::io;
use std::time::Instant;

use std::net::IpAddr;

use super::http;
use super::log_cursor::{LogCursor, Next, BLOCK};
use super::stream::{drain, Stream};
use super::upload::Upload;

/// Where a connection is in its life.
pub enum Phase {
    /// Reading the request.
    Reading { continue_sent: bool },
    /// Writing one response; closed once it is out.
    Responding,
    /// Sending a unit's log from its files, a block at a time as the socket drains: the
    /// backlog (`remaining` bytes of body still owed), or with `follow` a chunked stream that
    /// goes on until the client goes or the unit is removed.
    Log {
        cursor: Box<LogCursor>,
        remaining: u64,
    },
    /// Streaming the request body into an update job's stdin.
    Upload(Box<Upload>),
    /// The job stopped reading the body before its end: waiting for the job to end, to
    /// answer with its error. The socket is not read meanwhile.
    AwaitJob { job: u64 },
    /// Answered (TCP) with part of the request unread: our side is shut, what the peer
    /// still sends is dropped until it closes (or the deadline). A close with unread input
    /// would reset the connection and could take the answer with it.
    Linger,
}

impl Phase {
    pub fn is_reading(&self) -> bool {
        matches!(self, Phase::Reading { .. })
    }

    /// A log stream that goes on with new output (of `unit`, when given).
    pub fn follows(&self, unit: Option<&str>) -> bool {
        matches!(self, Phase::Log { cursor, .. }
            if cursor.follows() && unit.is_none_or(|u| cursor.unit() == u))
    }
}

/// Who is at the other end: the local socket, or a TCP peer (its address as counted
/// against the per-peer limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Local,
    Remote(IpAddr),
}

pub struct Conn {
    pub stream: Stream,
    pub origin: Origin,
    /// A TLS peer that has not completed its handshake yet.
    pub handshaking: bool,
    pub input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    pub phase: Phase,
    /// When the connection is closed unless it has moved on (reading) or finished (writing).
    pub deadline: Option<Instant>,
    /// Its answer may leave part of the request unread (an upload answered early).
    pub linger: bool,
}

fn gap_note(lost: u64, out: &mut Vec<u8>) {
    let note = format!("[berth: {lost} bytes of output dropped: slow reader]\n");
    http::chunk(note.as_bytes(), out);
}

/// What refilling a log stream's output did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    /// Queued more of the log.
    Queued,
    /// Following and caught up: nothing to send until the unit writes.
    Idle,
    /// Not a log stream (or nothing left to add).
    Nothing,
    /// The log cannot be read, or shrank below what the response promised.
    Failed,
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
    pub fn new(stream: Stream, origin: Origin, deadline: Instant) -> Conn {
        let handshaking = matches!(stream, Stream::Tls(_));
        Conn {
            stream,
            origin,
            handshaking,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            phase: Phase::Reading {
                continue_sent: false,
            },
            deadline: Some(deadline),
            linger: false,
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
        drain(|b| self.stream.read(b), &mut buf, 16)
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

    /// Once everything queued is out, queues the next block of a log stream (framed as a
    /// chunk when following), the end of a finished backlog, or a note on lost output.
    pub fn refill(&mut self, budget: &mut usize) -> Refill {
        if self.pending() > 0 {
            return Refill::Nothing;
        }
        let Phase::Log { cursor, remaining } = &mut self.phase else {
            return Refill::Nothing;
        };
        let follow = cursor.follows();
        let mut block = [0u8; BLOCK];
        let want = if follow {
            BLOCK
        } else {
            BLOCK.min(usize::try_from(*remaining).unwrap_or(BLOCK))
        };
        let next = if want == 0 {
            Next::End
        } else {
            match cursor.read(&mut block[..want]) {
                Ok(next) => next,
                Err(e) => {
                    log::warn!("api: reading the log of {}: {e}", cursor.unit());
                    return Refill::Failed;
                }
            }
        };
        match next {
            Next::Data(n) => {
                *budget = budget.saturating_sub(n);
                if follow {
                    let mut out = Vec::with_capacity(n + 16);
                    http::chunk(&block[..n], &mut out);
                    self.push(&out);
                } else {
                    *remaining -= n as u64;
                    self.push(&block[..n]);
                }
                Refill::Queued
            }
            Next::Gap(lost) => {
                let mut out = Vec::new();
                gap_note(lost, &mut out);
                self.push(&out);
                Refill::Queued
            }
            Next::Wait => Refill::Idle,
            Next::End if *remaining > 0 => Refill::Failed,
            Next::End => {
                self.phase = Phase::Responding;
                Refill::Nothing
            }
        }
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
