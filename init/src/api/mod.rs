//! The control API server: HTTP/1.1 + JSON on a unix socket (mode 0600) and, when the machine
//! config asks for it, on a TCP port with mutual TLS. Served inside the event loop without
//! ever blocking it: every socket is non-blocking, every connection has bounded buffers and a
//! deadline, and the number of connections is bounded. A slow or hostile client only ever
//! costs its own connection. Remote (TCP) connections have their own budget, a short deadline
//! for the TLS handshake and a per-peer cap, so peers that never authenticate cannot take the
//! local socket's connections; log streams read the log files as the socket drains instead of
//! buffering the log.
//!
//! Modules: [`http`] (parsing, responses), [`conn`] (one connection) over its [`stream`]
//! (unix socket or [`tls`]), [`routes`] (the route table), [`context`] (what every handler
//! sees and answers), and one handler module per resource: [`system`], [`units`], [`logs`]
//! (streamed by a [`log_cursor`]), [`images`] with its [`jobs`], [`metrics`], [`update`] with
//! [`upload`] (a request body streamed into an update job). The arrows go one way: routes ->
//! handlers -> context.

pub mod conn;
pub mod context;
pub mod http;
pub mod images;
pub mod jobs;
pub mod log_cursor;
pub mod logs;
pub mod metrics;
pub mod routes;
pub mod stream;
pub mod system;
pub mod tls;
pub mod units;
pub mod update;
pub mod upload;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::event::{after, Key, Reactor, Readiness, Timer};
use conn::{Conn, Flushed, Origin, Phase, Refill};
pub use context::{ApiContext, Reply, SystemInfo};
use http::{Parsed, ParsedHead, Response};
use log_cursor::LogCursor;
use stream::Stream;
use upload::{Pumped, Upload};

