//! Forwarding to a remote syslog server: RFC 5424 messages over UDP (one datagram each,
//! fire and forget) or TCP (octet-counted framing, RFC 6587). Never blocks PID 1: sockets are
//! non-blocking, the TCP connect completes in the background, and what the server cannot
//! take goes into a bounded buffer; past it messages are dropped and counted.
//!
//! Nothing in here may log through the `log` facade: it runs inside the logger.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};

use crate::machine::{SyslogTarget, SyslogTransport};

/// Bytes waiting for a TCP server at most.
const TCP_BUFFER: usize = 64 * 1024;
/// Time between connection attempts to a TCP server that is down.
const RECONNECT: Duration = Duration::from_secs(5);
/// Longest message forwarded (longer ones are cut).
const MAX_MESSAGE: usize = 2048;
/// A unit's unfinished output line is sent once it is this long.
const MAX_PARTIAL: usize = 1024;

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    pub configured: bool,
    pub sent: u64,
    pub dropped: u64,
}

enum Link {
    Udp(Option<UdpSocket>),
    Tcp {
        stream: Option<TcpStream>,
        buffer: Vec<u8>,
        last_attempt: Option<Instant>,
    },
}

pub struct Forwarder {
    addr: SocketAddr,
    hostname: String,
    units: bool,
    link: Link,
    /// Unfinished last lines of unit output, per unit.
    partial: HashMap<String, Vec<u8>>,
    sent: u64,
    dropped: u64,
}

impl Forwarder {
    pub fn new(target: &SyslogTarget, hostname: &str) -> Forwarder {
        let link = match target.transport {
            SyslogTransport::Udp => Link::Udp(udp_socket(target.addr).ok()),
            SyslogTransport::Tcp => Link::Tcp {
                stream: None,
                buffer: Vec::new(),
                last_attempt: None,
            },
        };
        Forwarder {
            addr: target.addr,
            hostname: header_field(hostname),
            units: target.units,
            link,
            partial: HashMap::new(),
            sent: 0,
            dropped: 0,
        }
    }

    pub fn forwards_units(&self) -> bool {
        self.units
    }

    pub fn stats(&self) -> ForwardStats {
        ForwardStats {
            configured: true,
            sent: self.sent,
            dropped: self.dropped,
        }
    }

    /// One message from `app` with syslog `severity` (0 emergency … 7 debug).
    pub fn send(&mut self, severity: u8, app: &str, procid: Option<u32>, message: &str) {
        let line = format_rfc5424(
            severity,
            SystemTime::now(),
            &self.hostname,
            app,
            procid,
            message,
        );
        match &mut self.link {
            Link::Udp(Some(sock)) => match sock.send(line.as_bytes()) {
                Ok(_) => self.sent += 1,
                // Full socket buffer, or ICMP unreachable from an earlier datagram.
                Err(_) => self.dropped += 1,
            },
            Link::Udp(None) => self.dropped += 1,
            Link::Tcp { buffer, .. } => {
                let frame = format!("{} {line}", line.len());
                if buffer.len() + frame.len() > TCP_BUFFER {
                    self.dropped += 1;
                } else {
                    buffer.extend_from_slice(frame.as_bytes());
                    self.sent += 1;
                }
                self.flush();
            }
        }
    }

    /// Output of a unit: forwarded one message per line (when `units` is on).
    pub fn unit_output(&mut self, unit: &str, bytes: &[u8]) {
        if !self.units {
            return;
        }
        let mut pending = self.partial.remove(unit).unwrap_or_default();
        pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&pending[start..start + end]).into_owned();
            if !line.trim().is_empty() {
                self.send(6, unit, None, line.trim_end());
            }
            start += end + 1;
        }
        pending.drain(..start);
        if pending.len() >= MAX_PARTIAL {
            let line = String::from_utf8_lossy(&pending).into_owned();
            self.send(6, unit, None, &line);
            pending.clear();
        }
        if !pending.is_empty() {
            self.partial.insert(unit.to_string(), pending);
        }
    }

    /// Writes buffered TCP data as far as the socket takes it; (re)connects when due.
    pub fn flush(&mut self) {
        let Link::Tcp {
            stream,
            buffer,
            last_attempt,
        } = &mut self.link
        else {
            return;
        };
        if buffer.is_empty() {
            return;
        }
        if stream.is_none() {
            let due = last_attempt.is_none_or(|t| t.elapsed() >= RECONNECT);
            if !due {
                return;
            }
            *last_attempt = Some(Instant::now());
            *stream = tcp_connect(self.addr).ok();
        }
        let Some(s) = stream else { return };
        loop {
            match s.write(buffer) {
                Ok(0) => break,
                Ok(n) => {
                    buffer.drain(..n);
                    if buffer.is_empty() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Still connecting, or the server is slow: later.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // Refused or reset: reconnect after a while; the buffer stays.
                    *stream = None;
                    break;
                }
            }
        }
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(io::Error::other)?
    } else {
        "[::]:0".parse().map_err(io::Error::other)?
    };
    let sock = UdpSocket::bind(local)?;
    sock.set_nonblocking(true)?;
    sock.connect(addr)?;
    Ok(sock)
}

