//! berthctl's HTTP/1.1 client for the control API: over the unix socket, or over TCP with
//! mutual TLS (`--host`). One request per connection, like the server.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Time to connect, and to wait for a response (log streams wait forever).
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response head read.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes of a streamed request body read and sent at a time.
const STREAM_BLOCK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("{target}: {source}")]
    Io { target: String, source: io::Error },
    #[error("{target}: malformed response: {why}")]
    Malformed { target: String, why: String },
    #[error("{0}")]
    Tls(#[from] berth_init::api::tls::TlsError),
    #[error("bad TLS server name `{0}`")]
    ServerName(String),
}

impl ClientError {
    /// A streamed upload stopped by its caller.
    pub fn interrupted(&self) -> bool {
        matches!(self, ClientError::Io { source, .. } if source.kind() == io::ErrorKind::Interrupted)
    }
}

/// Where the API is.
pub enum Endpoint {
    Unix(PathBuf),
    Tls {
        /// `HOST:PORT`
        addr: String,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    },
}

impl Endpoint {
    /// TLS endpoint `addr` (`HOST:PORT`); the server certificate must name `name` (default:
    /// the host part of `addr`).
    pub fn tls(
        addr: &str,
        config: Arc<ClientConfig>,
        name: Option<&str>,
    ) -> Result<Endpoint, ClientError> {
        let host = name.map(str::to_string).unwrap_or_else(|| {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
        let name = ServerName::try_from(host.clone()).map_err(|_| ClientError::ServerName(host))?;
        Ok(Endpoint::Tls {
            addr: addr.to_string(),
            config,
            name,
        })
    }

    fn describe(&self) -> String {
        match self {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tls { addr, .. } => addr.clone(),
        }
    }
}

trait Transport: Read + Write {
    /// After a failed TLS handshake: the server's answer when it was a plain-text HTTP
    /// refusal sent before any TLS (a server over its connection limit), read to its end.
    fn plain_refusal(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// The server has sent something (checked without waiting): while a body is still
    /// being sent, that is an early answer.
    fn answered(&mut self) -> bool {
        false
    }
}

/// `fd` has input (or an error or hangup) waiting, checked without waiting.
fn readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

impl Transport for UnixStream {
    fn answered(&mut self) -> bool {
        readable(std::os::fd::AsFd::as_fd(self))
    }
}
impl Transport for io::Cursor<Vec<u8>> {}

impl Transport for StreamOwned<ClientConnection, Recorder> {
    /// Records the server sends unasked (TLS 1.3 session tickets) are not an answer: only
    /// plaintext, a close or an error is.
    fn answered(&mut self) -> bool {
        if !readable(std::os::fd::AsFd::as_fd(&self.sock.tcp)) {
            return false;
        }
        match self.conn.read_tls(&mut self.sock) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
        match self.conn.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(_) => true,
        }
    }

    fn plain_refusal(&mut self) -> Option<Vec<u8>> {
        if !self.sock.first.starts_with(b"HTTP/1.") {
            return None;
        }
        let mut answer = std::mem::take(&mut self.sock.first);
        let mut buf = [0u8; 4096];
        while answer.len() < MAX_HEAD {
            match self.sock.tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        Some(answer)
    }
}

/// The TCP stream under TLS, keeping the first bytes the server sends: a server refusing
/// the connection answers in plain text instead of a TLS handshake.
struct Recorder {
    tcp: TcpStream,
    first: Vec<u8>,
}

/// Bytes of the server's first words kept.
const RECORDED: usize = 4096;

impl Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        let room = RECORDED.saturating_sub(self.first.len()).min(n);
        self.first.extend_from_slice(&buf[..room]);
        Ok(n)
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A response with its whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client { endpoint }
    }

    fn io_err(&self) -> impl FnOnce(io::Error) -> ClientError + '_ {
        move |source| ClientError::Io {
            target: self.endpoint.describe(),
            source,
        }
    }

    fn malformed(&self, why: &str) -> ClientError {
        ClientError::Malformed {
            target: self.endpoint.describe(),
            why: why.to_string(),
        }
    }

