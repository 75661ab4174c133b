//! Harness for booting Berth images under QEMU (TCG) and asserting on what they do.
//!
//! A [`Vm`] boots a private copy of the image with SeaBIOS or OVMF (with a software TPM), its
//! serial console on a pipe, QMP on a unix socket for ACPI power events, and user-mode
//! networking restricted to the guest (nothing leaves the host) with host ports forwarded from
//! 127.0.0.1. Dropping the `Vm` always kills QEMU and removes its directory (kept, with the
//! console transcript, when the test failed).

pub mod console;
pub mod disk;
pub mod fixture;
pub mod guest;
pub mod http;
pub mod pki;
pub mod qmp;
pub mod registry;
pub mod tpm;
pub mod update;
pub mod vm;

pub use fixture::{disk_or_skip, image_or_skip, node_image_or_skip, Fixture};
pub use vm::{Firmware, GuestForward, Vm, VmConfig};

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {waited:?} waiting for {what}; console tail:\n{tail}")]
    Timeout {
        what: String,
        waited: Duration,
        tail: String,
    },
    #[error("QEMU exited early ({status}); console tail:\n{tail}")]
    Exited { status: String, tail: String },
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T> = std::result::Result<T, HarnessError>;

/// The median of the benchmarks' samples (the upper one of an even count; 0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs a host tool to completion: its stdout, or an error naming the command with what it
/// printed when it could not start or did not succeed.
pub(crate) fn run_tool(cmd: &mut std::process::Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .map_err(|e| HarnessError::Setup(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(HarnessError::Setup(format!(
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}
