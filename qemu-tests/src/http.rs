//! A tiny HTTP/1.0 client for the forwarded ports, and a static file server for the guest
//! to download from (loopback only).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{io_err, HarnessError, Result};

/// One GET of `path` on 127.0.0.1:`port`: (status, body).
pub fn get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    exchange(connect(port, timeout)?, path)
}

fn connect(port: u16, timeout: Duration) -> Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(io_err("connect"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(io_err("timeout"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(io_err("timeout"))?;
    Ok(s)
}

fn exchange(mut s: TcpStream, path: &str) -> Result<(u16, String)> {
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

/// A new attempt of [`wait_for_200`] starts this often while earlier ones still wait.
const ATTEMPT_EVERY: Duration = Duration::from_millis(50);
/// How long one attempt may wait for its answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts waiting at once, at most: as many as start within one attempt's timeout, so that
/// attempts stuck in a silence never hold back a new one (a smaller cap made the first 200
/// wait for the oldest attempt's timeout whenever the guest took longer than the cap's worth
/// of periods to get its address).
const MAX_IN_FLIGHT: usize = (ATTEMPT_TIMEOUT.as_millis() / ATTEMPT_EVERY.as_millis()) as usize;

/// Retries GET until it answers 200; bounded by `timeout`. Returns the body.
///
/// QEMU's forwarder accepts a connection before the guest can take it, and one forwarded
/// while the guest has no address yet stays unanswered until QEMU retransmits (seconds later).
/// Attempts one after another would each wait out such a silence, so the first 200 would come
/// up to an attempt's timeout after the guest can answer. Instead a new attempt starts every
/// [`ATTEMPT_EVERY`] while earlier ones wait (at most [`MAX_IN_FLIGHT`]), the first 200 wins,
/// and the attempts still waiting are shut down then: the 200 is seen within one period of
/// the guest's readiness, and the guest gets no late burst of requests.
pub fn wait_for_200(port: u16, path: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    // The connections of the attempts still waiting, by attempt number.
    let waiting: Arc<Mutex<Vec<(u64, TcpStream)>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut in_flight = 0usize;
    let mut attempts = 0u64;
    let mut last = String::from("no attempt");
    let answer = loop {
        let now = Instant::now();
        if now >= deadline {
            break None;
        }
        if in_flight < MAX_IN_FLIGHT {
            attempts += 1;
            let (tx, waiting, path, id) = (tx.clone(), waiting.clone(), path.to_string(), attempts);
            let spawned = std::thread::Builder::new().spawn(move || {
                let result = connect(port, ATTEMPT_TIMEOUT).and_then(|s| {
                    if let (Ok(copy), Ok(mut list)) = (s.try_clone(), waiting.lock()) {
                        list.push((id, copy));
                    }
                    let result = exchange(s, &path);
                    if let Ok(mut list) = waiting.lock() {
                        list.retain(|(other, _)| *other != id);
                    }
                    result
                });
                let _ = tx.send(result);
            });
            match spawned {
                Ok(_) => in_flight += 1,
                Err(e) => last = format!("cannot start an attempt: {e}"),
            }
        }
        // Every answer that comes within this period, then the next attempt.
        let period_end = (now + ATTEMPT_EVERY).min(deadline);
        let mut won = None;
        while let Ok(result) = rx.recv_timeout(period_end.saturating_duration_since(Instant::now()))
        {
            in_flight -= 1;
            match result {
                Ok((200, body)) => {
                    won = Some(body);
                    break;
                }
                Ok((status, _)) => last = format!("status {status}"),
                Err(e) => last = e.to_string(),
            }
        }
        if won.is_some() {
            break won;
        }
    };
    if let Ok(list) = waiting.lock() {
        for (_, s) in list.iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
    answer.ok_or_else(|| HarnessError::Timeout {
        what: format!("HTTP 200 from 127.0.0.1:{port}{path}"),
        waited: timeout,
        tail: last,
    })
}

/// Serves the files of one directory over HTTP/1.1 (`GET`, `HEAD`; one request per
/// connection) on 127.0.0.1 with a kernel-chosen port, until dropped.
pub struct FileServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

/// How long a connection may stay silent before the server gives it up.
const IDLE: Duration = Duration::from_secs(60);

impl FileServer {
    pub fn start(root: &Path) -> Result<FileServer> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("bind 127.0.0.1:0"))?;
        let port = listener.local_addr().map_err(io_err("local_addr"))?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let root = root.to_path_buf();
        let (stop2, served2) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (root, served) = (root.clone(), served2.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &root, &served);
                });
            }
        });
        Ok(FileServer {
            port,
            stop,
            served,
            thread: Some(thread),
        })
    }

    /// The request lines answered with 200 so far (`GET /x.bundle`).
    pub fn served(&self) -> Vec<String> {
        self.served.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn serve_one(conn: TcpStream, root: &Path, served: &Mutex<Vec<String>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    conn.set_write_timeout(Some(IDLE))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The head ends with an empty line; its fields do not matter here.
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    let mut conn = conn;
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let file: Option<PathBuf> = target
        .strip_prefix('/')
        .filter(|name| !name.is_empty() && !name.contains(['/', '\\']) && *name != "..")
        .map(|name| root.join(name))
        .filter(|p| p.is_file());
    let Some(path) = file.filter(|_| method == "GET" || method == "HEAD") else {
        return conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let mut f = std::fs::File::open(&path)?;
    let len = f.metadata()?.len();
    conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    if method == "GET" {
        std::io::copy(&mut f, &mut conn)?;
    }
    conn.flush()?;
    if let Ok(mut s) = served.lock() {
        s.push(format!("{method} {target}"));
    }
    Ok(())
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            Duration::from_secs(5),
        );
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_server_serves_its_directory_only() {
        let dir = std::env::temp_dir().join(format!("berth-fileserver-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.bin"), b"bundle bytes").unwrap();
        std::fs::write(dir.join("sub/b.bin"), b"hidden").unwrap();
        let server = FileServer::start(&dir).unwrap();
        let t = Duration::from_secs(10);
        assert_eq!(
            get(server.port, "/a.bin", t).unwrap(),
            (200, "bundle bytes".to_string())
        );
        assert_eq!(get(server.port, "/missing", t).unwrap().0, 404);
        assert_eq!(get(server.port, "/sub/b.bin", t).unwrap().0, 404);
        assert_eq!(get(server.port, "/../etc/passwd", t).unwrap().0, 404);
        assert_eq!(server.served(), vec!["GET /a.bin".to_string()]);
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A server that accepts every connection but leaves those accepted before `ready` without
    /// an answer (as QEMU's forwarder does while the guest has no address yet) and answers
    /// 200 to later ones. Runs until `stop` is set, at most 30 s.
    fn silent_until(ready: Instant, stop: Arc<AtomicBool>) -> (u16, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let mut silent = Vec::new();
            let end = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                match listener.accept() {
                    Ok((s, _)) if Instant::now() < ready => silent.push(s),
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let mut line = String::new();
                        let _ = BufReader::new(&s).read_line(&mut line);
                        let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nup");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        (port, handle)
    }

    #[test]
    fn a_silence_longer_than_the_first_attempts_does_not_delay_the_answer() {
        // Ready 0.6 s after the first attempt: later than the attempts of 8 periods (the
        // earlier cap), and the whole wait is shorter than one attempt's timeout, so only
        // attempts started after the silence can answer in time.
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let (port, server) = silent_until(start + Duration::from_millis(600), stop.clone());
        let result = wait_for_200(port, "/", Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        assert_eq!(result.unwrap(), "up");
    }
}
