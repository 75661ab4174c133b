//! A minimal QMP client: enough to press the ACPI power button and ask QEMU to quit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{HarnessError, Result};

/// Events QEMU may send before its greeting; more means it is not QMP that answers.
const MAX_EARLY_EVENTS: usize = 16;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (QEMU creates the socket shortly after it starts) and negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(HarnessError::Qmp(format!(
                        "connect {}: {e}",
                        path.display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let err = |e: std::io::Error| HarnessError::Qmp(e.to_string());
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(err)?;
        let writer = stream.try_clone().map_err(err)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        // QEMU has sent an event (RESUME, as the machine starts) to a client it had just
        // accepted before greeting it, on a loaded host. Events before the greeting are
        // skipped; anything else first is not QMP.
        for _ in 0..MAX_EARLY_EVENTS {
            let message = qmp.read_message()?;
            if message.get("QMP").is_some() {
                qmp.execute("qmp_capabilities")?;
                return Ok(qmp);
            }
            if message.get("event").is_none() {
                return Err(HarnessError::Qmp(format!("unexpected greeting {message}")));
            }
        }
        Err(HarnessError::Qmp(format!(
            "no greeting within {MAX_EARLY_EVENTS} messages"
        )))
    }

    fn read_message(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| HarnessError::Qmp(format!("read: {e}")))?;
        serde_json::from_str(&line).map_err(|e| HarnessError::Qmp(format!("{e}: {line:?}")))
    }

    /// Runs a command and returns its `return` value (events in between are skipped).
    pub fn execute(&mut self, command: &str) -> Result<serde_json::Value> {
        let msg = serde_json::json!({ "execute": command }).to_string();
        self.writer
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| HarnessError::Qmp(format!("write: {e}")))?;
        for _ in 0..64 {
            let reply = self.read_message()?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(HarnessError::Qmp(format!("{command}: {e}")));
            }
        }
        Err(HarnessError::Qmp(format!("{command}: no reply")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::thread::JoinHandle;

    const GREETING: &str = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";
    const RESUME: &str = "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1}}\n";

    /// A QMP server on a scratch socket that writes `first` to its one client, then answers
    /// each command line with an empty return until the client goes.
    fn serve(name: &str, first: String) -> (PathBuf, JoinHandle<()>) {
        let fx = crate::Fixture::new(name).unwrap();
        let path = fx.path("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            // The scratch directory goes when the server does.
            let _fx = fx;
            let (mut conn, _) = listener.accept().unwrap();
            // The client may leave without reading (a refused greeting).
            let _ = conn.write_all(first.as_bytes());
            let lines = BufReader::new(conn.try_clone().unwrap()).lines();
            for _ in lines.map_while(|l| l.ok()) {
                if conn.write_all(b"{\"return\": {}}\n").is_err() {
                    break;
                }
            }
        });
        (path, server)
    }

    #[test]
    fn events_before_the_greeting_are_skipped() {
        let (path, server) = serve("early-event", format!("{RESUME}{RESUME}{GREETING}"));
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.execute("query-status").unwrap(), serde_json::json!({}));
        drop(qmp);
        server.join().unwrap();
    }

    #[test]
    fn a_peer_that_never_greets_is_refused() {
        let (path, server) = serve("no-greeting", "{\"return\": {}}\n".to_string());
        let err = Qmp::connect(&path, Duration::from_secs(5)).err().unwrap();
        assert!(err.to_string().contains("unexpected greeting"), "{err}");
        server.join().unwrap();

        let (path, server) = serve("only-events", RESUME.repeat(MAX_EARLY_EVENTS + 1));
        let err = Qmp::connect(&path, Duration::from_secs(5)).err().unwrap();
        assert!(err.to_string().contains("no greeting"), "{err}");
        server.join().unwrap();
    }
}