/// Time a client has to send its whole request (after the TLS handshake, over TCP).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a TCP peer has to complete the TLS handshake, client certificate included.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a client has to take a response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Local (unix socket) connections served at once, log followers included; more are told
/// 503 and closed. Remote connections never count against it.
pub const MAX_CONNECTIONS: usize = 64;
/// TCP connections served at once, in their handshake or not; more are told 503 and closed.
pub const MAX_REMOTE_CONNECTIONS: usize = 32;
/// TCP connections from one peer (an IPv4 address, an IPv6 /64) at once.
pub const MAX_REMOTE_PER_PEER: usize = 8;
/// Most bytes of log one connection sends per round of the event loop, so that a fast
/// reader of a large log does not hold up the others.
const STREAM_BUDGET: usize = 256 * 1024;
/// Time an upload may go without a byte moving (from the client, or into the update).
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

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
    /// Open connections by origin: local, remote, remote per peer.
    local: usize,
    remotes: usize,
    peers: HashMap<IpAddr, usize>,
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
            local: 0,
            remotes: 0,
            peers: HashMap::new(),
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
                Ok((mut stream, _)) => {
                    if self.local >= MAX_CONNECTIONS {
                        let detail = format!("at most {MAX_CONNECTIONS} at once; try again");
                        if stream.set_nonblocking(true).is_ok() {
                            refuse(&mut stream, &detail);
                        }
                        let _ = stream.shutdown(Shutdown::Write);
                        continue;
                    }
                    if stream.set_nonblocking(true).is_ok() {
                        self.adopt(Stream::Unix(stream), Origin::Local, ctx);
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

    /// New connections wait on the TLS listener. They count against their own limits (in all,
    /// and per peer), never the local socket's; over a limit a peer gets a plain-text 503
    /// before any TLS.
    pub fn on_accept_remote(&mut self, ctx: &mut ApiContext<'_>) {
        let Some(remote) = &self.remote else { return };
        let config = remote.tls.clone();
        let mut accepted = Vec::new();
        for _ in 0..MAX_REMOTE_CONNECTIONS {
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
        for (mut tcp, peer) in accepted {
            let key = peer_key(peer.ip());
            let refusal = if self.remotes >= MAX_REMOTE_CONNECTIONS {
                Some(format!(
                    "at most {MAX_REMOTE_CONNECTIONS} remote connections at once; try again"
                ))
            } else if self.peers.get(&key).copied().unwrap_or(0) >= MAX_REMOTE_PER_PEER {
                Some(format!(
                    "at most {MAX_REMOTE_PER_PEER} connections from {key} at once; try again"
                ))
            } else {
                None
            };
            if let Some(detail) = refusal {
                // Debug only: a hostile peer must not be able to flood the log.
                debug!("api: refused TCP connection from {peer}: {detail}");
                if tcp.set_nonblocking(true).is_ok() {
                    refuse(&mut tcp, &detail);
                }
                let _ = tcp.shutdown(Shutdown::Write);
                continue;
            }
            if tcp.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = tcp.set_nodelay(true);
            keepalive(&tcp);
            match tls::TlsStream::new(tcp, config.clone()) {
                Ok(s) => {
                    debug!("api: TLS connection from {peer}");
                    self.adopt(Stream::Tls(Box::new(s)), Origin::Remote(key), ctx);
                }
                Err(e) => warn!("api: TLS session: {e}"),
            }
        }
    }

    fn adopt(&mut self, stream: Stream, origin: Origin, ctx: &mut ApiContext<'_>) {
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) = ctx.reactor.watch(stream.as_fd(), Key::ApiConn(id), false) {
            warn!("api: cannot watch connection: {e}");
            return;
        }
        let timeout = match origin {
            Origin::Local => READ_TIMEOUT,
            Origin::Remote(_) => HANDSHAKE_TIMEOUT,
        };
        let deadline = after(ctx.now, timeout);
        ctx.reactor.schedule(deadline, Timer::ApiConn(id));
        match origin {
            Origin::Local => self.local += 1,
            Origin::Remote(peer) => {
                self.remotes += 1;
                *self.peers.entry(peer).or_insert(0) += 1;
            }
        }
        self.conns.insert(id, Conn::new(stream, origin, deadline));
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
                // The head first: a body streamed into an update is never read into `input`.
                let mut closed = conn.fill(http::MAX_HEAD);
                if conn.handshaking && !conn.stream.handshaking() && !closed {
                    // Authenticated: now the request's own deadline.
                    conn.handshaking = false;
                    let deadline = after(ctx.now, READ_TIMEOUT);
                    conn.deadline = Some(deadline);
                    ctx.reactor.schedule(deadline, Timer::ApiConn(id));
                }
                if let ParsedHead::Complete(head) = http::parse_head(&conn.input) {
                    if update::is_upload(&head.request) {
                        return self.start_upload(id, head, ctx);
                    }
                    if !closed {
                        closed = conn.fill(limit);
                    }
                }
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
                    Some(Reply::Log(cursor)) => self.stream_log(id, cursor, ctx.now, ctx.reactor),
                    None => self.after_io(id, ctx.reactor),
                }
            }
            Phase::Log { ref cursor, .. } if cursor.follows() => {
                if (ready.readable || ready.hangup) && conn.discard_input() {
                    return self.close(id, ctx.reactor);
                }
                self.after_io(id, ctx.reactor);
            }
            Phase::Upload(_) => self.pump_upload(id, ctx),
            // The socket is not watched meanwhile.
            Phase::AwaitJob { .. } => {}
            Phase::Linger => {
                if conn.stream.drop_input() {
                    self.close(id, ctx.reactor);
                }
            }
            Phase::Responding | Phase::Log { .. } => {
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
        }
    }

    /// A connection's deadline may have passed (or an upload's next round is due).
    pub fn on_timeout(&mut self, id: u64, ctx: &mut ApiContext<'_>) {
        let (now, r) = (ctx.now, &mut *ctx.reactor);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match &conn.phase {
            Phase::Upload(_) => return self.upload_timer(id, ctx),
            Phase::AwaitJob { job } if conn.deadline.is_some_and(|d| now >= d) => {
                let job = *job;
                let resp = match ctx.jobs.get(job) {
                    Some(j) if j.state == jobs::JobState::Running => {
                        update::failed(j, "the update stopped reading the bundle")
                    }
                    other => update::upload_answer(other),
                };
                self.watch_socket(id, r);
                return self.respond(id, resp, now, r);
            }
            Phase::AwaitJob { .. } => return,
            _ => {}
        }
        match conn.deadline {
            Some(deadline) if now >= deadline => {}
            // A later deadline has its own timer; followers have none.
            _ => return,
        }
        if conn.phase.is_reading() && conn.handshaking {
            // Never authenticated: nothing to tell it.
            debug!("api: TLS handshake not done within {HANDSHAKE_TIMEOUT:?}: closed");
            self.close(id, r);
        } else if conn.phase.is_reading() {
            let detail = format!("send the whole request within {}s", READ_TIMEOUT.as_secs());
            self.respond(id, Response::error(408, "request timeout", &detail), now, r);
        } else {
            // Still not taking our answer: give up on it.
            self.close(id, r);
        }
    }

    /// A unit wrote output to its log: its followers read it from there.
    pub fn on_unit_output(&mut self, unit: &str, bytes: &[u8], r: &mut dyn Reactor) {
        let followers: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase.follows(Some(unit)))
            .map(|(id, _)| *id)
            .collect();
        for id in followers {
            if let Some(Phase::Log { cursor, .. }) = self.conns.get_mut(&id).map(|c| &mut c.phase) {
                cursor.notify(bytes.len());
            }
            // A follower waiting for its socket reads on when the socket is writable.
            if !self.writing.get(&id).copied().unwrap_or(false) {
                self.after_io(id, r);
            }
        }
    }

    /// Runs after each round of events: completes unit removals (the unit file goes, log
    /// streams end, a built-in unit the removed one overrode comes back), answers uploads
    /// whose update ended before their body did.
    pub fn after_events(&mut self, ctx: &mut ApiContext<'_>) {
        let settled: Vec<(u64, u64)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| match c.phase {
                Phase::AwaitJob { job } if ctx.jobs.settled(job) != Some(false) => Some((*id, job)),
                _ => None,
            })
            .collect();
        for (id, job) in settled {
            let resp = update::upload_answer(ctx.jobs.get(job));
            self.watch_socket(id, ctx.reactor);
            self.respond(id, resp, ctx.now, ctx.reactor);
        }
        for removed in ctx.supervisor.take_removed() {
            units::finish_removal(&removed, ctx);
            let followers: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| c.phase.follows(Some(&removed.name)))
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

    /// Starts sending a unit's log: the head, then blocks of the log as the socket drains.
    fn stream_log(&mut self, id: u64, cursor: Box<LogCursor>, now: Instant, r: &mut dyn Reactor) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.input = Vec::new();
        if cursor.follows() {
            conn.push(&http::stream_head(200, log_cursor::CONTENT_TYPE));
            conn.deadline = None;
        } else {
            conn.push(&http::length_head(
                200,
                log_cursor::CONTENT_TYPE,
                cursor.backlog(),
            ));
            let deadline = after(now, WRITE_TIMEOUT);
            conn.deadline = Some(deadline);
            r.schedule(deadline, Timer::ApiConn(id));
        }
        let remaining = if cursor.follows() {
            0
        } else {
            cursor.backlog()
        };
        conn.phase = Phase::Log { cursor, remaining };
        self.after_io(id, r);
    }

    /// Writes what is queued, refills a log stream from its files while the socket takes it
    /// (up to a budget), then closes a finished connection or watches for the socket.
    fn after_io(&mut self, id: u64, r: &mut dyn Reactor) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut budget = STREAM_BUDGET;
        let wants_writable = loop {
            match conn.flush() {
                Flushed::Failed => return self.close(id, r),
                Flushed::Blocked => break true,
                Flushed::Done => {}
            }
            match conn.phase {
                Phase::Responding if conn.linger && conn.stream.resets_on_close() => {
                    conn.stream.shut_write();
                    conn.phase = Phase::Linger;
                    break false;
                }
                Phase::Responding => return self.close(id, r),
                Phase::Reading { .. }
                | Phase::Upload(_)
                | Phase::AwaitJob { .. }
                | Phase::Linger => break false,
                Phase::Log { .. } if budget == 0 => break true,
                Phase::Log { .. } => {}
            }
            match conn.refill(&mut budget) {
                Refill::Queued | Refill::Nothing => {}
                Refill::Idle => break false,
                Refill::Failed => return self.close(id, r),
            }
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
            if let Phase::Upload(up) = &mut conn.phase {
                // The update reads EOF: a truncated bundle, which it refuses.
                if let Some(pipe) = up.close_pipe() {
                    r.unwatch(pipe.as_fd());
                }
            }
            // A TLS peer that never completed its handshake gets no close_notify either.
            if !conn.handshaking {
                conn.stream.close();
            }
            r.unwatch(conn.stream.as_fd());
            match conn.origin {
                Origin::Local => self.local = self.local.saturating_sub(1),
                Origin::Remote(peer) => {
                    self.remotes = self.remotes.saturating_sub(1);
                    if let Some(n) = self.peers.get_mut(&peer) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.peers.remove(&peer);
                        }
                    }
                }
            }
        }
    }

    /// A head of `POST /v1/update` with the bundle as its body: starts the update job and
    /// streams the body into it.
    fn start_upload(&mut self, id: u64, head: http::Head, ctx: &mut ApiContext<'_>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let rest = conn.input.split_off(head.len.min(conn.input.len()));
        conn.input = Vec::new();
        debug!(
            "api: {} {} (streamed body)",
            head.request.method, head.request.path
        );
        // Answered before its body is read, unless the body is all consumed.
        conn.linger = true;
        let (job, pipe) = match update::start_upload(&head.request, ctx) {
            Ok(started) => started,
            Err(resp) => return self.respond(id, resp, ctx.now, ctx.reactor),
        };
        let mut up = Upload::new(job, pipe, head.framing, ctx.now);
        if let Err(e) = up.feed(&rest) {
            up.close_pipe();
            let resp = Response::error(400, "bad request body", &e);
            return self.respond(id, resp, ctx.now, ctx.reactor);
        }
        let expects_continue = head
            .request
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects_continue {
            // A few bytes into a fresh socket: they go at once or the peer is gone.
            conn.push(http::CONTINUE);
            if conn.flush() != Flushed::Done {
                up.close_pipe();
                return self.close(id, ctx.reactor);
            }
        }
        let deadline = after(ctx.now, UPLOAD_IDLE);
        conn.deadline = Some(deadline);
        ctx.reactor.schedule(deadline, Timer::ApiConn(id));
        conn.phase = Phase::Upload(Box::new(up));
        self.pump_upload(id, ctx);
    }

    /// Moves an upload's bytes on, then watches what it waits for, or answers.
    fn pump_upload(&mut self, id: u64, ctx: &mut ApiContext<'_>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Conn { stream, phase, .. } = conn;
        let Phase::Upload(up) = phase else {
            return;
        };
        let outcome = up.pump(stream, ctx.now);
        let job = up.job;
        ctx.jobs.set_uploaded(job, up.delivered);
        match outcome {
            Pumped::WaitClient => self.upload_watch(id, false, ctx.reactor),
            Pumped::WaitPipe => self.upload_watch(id, true, ctx.reactor),
            Pumped::Yield => {
                // Next round (also reads what TLS holds decrypted already).
                self.upload_watch(id, false, ctx.reactor);
                ctx.reactor.schedule(ctx.now, Timer::ApiConn(id));
            }
            Pumped::Done => {
                conn.linger = false;
                self.end_upload(id, ctx.reactor);
                let resp = update::upload_answer(ctx.jobs.get(job));
                self.respond(id, resp, ctx.now, ctx.reactor);
            }
            Pumped::ChildGone => {
                // Stop reading; answer with the job's error once it has ended.
                self.end_upload(id, ctx.reactor);
                if let Some(conn) = self.conns.get_mut(&id) {
                    ctx.reactor.unwatch(conn.stream.as_fd());
                    conn.phase = Phase::AwaitJob { job };
                    let deadline = after(ctx.now, WRITE_TIMEOUT);
                    conn.deadline = Some(deadline);
                    ctx.reactor.schedule(deadline, Timer::ApiConn(id));
                }
            }
            Pumped::ClientGone => {
                info!("api: update job {job}: the client went before the end of the bundle");
                self.close(id, ctx.reactor);
            }
            Pumped::BadBody(e) => {
                self.end_upload(id, ctx.reactor);
                let resp = Response::error(400, "bad request body", &e);
                self.respond(id, resp, ctx.now, ctx.reactor);
            }
        }
    }

    /// An upload's pipe has room again.
    pub fn on_upload_pipe(&mut self, id: u64, ctx: &mut ApiContext<'_>) {
        self.pump_upload(id, ctx);
    }

    /// An upload's timer: its next round, or its idle deadline.
    fn upload_timer(&mut self, id: u64, ctx: &mut ApiContext<'_>) {
        self.pump_upload(id, ctx);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Upload(up) = &conn.phase else {
            return;
        };
        let due = after(up.last_progress, UPLOAD_IDLE);
        if ctx.now >= due {
            let job = up.job;
            warn!(
                "api: update job {job}: no bytes of the bundle moved for {}s",
                UPLOAD_IDLE.as_secs()
            );
            self.end_upload(id, ctx.reactor);
            let detail = format!(
                "no bytes of the body for {}s; the update reads a truncated bundle",
                UPLOAD_IDLE.as_secs()
            );
            let resp = Response::error(408, "request timeout", &detail);
            return self.respond(id, resp, ctx.now, ctx.reactor);
        }
        if conn.deadline.is_none_or(|d| d <= ctx.now) {
            conn.deadline = Some(due);
            ctx.reactor.schedule(due, Timer::ApiConn(id));
        }
    }

    /// Watches an upload's pipe (full) or its socket (waiting for the client), not both.
    fn upload_watch(&mut self, id: u64, pipe: bool, r: &mut dyn Reactor) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Upload(up) = &mut conn.phase else {
            return;
        };
        if up.watching_pipe != pipe {
            if let Some(fd) = up.pipe_fd() {
                if pipe {
                    if let Err(e) = r.watch_write_only(fd, Key::UploadPipe(id)) {
                        warn!("api: cannot watch an update's input: {e}");
                    }
                } else {
                    r.unwatch(fd);
                }
            }
            up.watching_pipe = pipe;
        }
        if up.watching_socket == pipe {
            if pipe {
                r.unwatch(conn.stream.as_fd());
            } else if let Err(e) = r.watch(conn.stream.as_fd(), Key::ApiConn(id), false) {
                warn!("api: cannot watch connection: {e}");
            }
            up.watching_socket = !pipe;
        }
    }

    /// Closes an upload's pipe (the update reads EOF) and watches the socket again for the
    /// answer (the phase changes with it).
    fn end_upload(&mut self, id: u64, r: &mut dyn Reactor) {
        self.upload_watch(id, false, r);
        if let Some(conn) = self.conns.get_mut(&id) {
            if let Phase::Upload(up) = &mut conn.phase {
                up.close_pipe();
            }
        }
        self.writing.insert(id, false);
    }

    /// Watches a connection's socket for reading again (after an upload unwatched it).
    fn watch_socket(&mut self, id: u64, r: &mut dyn Reactor) {
        if let Some(conn) = self.conns.get(&id) {
            if r.watch(conn.stream.as_fd(), Key::ApiConn(id), false)
                .is_err()
            {
                return self.close(id, r);
            }
            self.writing.insert(id, false);
        }
    }

    /// Some connection follows a unit's log.
    pub fn has_followers(&self) -> bool {
        self.conns.values().any(|c| c.phase.follows(None))
    }

    /// Connections open now (for tests and metrics).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

