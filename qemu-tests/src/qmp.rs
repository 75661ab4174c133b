//! A minimal QMP client: enough to press the ACPI power button and ask QEMU to quit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{HarnessError, Result};

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
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(HarnessError::Qmp(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
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