/// Starts a non-blocking connect (std's connect would wait for the handshake).
fn tcp_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    ) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    // SAFETY: `fd` is a connected (or connecting) TCP socket we own; ownership moves.
    Ok(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })
}

/// A header field of RFC 5424: printable ASCII without spaces, `-` when empty.
fn header_field(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(48)
        .collect();
    if clean.is_empty() {
        "-".to_string()
    } else {
        clean
    }
}

/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG` with facility daemon (3).
pub fn format_rfc5424(
    severity: u8,
    at: SystemTime,
    hostname: &str,
    app: &str,
    procid: Option<u32>,
    message: &str,
) -> String {
    let mut msg = message;
    if msg.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg = &msg[..end];
    }
    format!(
        "<{}>1 {} {} {} {} - - {msg}",
        3 * 8 + u32::from(severity.min(7)),
        rfc3339(at),
        header_field(hostname),
        header_field(app),
        procid.map_or("-".to_string(), |p| p.to_string()),
    )
}

/// UTC time as `2026-11-23T17:47:00.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn formats_rfc5424() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_456_020_123);
        assert_eq!(rfc3339(at), "2026-11-23T17:47:00.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc5424(4, at, "berth 1", "berth-init", Some(1), "disk full"),
            "<28>1 2026-11-23T17:47:00.123Z berth1 berth-init 1 - - disk full"
        );
        assert_eq!(
            format_rfc5424(6, at, "", "web", None, "GET /"),
            "<30>1 2026-11-23T17:47:00.123Z - web - - - GET /"
        );
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    fn target(transport: SyslogTransport, addr: SocketAddr) -> SyslogTarget {
        SyslogTarget {
            transport,
            addr,
            units: true,
        }
    }

    #[test]
    fn udp_datagrams_carry_one_message_each_and_unit_lines() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut f = Forwarder::new(
            &target(SyslogTransport::Udp, server.local_addr().unwrap()),
            "h",
        );
        f.send(3, "berth-init", Some(1), "oops");
        f.unit_output("web", b"one\ntw");
        f.unit_output("web", b"o\n");
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..3 {
            let n = server.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(got[0].starts_with("<27>1 ") && got[0].ends_with(" h berth-init 1 - - oops"));
        assert!(got[1].ends_with(" h web - - - one"), "{}", got[1]);
        assert!(got[2].ends_with(" h web - - - two"), "{}", got[2]);
        assert_eq!(f.stats().sent, 3);
    }

    #[test]
    fn tcp_frames_are_octet_counted_and_a_dead_server_costs_drops_not_time() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut f = Forwarder::new(&target(SyslogTransport::Tcp, addr), "h");
        f.send(6, "a", None, "first");
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The connect completes in the background; the next flush sends.
        let mut got = Vec::new();
        let start = Instant::now();
        while !got.ends_with(b"first") && start.elapsed() < Duration::from_secs(10) {
            f.flush();
            let mut buf = [0u8; 256];
            conn.set_nonblocking(true).unwrap();
            if let Ok(n) = conn.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = String::from_utf8(got).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.ends_with(" h a - - - first"), "{msg}");

        // Nobody listens: messages pile up to the bound, then are dropped and counted.
        drop(conn);
        drop(listener);
        let mut dead = Forwarder::new(&target(SyslogTransport::Tcp, addr), "h");
        for _ in 0..2000 {
            dead.send(6, "a", None, &"x".repeat(100));
        }
        let stats = dead.stats();
        assert!(stats.dropped > 0 && stats.sent > 0, "{stats:?}");
        assert!(stats.sent as usize * 100 <= TCP_BUFFER);
    }
}
