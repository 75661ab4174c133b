//! berth-init's own log, through the `log` facade: to /dev/kmsg when PID 1 (so early-boot
//! messages land in the kernel log and on the console), to stderr in host mode, and also to
//! syslog when PID 1 and a /dev/log socket exists (a syslog daemon may come up as a unit).
//! Nothing here blocks: the syslog socket is non-blocking and messages it cannot take are
//! dropped.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

enum Sink {
    Kmsg(std::fs::File),
    Stderr,
}

struct Syslog {
    socket: Option<UnixDatagram>,
    last_try: Option<Instant>,
}

pub struct Logger {
    sink: Sink,
    syslog: Option<Mutex<Syslog>>,
    level: LevelFilter,
}

/// How often a missing /dev/log is looked for again.
const SYSLOG_RETRY: Duration = Duration::from_secs(10);
/// Longest message line written (the kernel cuts /dev/kmsg records near 1 KiB).
const MAX_LINE: usize = 900;

impl Logger {
    /// PID 1: kmsg (falling back to stderr, i.e. the console) plus syslog.
    pub fn for_pid1() -> Logger {
        let sink = match OpenOptions::new().write(true).open("/dev/kmsg") {
            Ok(f) => Sink::Kmsg(f),
            Err(_) => Sink::Stderr,
        };
        let syslog = Some(Mutex::new(Syslog {
            socket: None,
            last_try: None,
        }));
        Logger {
            sink,
            syslog,
            level: LevelFilter::Info,
        }
    }

    pub fn for_host() -> Logger {
        Logger {
            sink: Sink::Stderr,
            syslog: None,
            level: LevelFilter::Info,
        }
    }

    pub fn with_level(mut self, level: LevelFilter) -> Logger {
        self.level = level;
        self
    }

    /// Installs the logger; later calls keep the first one.
    pub fn install(self) {
        let level = self.level;
        if log::set_boxed_logger(Box::new(self)).is_ok() {
            log::set_max_level(level);
        }
    }
}

/// Kernel log level of a record (`<3>` error … `<7>` debug).
fn kmsg_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

fn clip(text: &str) -> &str {
    if text.len() <= MAX_LINE {
        return text;
    }
    let mut end = MAX_LINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let message = clip(message.trim_end());
        let priority = kmsg_priority(record.level());
        match &self.sink {
            Sink::Kmsg(f) => {
                let mut f = f;
                let _ = f.write_all(format!("<{priority}>berth-init: {message}\n").as_bytes());
            }
            Sink::Stderr => {
                let _ = std::io::stderr().write_all(format!("berth-init: {message}\n").as_bytes());
            }
        }
        if let Some(syslog) = &self.syslog {
            if let Ok(mut s) = syslog.lock() {
                s.send(priority, message);
            }
        }
    }

    fn flush(&self) {}
}

impl Syslog {
    fn send(&mut self, priority: u8, message: &str) {
        if self.socket.is_none() {
            let due = self.last_try.is_none_or(|t| t.elapsed() >= SYSLOG_RETRY);
            if !due {
                return;
            }
            self.last_try = Some(Instant::now());
            let Ok(sock) = UnixDatagram::unbound() else {
                return;
            };
            if sock.set_nonblocking(true).is_err() || sock.connect("/dev/log").is_err() {
                return;
            }
            self.socket = Some(sock);
        }
        // Facility daemon (3): PRI = 3 * 8 + severity.
        let line = format!("<{}>berth-init: {message}", 24 + u32::from(priority));
        if let Some(sock) = &self.socket {
            match sock.send(line.as_bytes()) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => self.socket = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_and_clipping() {
        assert_eq!(kmsg_priority(Level::Error), 3);
        assert_eq!(kmsg_priority(Level::Info), 6);
        let long = "é".repeat(1000);
        assert!(clip(&long).len() <= MAX_LINE);
    }

    #[test]
    fn syslog_messages_reach_a_datagram_socket() {
        let dir = std::env::temp_dir().join(format!("berth-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let server = UnixDatagram::bind(&path).unwrap();
        let sock = UnixDatagram::unbound().unwrap();
        sock.connect(&path).unwrap();
        let mut s = Syslog {
            socket: Some(sock),
            last_try: None,
        };
        s.send(4, "hello");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"<28>berth-init: hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
