//! A tiny HTTP/1.1 server on 127.0.0.1 for tests: a token server, an auth-demanding proxy in
//! front of the real registry, and registries that misbehave on purpose. One thread per
//! connection, `Connection: close`, stopped when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path with query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send these bytes verbatim instead of a well-formed response.
    pub raw: Option<Vec<u8>>,
    /// Announce the full body length but close the connection after this many body bytes.
    pub cut_after: Option<usize>,
    /// Send the body this many bytes at a time, with this pause in between (a registry that
    /// drips its answer). Stops when the client goes away.
    pub drip: Option<(usize, Duration)>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            body: body.into(),
            ..Default::default()
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let handler = handler.clone();
                std::thread::spawn(move || serve(stream, &*handler));
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, handler: &Handler) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let request = Request {
        method,
        path,
        headers,
    };
    let response = handler(&request);
    let mut out = stream;
    if let Some(raw) = response.raw {
        let _ = out.write_all(&raw);
        return;
    }
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", response.status);
    for (k, v) in &response.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", response.body.len()));
    let _ = out.write_all(head.as_bytes());
    let body = match response.cut_after {
        Some(n) => &response.body[..n.min(response.body.len())],
        None => &response.body[..],
    };
    if request.method != "HEAD" {
        match response.drip {
            Some((chunk, pause)) => {
                for piece in body.chunks(chunk.max(1)) {
                    if out.write_all(piece).and_then(|()| out.flush()).is_err() {
                        return;
                    }
                    std::thread::sleep(pause);
                }
            }
            None => {
                let _ = out.write_all(body);
            }
        }
    }
    let _ = out.flush();
    // Drain anything the client still sends, then close.
    let _ = out.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 512];
    let _ = reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(200)));
    let _ = reader.read(&mut sink);
}

/// Forwards a GET to `upstream` (`127.0.0.1:PORT`, plain HTTP) and returns its answer with the
/// headers a registry client needs.
pub fn forward(upstream: &str, request: &Request) -> Response {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent();
    let mut r = agent.get(format!("http://{upstream}{}", request.path));
    for name in ["Accept", "Range"] {
        if let Some(v) = request.header(name) {
            r = r.header(name, v);
        }
    }
    let resp = r.call().unwrap();
    let status = resp.status().as_u16();
    let mut out = Response::new(status, Vec::new());
    for name in [
        "Content-Type",
        "Docker-Content-Digest",
        "Content-Range",
        "Location",
    ] {
        if let Some(v) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
            out = out.header(name, v);
        }
    }
    out.body = resp
        .into_body()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    out
}
