//! A real OCI registry for the guest to pull from: Debian's `docker-registry` on 127.0.0.1
//! with a kernel-chosen port and its storage in the test's directory; killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{io_err, HarnessError, Result};

pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub port: u16,
}

impl Registry {
    /// Starts the registry with its configuration and blobs under `dir`.
    pub fn start(dir: &Path) -> Result<Registry> {
        std::fs::create_dir_all(dir).map_err(io_err(dir.display().to_string()))?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  secret: berth-test\n",
                dir.join("data").display()
            ),
        )
        .map_err(io_err("write registry config"))?;
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(
                "docker-registry (scripts/install-deps.sh installs it)",
            ))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HarnessError::Setup(
                "docker-registry: no stderr pipe".into(),
            ));
        };
        // It logs where it listens; the reader drains its log until it exits.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("listening on ") {
                    let addr: String = line[i + "listening on ".len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
                        .collect();
                    let _ = tx.send(addr);
                }
            }
        });
        let mut registry = Registry {
            child,
            addr: String::new(),
            port: 0,
        };
        let addr = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            HarnessError::Setup("docker-registry did not say where it listens".into())
        })?;
        registry.port = addr
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| HarnessError::Setup(format!("docker-registry listens on {addr}")))?;
        registry.addr = addr;
        Ok(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
