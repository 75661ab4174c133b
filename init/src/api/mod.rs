//! The control API server: HTTP/1.1 + JSON on a unix socket (mode 0600), served inside the
//! event loop without ever blocking it. Every connection has a bounded buffer and a read
//! deadline; a slow or hostile client only ever costs its own connection.

pub mod http;
pub mod routes;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{debug, warn};

use crate::event::{after, Key, Reactor, Readiness, Timer};
use http::{Parsed, Response};
pub use routes::{ApiContext, SystemInfo};

/// Time a client has to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
}

pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<u64, Conn>,
    next_id: u64,
}

impl ApiServer {
    /// Binds the socket at `path` (replacing a stale one), mode 0600, and watches it.
    pub fn bind(path: &Path, r: &mut dyn Reactor) -> io::Result<ApiServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Bind under a restrictive umask so the socket is never briefly open to others.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        r.watch(listener.as_fd(), Key::ApiListener, false)?;
        Ok(ApiServer {
            listener,
            path: path.to_path_buf(),
            conns: HashMap::new(),
            next_id: 1,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// New connections are waiting.
    pub fn on_accept(&mut self, ctx: &mut ApiContext<'_>) {
        while self.conns.len() < MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    if let Err(e) = ctx.reactor.watch(stream.as_fd(), Key::ApiConn(id), false) {
                        warn!("api: cannot watch connection: {e}");
                        continue;
                    }
                    ctx.reactor
                        .schedule(after(ctx.now, READ_TIMEOUT), Timer::ApiConn(id));
                    self.conns.insert(
                        id,
                        Conn {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            written: 0,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("api: accept: {e}");
                    break;
                }
            }
        }
    }

    /// A connection is readable or writable.
    pub fn on_ready(&mut self, id: u64, ready: Readiness, ctx: &mut ApiContext<'_>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.output.is_empty() {
            let mut buf = [0u8; 8192];
            let mut closed = false;
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        conn.input.extend_from_slice(&buf[..n]);
                        if conn.input.len() > http::MAX_HEAD + http::MAX_BODY {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let response = match http::parse(&conn.input) {
                Parsed::Incomplete if closed => return self.close(id, ctx.reactor),
                Parsed::Incomplete if conn.input.len() > http::MAX_HEAD + http::MAX_BODY => {
                    Some(Response::error(413, "request too large", ""))
                }
                Parsed::Incomplete => None,
                Parsed::Invalid(resp) => Some(resp),
                Parsed::Complete(req) => {
                    debug!("api: {} {}", req.method, req.path);
                    Some(routes::dispatch(&req, ctx))
                }
            };
            if let Some(resp) = response {
                self.respond(id, resp, ctx.reactor);
            }
        } else if ready.writable || ready.hangup {
            self.flush(id, ctx.reactor);
        }
    }

    /// A connection's read deadline passed.
    pub fn on_timeout(&mut self, id: u64, r: &mut dyn Reactor) {
        if let Some(conn) = self.conns.get(&id) {
            if conn.output.is_empty() {
                self.respond(
                    id,
                    Response::error(408, "request timeout", "send the whole request within 5s"),
                    r,
                );
            } else {
                // Still not able to take our answer: give up on it.
                self.close(id, r);
            }
        }
    }

    fn respond(&mut self, id: u64, resp: Response, r: &mut dyn Reactor) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.input = Vec::new();
        conn.output = resp.to_bytes();
        conn.written = 0;
        self.flush(id, r);
    }

    fn flush(&mut self, id: u64, r: &mut dyn Reactor) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        loop {
            match conn.stream.write(&conn.output[conn.written..]) {
                Ok(0) => break,
                Ok(n) => {
                    conn.written += n;
                    if conn.written == conn.output.len() {
                        return self.close(id, r);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if r.watch(conn.stream.as_fd(), Key::ApiConn(id), true)
                        .is_err()
                    {
                        return self.close(id, r);
                    }
                    return;
                }
                Err(_) => return self.close(id, r),
            }
        }
        self.close(id, r);
    }

    fn close(&mut self, id: u64, r: &mut dyn Reactor) {
        if let Some(conn) = self.conns.remove(&id) {
            r.unwatch(conn.stream.as_fd());
        }
    }
}
