//! The control API server: HTTP/1.1 + JSON on a unix socket (mode 0600) and, when the machine
//! config asks for it, on a TCP port with mutual TLS. Served inside the event loop without
//! ever blocking it: every socket is non-blocking, every connection has bounded buffers and a
//! deadline, and the number of connections is bounded. A slow or hostile client only ever
//! costs its own connection.
//!
//! Modules: [`http`] (parsing, responses), [`conn`] (one connection), [`tls`] (mutual TLS),
//! [`routes`] (the route table), and one module per resource: [`units`], [`logs`],
//! [`images`] with its [`jobs`], [`metrics`].

pub mod conn;
pub mod http;
pub mod images;
pub mod jobs;
pub mod logs;
pub mod metrics;
pub mod routes;
pub mod tls;
pub mod units;

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::event::{after, Key, Reactor, Readiness, Timer};
use conn::{Conn, Flushed, Phase, Stream};
use http::{Parsed, Response};
pub use routes::{ApiContext, Reply, SystemInfo};

/// Time a client has to send its whole request (and to finish a TLS handshake).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take a response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once, log followers included; more are told 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;

struct Remote {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
}

pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    remote: Option<Remote>,
    conns: HashMap<u64, Conn>,
    /// Connections watched for writing (the rest only for reading).
    writing: HashMap<u64, bool>,
    next_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
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
            remote: None,
            conns: HashMap::new(),
            writing: HashMap::new(),
            next_id: 1,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the mutual-TLS listener of `[api]` in the machine config; returns the address
    /// bound (port 0 picks a free one).
    pub fn listen_remote(
        &mut self,
        api: &crate::machine::RemoteApi,
        r: &mut dyn Reactor,
    ) -> Result<SocketAddr, RemoteError> {
        let tls = tls::server_config(api)?;
        let listen_err = |source| RemoteError::Listen {
            addr: api.listen,
            source,
        };
        let listener = TcpListener::bind(api.listen).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        r.watch(listener.as_fd(), Key::ApiRemoteListener, false)
            .map_err(listen_err)?;
        info!("api: listening on {addr} (mutual TLS)");
        self.remote = Some(Remote { listener, tls });
        Ok(addr)
    }

    /// New connections wait on the unix socket.
    pub fn on_accept(&mut self, ctx: &mut ApiContext<'_>) {
        // Bounded: the backlog is taken in one go, but never more than it can hold.
        for _ in 0..MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        refuse_busy(stream);
                        continue;
                    }
                    if stream.set_nonblocking(true).is_ok() {
                        self.adopt(Stream::Unix(stream), ctx);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        warn!("api: accept: {e}");
                    }
                    break;
                }
            }
        }
    }

    /// New connections wait on the TLS listener.
    pub fn on_accept_remote(&mut self, ctx: &mut ApiContext<'_>) {
        let Some(remote) = &self.remote else { return };
        let config = remote.tls.clone();
        let mut accepted = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            match remote.listener.accept() {
                Ok(peer) => accepted.push(peer),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        warn!("api: accept: {e}");
                    }
                    break;
                }
            }
        }
        for (tcp, peer) in accepted {
            // At capacity a TLS peer cannot even be told so: it is closed at once.
            if self.conns.len() >= MAX_CONNECTIONS || tcp.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = tcp.set_nodelay(true);
            match tls::TlsStream::new(tcp, config.clone()) {
                Ok(s) => {
                    debug!("api: TLS connection from {peer}");
                    self.adopt(Stream::Tls(Box::new(s)), ctx);
                }
                Err(e) => warn!("api: TLS session: {e}"),
            }
        }
    }

    fn adopt(&mut self, stream: Stream, ctx: &mut ApiContext<'_>) {
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = ctx.reactor.watch(stream.as_fd(), Key::ApiConn(id), false) {
            warn!("api: cannot watch connection: {e}");
            return;
        }
        let deadline = after(ctx.now, READ_TIMEOUT);
        ctx.reactor.schedule(deadline, Timer::ApiConn(id));
        self.conns.insert(id, Conn::new(stream, deadline));
        self.writing.insert(id, false);
    }

    /// A connection is readable or writable.
    pub fn on_ready(&mut self, id: u64, ready: Readiness, ctx: &mut ApiContext<'_>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.phase {
            Phase::Reading { continue_sent } => {
                let limit = http::MAX_HEAD + http::MAX_BODY;
                let closed = conn.fill(limit);
                let reply = match http::parse(&conn.input) {
                    Parsed::Incomplete if closed => return self.close(id, ctx.reactor),
                    Parsed::Incomplete if conn.input.len() > limit => {
                        Some(Reply::Full(Response::error(413, "request too large", "")))
                    }
                    Parsed::Incomplete => {
                        if !continue_sent && http::expects_continue(&conn.input) {
                            conn.phase = Phase::Reading {
                                continue_sent: true,
                            };
                            conn.push(http::CONTINUE);
                        }
                        None
                    }
                    Parsed::Invalid(resp) => Some(Reply::Full(resp)),
                    Parsed::Complete(req) => {
                        debug!("api: {} {}", req.method, req.path);
                        Some(routes::dispatch(&req, ctx))
                    }
                };
                match reply {
                    Some(Reply::Full(resp)) => self.respond(id, resp, ctx.now, ctx.reactor),
                    Some(Reply::Follow { unit, backlog }) => {
                        self.follow(id, unit, &backlog, ctx.reactor)
                    }
                    None => self.after_io(id, ctx.reactor),
                }
            }
            Phase::Responding => {
                if (ready.readable || ready.hangup) && conn.discard_input() {
                    // The peer half-closed: only the answer is left to write.
                    self.writing.insert(id, true);
                    if ctx
                        .reactor
                        .watch_write_only(conn.stream.as_fd(), Key::ApiConn(id))
                        .is_err()
                    {
                        return self.close(id, ctx.reactor);
                    }
                }
                self.after_io(id, ctx.reactor);
            }
            Phase::Following { .. } => {
                if (ready.readable || ready.hangup) && conn.discard_input() {
                    return self.close(id, ctx.reactor);
                }
                self.after_io(id, ctx.reactor);
            }
        }
    }

    /// A connection's deadline may have passed.
    pub fn on_timeout(&mut self, id: u64, now: Instant, r: &mut dyn Reactor) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        match conn.deadline {
            Some(deadline) if now >= deadline => {}
            // A later deadline has its own timer; followers have none.
            _ => return,
        }
        if matches!(conn.phase, Phase::Reading { .. }) {
            let detail = format!("send the whole request within {}s", READ_TIMEOUT.as_secs());
            self.respond(id, Response::error(408, "request timeout", &detail), now, r);
        } else {
            // Still not taking our answer: give up on it.
            self.close(id, r);
        }
    }

    /// Output a unit wrote to its log: goes to everyone following that log.
    pub fn on_unit_output(&mut self, unit: &str, bytes: &[u8], r: &mut dyn Reactor) {
        let followers: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.phase, Phase::Following { unit: u, .. } if u == unit))
            .map(|(id, _)| *id)
            .collect();
        for id in followers {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.push_chunk(bytes);
            }
            // A follower already waiting for its socket is flushed when it becomes writable.
            if !self.writing.get(&id).copied().unwrap_or(false) {
                self.after_io(id, r);
            }
        }
    }

    /// Runs after each round of events: completes unit removals (the unit file goes, log
    /// streams end, a built-in unit the removed one overrode comes back).
    pub fn after_events(&mut self, ctx: &mut ApiContext<'_>) {
        for removed in ctx.supervisor.take_removed() {
            units::finish_removal(&removed, ctx);
            let followers: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    matches!(&c.phase, Phase::Following { unit, .. } if *unit == removed.name)
                })
                .map(|(id, _)| *id)
                .collect();
            for id in followers {
                self.end_stream(id, ctx.now, ctx.reactor);
            }
        }
    }

    /// Ends a log stream (last chunk), then closes once it is out.
    fn end_stream(&mut self, id: u64, now: Instant, r: &mut dyn Reactor) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.push(http::LAST_CHUNK);
            conn.phase = Phase::Responding;
            let deadline = after(now, WRITE_TIMEOUT);
            conn.deadline = Some(deadline);
            r.schedule(deadline, Timer::ApiConn(id));
        }
        self.after_io(id, r);
    }

    fn respond(&mut self, id: u64, resp: Response, now: Instant, r: &mut dyn Reactor) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.input = Vec::new();
        conn.phase = Phase::Responding;
        conn.push(&resp.to_bytes());
        let deadline = after(now, WRITE_TIMEOUT);
        conn.deadline = Some(deadline);
        r.schedule(deadline, Timer::ApiConn(id));
        self.after_io(id, r);
    }

    fn follow(&mut self, id: u64, unit: String, backlog: &[u8], r: &mut dyn Reactor) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.input = Vec::new();
        conn.phase = Phase::Following { unit, dropped: 0 };
        conn.deadline = None;
        conn.push(&http::stream_head(200, logs::CONTENT_TYPE));
        // The backlog is bounded by the tail limit; it is sent whole.
        let mut first = Vec::new();
        http::chunk(backlog, &mut first);
        conn.push(&first);
        self.after_io(id, r);
    }

    /// Writes what is queued, then closes a finished connection or watches for the socket.
    fn after_io(&mut self, id: u64, r: &mut dyn Reactor) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut flushed = conn.flush();
        if flushed == Flushed::Done && conn.note_gap() {
            flushed = conn.flush();
        }
        let wants_writable = match flushed {
            Flushed::Failed => return self.close(id, r),
            Flushed::Done if conn.phase == Phase::Responding => return self.close(id, r),
            Flushed::Done => false,
            Flushed::Blocked => true,
        };
        let watching = self.writing.get(&id).copied().unwrap_or(false);
        if watching != wants_writable {
            self.writing.insert(id, wants_writable);
            if r.watch(conn.stream.as_fd(), Key::ApiConn(id), wants_writable)
                .is_err()
            {
                self.close(id, r);
            }
        }
    }

    fn close(&mut self, id: u64, r: &mut dyn Reactor) {
        self.writing.remove(&id);
        if let Some(mut conn) = self.conns.remove(&id) {
            conn.stream.close();
            r.unwatch(conn.stream.as_fd());
        }
    }

    /// Some connection follows a unit's log.
    pub fn has_followers(&self) -> bool {
        self.conns
            .values()
            .any(|c| matches!(c.phase, Phase::Following { .. }))
    }

    /// Connections open now (for tests and metrics).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

/// At capacity: a short 503 (best effort, never waiting), then the connection is dropped.
fn refuse_busy(mut stream: UnixStream) {
    let _ = stream.set_nonblocking(true);
    let resp = Response::error(
        503,
        "too many connections",
        &format!("at most {MAX_CONNECTIONS} at once; try again"),
    );
    let _ = stream.write(&resp.to_bytes());
}
