//! berth-init's own log, through the `log` facade: to /dev/kmsg when PID 1 (so early-boot
//! messages land in the kernel log and on the console), to stderr in host mode, and also to
//! syslog when PID 1 and a /dev/log socket exists (a syslog daemon may come up as a unit).
//! Nothing here blocks: the syslog socket is non-blocking and messages it cannot take are
//! dropped. With `[syslog]` in the machine config, messages (and unit output) also go to a
//! remote syslog server (see [`remote`]).

pub mod remote;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

pub use remote::ForwardStats;
use remote::Forwarder;

/// The remote syslog forwarder, once the machine config named one. PID 1 is single-threaded;
/// the lock only satisfies `static`.
static REMOTE: Mutex<Option<Forwarder>> = Mutex::new(None);

/// Starts forwarding berth-init's messages (and unit output, if the target says so).
pub fn forward_to(target: &crate::machine::SyslogTarget, hostname: &str) {
    if let Ok(mut remote) = REMOTE.lock() {
        *remote = Some(Forwarder::new(target, hostname));
    }
}

/// Hands a unit's output to the remote forwarder, if any.
pub fn forward_unit_output(unit: &str, bytes: &[u8]) {
    if let Ok(mut remote) = REMOTE.lock() {
        if let Some(f) = remote.as_mut() {
            f.unit_output(unit, bytes);
        }
    }
}

/// True when unit output goes to a remote syslog server.
pub fn forwards_unit_output() -> bool {
    REMOTE
        .lock()
        .ok()
        .is_some_and(|r| r.as_ref().is_some_and(Forwarder::forwards_units))
}

/// Sends what a TCP syslog server could not take yet (the main loop calls this each round).
pub fn flush_forwarding() {
    if let Ok(mut remote) = REMOTE.lock() {
        if let Some(f) = remote.as_mut() {
            f.flush();
        }
    }
}

pub fn forward_stats() -> ForwardStats {
    REMOTE
        .lock()
        .ok()
        .and_then(|r| r.as_ref().map(Forwarder::stats))
        .unwrap_or_default()
}

enum Sink {
    /// The kernel log device (/dev/kmsg); until it can be opened (before /dev is mounted)
    /// the console on stderr.
    Kmsg {
        path: &'static str,
        file: Mutex<Option<std::fs::File>>,
    },
    Stderr,
}

fn open_kmsg(path: &str) -> Option<std::fs::File> {
    OpenOptions::new().write(true).open(path).ok()
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
        let path = "/dev/kmsg";
        let sink = Sink::Kmsg {
            path,
            file: Mutex::new(open_kmsg(path)),
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

/// `text` with every control character written as an escape (`\n`, `\t`, `\x1b`, `\u{202e}`):
/// C0 and C1 controls, DEL, and the Unicode format characters that reorder or hide text (bidi
/// overrides and isolates, zero-width marks). Unit names, paths, errors and whatever else
/// comes from outside reach logs and terminals through this, so a name cannot forge a log
/// line or move a terminal's cursor. Text without such characters is returned as it is.
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    fn needs(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            || c == '\u{feff}'
    }
    if !text.chars().any(needs) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if needs(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
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
        let message = escape_control(message.trim_end());
        let message = clip(&message);
        let priority = kmsg_priority(record.level());
        match &self.sink {
            Sink::Kmsg { path, file } => {
                let mut kmsg = file.lock().ok();
                let file = kmsg.as_mut().and_then(|k| {
                    if k.is_none() {
                        **k = open_kmsg(path);
                    }
                    k.as_mut()
                });
                match file {
                    Some(f) => {
                        let _ =
                            f.write_all(format!("<{priority}>berth-init: {message}\n").as_bytes());
                    }
                    None => {
                        let _ = std::io::stderr()
                            .write_all(format!("berth-init: {message}\n").as_bytes());
                    }
                }
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
        // try_lock: a message logged while the forwarder itself is busy is not forwarded
        // (never a deadlock).
        if let Ok(mut remote) = REMOTE.try_lock() {
            if let Some(f) = remote.as_mut() {
                f.send(priority, "berth-init", Some(std::process::id()), message);
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
    fn control_characters_are_escaped() {
        assert!(matches!(
            escape_control("web-1 ünïcode"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_control("a\nberth-init: forged\x1b[31m\t\u{7f}\u{85}\u{202e}z"),
            "a\\nberth-init: forged\\x1b[31m\\t\\x7f\\x85\\u{202e}z"
        );
    }

    /// A kmsg stand-in in `dir` (the logger keeps its path for the life of the process).
    fn kmsg_path(dir: &std::path::Path) -> &'static str {
        Box::leak(dir.join("kmsg").display().to_string().into_boxed_str())
    }

    fn kmsg_logger(path: &'static str) -> Logger {
        Logger {
            sink: Sink::Kmsg {
                path,
                file: Mutex::new(open_kmsg(path)),
            },
            syslog: None,
            level: LevelFilter::Info,
        }
    }

    #[test]
    fn log_lines_cannot_be_forged() {
        let dir = crate::testutil::scratch_dir("kmsg-escape");
        let path = kmsg_path(&dir);
        std::fs::write(path, "").unwrap();
        let logger = kmsg_logger(path);
        let name = "evil\n<3>berth-init: unit web: started\x1b]0;owned\x07";
        logger.log(
            &Record::builder()
                .args(format_args!("unit {name}: started"))
                .level(Level::Info)
                .build(),
        );
        let written = std::fs::read_to_string(path).unwrap();
        assert_eq!(written.lines().count(), 1, "{written:?}");
        assert!(
            !written.contains('\x1b') && !written.contains('\x07'),
            "{written:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn priorities_and_clipping() {
        assert_eq!(kmsg_priority(Level::Error), 3);
        assert_eq!(kmsg_priority(Level::Info), 6);
        let long = "é".repeat(1000);
        assert!(clip(&long).len() <= MAX_LINE);
    }

    #[test]
    fn the_kernel_log_is_used_as_soon_as_it_exists() {
        let dir = crate::testutil::scratch_dir("kmsg");
        let path = kmsg_path(&dir);
        let logger = kmsg_logger(path);
        let record = |msg| {
            logger.log(
                &Record::builder()
                    .args(format_args!("{}", msg))
                    .level(Level::Warn)
                    .build(),
            )
        };
        // Before /dev is mounted: the console (stderr) only.
        record("too early");
        std::fs::write(path, "").unwrap();
        record("mounted");
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "<4>berth-init: mounted\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn syslog_messages_reach_a_datagram_socket() {
        let dir = crate::testutil::scratch_dir("syslog");
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