/// Over a limit: a short 503 (best effort; the stream must be non-blocking, PID 1 never
/// waits for a client); the caller then ends the
/// connection. What the peer already sent is read first: closing a TCP socket with unread
/// input resets the connection, and the peer could lose the answer.
fn refuse(stream: &mut (impl Read + Write), detail: &str) {
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let resp = Response::error(503, "too many connections", detail);
    let _ = stream.write(&resp.to_bytes());
}

/// Probes a quiet TCP peer after a minute (then every 10 s, 3 times), and gives up on one
/// that acknowledges nothing for 2 minutes: a log follower whose peer vanished without closing
/// does not keep its place for good.
fn keepalive(tcp: &std::net::TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(tcp, sockopt::KeepAlive, &true);
    let _ = setsockopt(tcp, sockopt::TcpKeepIdle, &60);
    let _ = setsockopt(tcp, sockopt::TcpKeepInterval, &10);
    let _ = setsockopt(tcp, sockopt::TcpKeepCount, &3);
    let _ = setsockopt(tcp, sockopt::TcpUserTimeout, &120_000);
}

/// What the per-peer limit counts: an IPv4 address, or an IPv6 /64 (what one site usually
/// has to itself).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_counted_by_address_or_ipv6_64() {
        let key = |s: &str| peer_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff::1"), "2001:db8:1:2::");
    }
}
