//! A request body streamed into a child process's stdin (`POST /v1/update` with the bundle
//! as `application/octet-stream`): never buffered whole, never written to disk. The
//! connection reads from its socket only while the pipe to the child takes the bytes; when
//! the pipe is full it waits for the pipe, not the socket, so a slow child slows the client
//! down instead of growing a buffer in PID 1.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use super::http::Framing;
use super::stream::Stream;

/// Bytes read from the socket at a time (and the most decoded bytes waiting for the pipe).
const READ_SIZE: usize = 64 * 1024;
/// Bytes one connection moves per round of the event loop before the others get a turn.
const ROUND_BUDGET: usize = 1024 * 1024;
/// Longest chunk-size or trailer line accepted, and most trailer lines.
const MAX_LINE: usize = 1024;
const MAX_TRAILERS: usize = 32;

/// Incremental decoder of a request body: a length, or chunked framing.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
    /// The line being read (chunk size, end of chunk data, trailer).
    line: Vec<u8>,
    trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes of a `Content-Length` body left.
    Length(u64),
    /// Reading a chunk-size line.
    Size,
    /// Bytes of chunk data left.
    Data(u64),
    /// Reading the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines up to the empty one.
    Trailer,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size,
        };
        BodyDecoder {
            state,
            line: Vec::new(),
            trailers: 0,
        }
    }

    /// The whole body has been decoded.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, appending body bytes to `out`. Bytes after the end of the body are
    /// ignored (one request per connection).
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                State::Done => return Ok(()),
                State::Length(left) | State::Data(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let left = left - take as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::DataEnd,
                        _ => State::Data(left),
                    };
                }
                State::Size | State::DataEnd | State::Trailer => {
                    let Some(end) = input.iter().position(|&b| b == b'\n') else {
                        self.take_line(input)?;
                        return Ok(());
                    };
                    self.take_line(&input[..end])?;
                    input = &input[end + 1..];
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.end_line(&line)?;
                }
            }
        }
        Ok(())
    }

    fn take_line(&mut self, part: &[u8]) -> Result<(), String> {
        if self.line.len() + part.len() > MAX_LINE {
            return Err(format!("chunked body: a line longer than {MAX_LINE} bytes"));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn end_line(&mut self, line: &[u8]) -> Result<(), String> {
        match self.state {
            State::Size => {
                let text = String::from_utf8_lossy(line);
                let size = text.split(';').next().unwrap_or("").trim();
                if size.is_empty() || size.len() > 15 {
                    return Err(format!(
                        "chunked body: bad chunk size `{}`",
                        text.escape_debug()
                    ));
                }
                let n = u64::from_str_radix(size, 16).map_err(|_| {
                    format!("chunked body: bad chunk size `{}`", text.escape_debug())
                })?;
                self.state = if n == 0 {
                    State::Trailer
                } else {
                    State::Data(n)
                };
            }
            State::DataEnd if line.is_empty() => self.state = State::Size,
            State::DataEnd => return Err("chunked body: chunk data longer than its size".into()),
            State::Trailer if line.is_empty() => self.state = State::Done,
            State::Trailer => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(format!(
                        "chunked body: more than {MAX_TRAILERS} trailer lines"
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// What a round of pumping left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pumped {
    /// Waiting for the client's next bytes: watch the socket.
    WaitClient,
    /// The pipe is full: watch the pipe (not the socket) until the child reads.
    WaitPipe,
    /// This round's budget is used: carry on in the next round.
    Yield,
    /// The whole body is in the pipe.
    Done,
    /// The client closed or failed before the end of the body.
    ClientGone,
    /// The child stopped reading (exited, or closed its stdin).
    ChildGone,
    /// The body's framing is malformed.
    BadBody(String),
}

/// A body on its way from a connection to a child's stdin.
pub struct Upload {
    /// The job whose stdin this is.
    pub job: u64,
    pipe: Option<File>,
    decoder: BodyDecoder,
    /// Decoded bytes not yet in the pipe, from `written` on.
    pending: Vec<u8>,
    written: usize,
    raw: Vec<u8>,
    /// Body bytes handed to the child so far.
    pub delivered: u64,
    /// When bytes last moved (either way).
    pub last_progress: Instant,
    /// Which fd the event loop watches for this upload.
    pub watching_pipe: bool,
    pub watching_socket: bool,
}

impl Upload {
    /// `pipe`: the write end of the child's stdin, non-blocking.
    pub fn new(job: u64, pipe: OwnedFd, framing: Framing, now: Instant) -> Upload {
        Upload {
            job,
            pipe: Some(File::from(pipe)),
            decoder: BodyDecoder::new(framing),
            pending: Vec::new(),
            written: 0,
            raw: Vec::new(),
            delivered: 0,
            last_progress: now,
            watching_pipe: false,
            watching_socket: true,
        }
    }

    pub fn pipe_fd(&self) -> Option<BorrowedFd<'_>> {
        self.pipe.as_ref().map(|p| p.as_fd())
    }

    /// Closes the pipe: the child reads EOF (a complete body, or a truncated one).
    pub fn close_pipe(&mut self) -> Option<File> {
        self.pending = Vec::new();
        self.written = 0;
        self.pipe.take()
    }

    /// Body bytes that came with the request head.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.decoder.feed(bytes, &mut self.pending)
    }

    /// Moves bytes: what is pending into the pipe, then from the socket, while both
    /// take and give, up to a round's budget.
    pub fn pump(&mut self, stream: &mut Stream, now: Instant) -> Pumped {
        let Some(pipe) = self.pipe.as_mut() else {
            return Pumped::ChildGone;
        };
        let mut budget = ROUND_BUDGET;
        loop {
            while self.written < self.pending.len() {
                match pipe.write(&self.pending[self.written..]) {
                    Ok(0) => return Pumped::ChildGone,
                    Ok(n) => {
                        self.written += n;
                        self.delivered += n as u64;
                        self.last_progress = now;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pumped::WaitPipe,
                    Err(_) => return Pumped::ChildGone,
                }
            }
            self.pending.clear();
            self.written = 0;
            if self.decoder.done() {
                return Pumped::Done;
            }
            if budget == 0 {
                return Pumped::Yield;
            }
            if self.raw.len() != READ_SIZE {
                self.raw = vec![0; READ_SIZE];
            }
            match stream.read(&mut self.raw) {
                Ok(0) => return Pumped::ClientGone,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.last_progress = now;
                    if let Err(e) = self.decoder.feed(&self.raw[..n], &mut self.pending) {
                        return Pumped::BadBody(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Pumped::WaitClient,
                Err(_) => return Pumped::ClientGone,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(
        framing: Framing,
        body: &[u8],
        split: usize,
    ) -> Result<(Vec<u8>, bool), String> {
        let mut d = BodyDecoder::new(framing);
        let mut out = Vec::new();
        d.feed(&body[..split], &mut out)?;
        d.feed(&body[split..], &mut out)?;
        Ok((out, d.done()))
    }

    #[test]
    fn decodes_chunked_bodies_split_anywhere() {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\nGARBAGE";
        for split in 0..body.len() {
            let (out, done) = decode_split(Framing::Chunked, body, split).unwrap();
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(done);
        }
        // Bare LF line ends are taken too.
        let (out, done) = decode_split(Framing::Chunked, b"3\nabc\n0\n\n", 4).unwrap();
        assert_eq!((out.as_slice(), done), (&b"abc"[..], true));
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let (out, done) = decode_split(Framing::Length(4), b"abcdef", 2).unwrap();
        assert_eq!((out.as_slice(), done), (&b"abcd"[..], true));
        let (out, done) = decode_split(Framing::Length(10), b"abc", 1).unwrap();
        assert_eq!((out.as_slice(), done), (&b"abc"[..], false));
        assert!(BodyDecoder::new(Framing::Length(0)).done());
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcd\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            let mut d = BodyDecoder::new(Framing::Chunked);
            assert!(d.feed(bad, &mut Vec::new()).is_err(), "{bad:?}");
        }
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(&[b'1'; MAX_LINE + 1], &mut Vec::new()).is_err());
        let mut d = BodyDecoder::new(Framing::Chunked);
        let trailers = "0\r\n".to_string() + &"X: y\r\n".repeat(MAX_TRAILERS + 1);
        assert!(d.feed(trailers.as_bytes(), &mut Vec::new()).is_err());
    }
}
