//! A tiny HTTP/1.0 client for the forwarded ports (loopback only).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::{io_err, HarnessError, Result};

/// One GET of `path` on 127.0.0.1:`port`: (status, body).
pub fn get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io_err("connect"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(io_err("timeout"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(io_err("timeout"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(io_err("send request"))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).map_err(io_err("read reply"))?;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HarnessError::Setup(format!("not an HTTP reply: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Retries GET until it answers 200 (QEMU's forwarder accepts connections before the guest
/// listens, so early attempts fail); bounded by `timeout`. Returns the body.
pub fn wait_for_200(port: u16, path: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        // Short attempts: before the guest listens, a forwarded connection may hang unanswered.
        match get(port, path, Duration::from_secs(1)) {
            Ok((200, body)) => return Ok(body),
            Ok((status, _)) => last = format!("status {status}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(HarnessError::Timeout {
        what: format!("HTTP 200 from 127.0.0.1:{port}{path}"),
        waited: timeout,
        tail: last,
    })
}
