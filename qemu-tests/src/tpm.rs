//! A software TPM 2.0 (swtpm) for UEFI machines. Cloud VMs (vTPM) and current bare metal
//! have one; OVMF, finding none, polls for it until its probe times out (~1.5 s under TCG).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{io_err, HarnessError, Result};

/// How long swtpm may take to create its socket.
const READY: Duration = Duration::from_secs(5);

pub struct SoftTpm {
    child: Child,
    socket: PathBuf,
}

impl SoftTpm {
    /// Starts swtpm with its state under `dir`; it ends when QEMU disconnects, or on drop.
    pub fn start(dir: &Path) -> Result<SoftTpm> {
        let state = dir.join("tpm");
        std::fs::create_dir_all(&state).map_err(io_err("tpm state directory"))?;
        let socket = dir.join("tpm.sock");
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(dir.join("swtpm.log")).map_err(io_err("swtpm log"))?;
        let mut child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--terminate", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(io_err("swtpm log"))?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(io_err("spawn swtpm"))?;
        let deadline = Instant::now() + READY;
        while !socket.exists() {
            if let Some(status) = child.try_wait().map_err(io_err("wait for swtpm"))? {
                return Err(HarnessError::Setup(format!(
                    "swtpm exited with {status} (see {})",
                    dir.join("swtpm.log").display()
                )));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Setup(format!(
                    "swtpm made no socket at {} within {READY:?}",
                    socket.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(SoftTpm { child, socket })
    }

    /// QEMU arguments attaching this TPM through a CRB interface.
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=tpmchr,path={}", self.socket.display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=tpmchr".into(),
            "-device".into(),
            "tpm-crb,tpmdev=tpm0".into(),
        ]
    }
}

impl Drop for SoftTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