    fn connect(&self, timeout: Option<Duration>) -> Result<Box<dyn Transport>, ClientError> {
        let target = self.endpoint.describe();
        let connect_err = |source| ClientError::Connect {
            target: target.clone(),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path).map_err(connect_err)?;
                s.set_read_timeout(timeout).map_err(connect_err)?;
                s.set_write_timeout(Some(TIMEOUT)).map_err(connect_err)?;
                Ok(Box::new(s))
            }
            Endpoint::Tls { addr, config, name } => {
                let sockaddr = addr
                    .to_socket_addrs()
                    .map_err(connect_err)?
                    .next()
                    .ok_or_else(|| connect_err(io::ErrorKind::NotFound.into()))?;
                let tcp = TcpStream::connect_timeout(&sockaddr, TIMEOUT).map_err(connect_err)?;
                tcp.set_read_timeout(timeout).map_err(connect_err)?;
                tcp.set_write_timeout(Some(TIMEOUT)).map_err(connect_err)?;
                let conn = ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| connect_err(io::Error::other(e)))?;
                let recorder = Recorder {
                    tcp,
                    first: Vec::new(),
                };
                Ok(Box::new(StreamOwned::new(conn, recorder)))
            }
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        timeout: Option<Duration>,
    ) -> Result<(Box<dyn Transport>, Head), ClientError> {
        let mut s = self.connect(timeout)?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n");
        if let Some((content_type, data)) = body {
            request.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                data.len()
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        if let Some((_, data)) = body {
            bytes.extend_from_slice(data);
        }
        let sent = s.write_all(&bytes).and_then(|()| s.flush());
        let head = match sent {
            Ok(()) => self.read_head(&mut s),
            Err(e) => Err(self.io_err()(e)),
        };
        match head {
            Ok(head) => Ok((s, head)),
            Err(e) => self.refused(s, e),
        }
    }

    /// A server over its connection limit answers 503 and closes without reading the
    /// request: the answer, rather than the broken pipe or TLS error it leaves behind. Over
    /// TLS only a 503 counts (a plain-text answer is not authenticated).
    fn refused(
        &self,
        mut s: Box<dyn Transport>,
        error: ClientError,
    ) -> Result<(Box<dyn Transport>, Head), ClientError> {
        if let Some(plain) = s.plain_refusal() {
            let mut plain: Box<dyn Transport> = Box::new(io::Cursor::new(plain));
            return match self.read_head(&mut plain) {
                Ok(head) if head.status == 503 => Ok((plain, head)),
                _ => Err(error),
            };
        }
        let unread = matches!(
            &error,
            ClientError::Io { source, .. }
                if matches!(source.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
        );
        if unread && matches!(self.endpoint, Endpoint::Unix(_)) {
            if let Ok(head) = self.read_head(&mut s) {
                return Ok((s, head));
            }
        }
        Err(error)
    }

    /// `method path` with an optional body; the whole response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Reply, ClientError> {
        let (s, head) = self.send(method, path, body, Some(TIMEOUT))?;
        self.read_reply(s, head)
    }

    /// `method path` with a body of `len` bytes of `content_type` read from `body` as it is
    /// sent, a block at a time (never whole in memory). `sent` hears the bytes sent so far
    /// and stops the upload by returning false. A server that answers before the whole
    /// body is in (it refused it, or what consumed it failed): that answer, and the rest of
    /// the body is not sent.
    pub fn request_streaming(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &mut dyn Read,
        len: u64,
        sent: &mut dyn FnMut(u64) -> bool,
    ) -> Result<Reply, ClientError> {
        let mut s = self.connect(Some(TIMEOUT))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
        );
        let written = s.write_all(head.as_bytes()).map_err(self.io_err());
        let written = written.and_then(|()| {
            let mut buf = vec![0u8; STREAM_BLOCK];
            let mut done = 0u64;
            while done < len {
                // Stop sending once the server answered (it refused the body, or what
                // consumed it failed): over TLS, a write that fails first would hide the
                // answer.
                if s.answered() {
                    return Ok(());
                }
                let want = usize::try_from(len - done).map_or(buf.len(), |l| l.min(buf.len()));
                let n = match body.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(
                            self.malformed(&format!("the body ended after {done} of {len} bytes"))
                        )
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io_err()(e)),
                };
                s.write_all(&buf[..n]).map_err(self.io_err())?;
                done += n as u64;
                if !sent(done) {
                    return Err(self.io_err()(io::ErrorKind::Interrupted.into()));
                }
            }
            s.flush().map_err(self.io_err())
        });
        match written {
            Ok(()) => {
                let head = self.read_head(&mut s)?;
                self.read_reply(s, head)
            }
            // Stopped by the caller: nothing to wait for.
            Err(e @ ClientError::Io { .. }) if e.interrupted() => Err(e),
            // The server may have answered and closed: its answer says why.
            Err(e) => match self.read_head(&mut s) {
                Ok(head) => self.read_reply(s, head),
                Err(_) => Err(e),
            },
        }
    }

    /// The body of a response whose head was read.
    fn read_reply(&self, mut s: Box<dyn Transport>, head: Head) -> Result<Reply, ClientError> {
        let mut body = head.rest.clone();
        if head.chunked {
            let mut out = Vec::new();
            let mut decoder = Chunked::default();
            decoder.feed(&body, &mut out);
            let mut buf = [0u8; 16 * 1024];
            while !decoder.done {
                let n = read_some(&mut s, &mut buf).map_err(self.io_err())?;
                if n == 0 {
                    break;
                }
                decoder.feed(&buf[..n], &mut out);
            }
            body = out;
        } else if let Some(len) = head.length {
            while body.len() < len {
                let mut buf = vec![0u8; (len - body.len()).min(64 * 1024)];
                let n = read_some(&mut s, &mut buf).map_err(self.io_err())?;
                if n == 0 {
                    return Err(self.malformed("body shorter than Content-Length"));
                }
                body.extend_from_slice(&buf[..n]);
            }
            body.truncate(len);
        } else {
            read_to_end(&mut s, &mut body).map_err(self.io_err())?;
        }
        Ok(Reply {
            status: head.status,
            body,
        })
    }

    /// GET a streaming (chunked) response, handing each piece of its body to `sink` until
    /// the server ends it. A non-2xx answer is returned whole instead.
    pub fn stream(
        &self,
        path: &str,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Option<Reply>, ClientError> {
        let (mut s, head) = self.send("GET", path, None, None)?;
        if !(200..300).contains(&head.status) || !head.chunked {
            let mut body = head.rest;
            read_to_end(&mut s, &mut body).map_err(self.io_err())?;
            return Ok(Some(Reply {
                status: head.status,
                body,
            }));
        }
        let mut decoder = Chunked::default();
        let mut out = Vec::new();
        decoder.feed(&head.rest, &mut out);
        sink(&out);
        let mut buf = [0u8; 16 * 1024];
        while !decoder.done {
            let n = read_some(&mut s, &mut buf).map_err(self.io_err())?;
            if n == 0 {
                break;
            }
            out.clear();
            decoder.feed(&buf[..n], &mut out);
            sink(&out);
        }
        Ok(None)
    }

    fn read_head(&self, s: &mut Box<dyn Transport>) -> Result<Head, ClientError> {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = read_some(s, &mut buf).map_err(self.io_err())?;
            if n == 0 {
                return Err(self.malformed("connection closed before a response"));
            }
            data.extend_from_slice(&buf[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&data) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    if status == 100 {
                        // `100 Continue` precedes the real response.
                        data.drain(..len);
                        continue;
                    }
                    let header = |name: &str| {
                        resp.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
                    };
                    let chunked = header("transfer-encoding")
                        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                    let length = header("content-length").and_then(|v| v.parse().ok());
                    return Ok(Head {
                        status,
                        chunked,
                        length,
                        rest: data[len..].to_vec(),
                    });
                }
                Ok(httparse::Status::Partial) if data.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => return Err(self.malformed("head too large")),
                Err(e) => return Err(self.malformed(&e.to_string())),
            }
        }
    }
}

struct Head {
    status: u16,
    chunked: bool,
    length: Option<usize>,
    /// Body bytes read with the head.
    rest: Vec<u8>,
}

/// A read that treats a TLS peer closing without close_notify as the end of the stream
/// (the server closes after `Connection: close`).
fn read_some(s: &mut Box<dyn Transport>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            other => return other,
        }
    }
}

fn read_to_end(s: &mut Box<dyn Transport>, out: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = read_some(s, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Incremental decoder of a chunked body.
#[derive(Default)]
struct Chunked {
    pending: Vec<u8>,
    /// Bytes left of the current chunk's data.
    left: usize,
    done: bool,
}

impl Chunked {
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(data);
        let mut pos = 0;
        while !self.done {
            if self.left > 0 {
                let take = self.left.min(self.pending.len() - pos);
                out.extend_from_slice(&self.pending[pos..pos + take]);
                pos += take;
                self.left -= take;
                if self.left > 0 {
                    break;
                }
                continue;
            }
            let Some(end) = self.pending[pos..].windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = String::from_utf8_lossy(&self.pending[pos..pos + end]).into_owned();
            pos += end + 2;
            // The CRLF that ends a chunk's data reads as an empty line.
            let size = line.split(';').next().unwrap_or("").trim();
            if size.is_empty() {
                continue;
            }
            match usize::from_str_radix(size, 16) {
                Ok(n) if n > 0 => self.left = n,
                _ => self.done = true,
            }
        }
        self.pending.drain(..pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunks_split_anywhere() {
        let body = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut d = Chunked::default();
            let mut out = Vec::new();
            d.feed(&body[..split], &mut out);
            d.feed(&body[split..], &mut out);
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(d.done);
        }
    }
}
