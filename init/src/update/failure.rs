//! Why a new slot was given up: `SLOT/failure.json` on the ESP, written by berth-init when it
//! retires the slot it runs (critical units unhealthy past the deadline) or when a fatal boot
//! error ends an attempt, and read by the update status of the slot that took over. Every
//! attempt first records that PID 1 started; when GRUB retired a slot that left no record
//! at all, its attempts ended before that (the kernel or the root failed).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const FAILURE_FILE: &str = "failure.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub version: String,
    pub reason: String,
}

/// What is known when a retired slot left no record.
pub fn unrecorded(version: &str) -> Failure {
    Failure {
        version: version.to_string(),
        reason: "its boot attempts ran out before Berth's PID 1 started (a kernel panic, a root \
                 that failed verification, or an init that could not run)"
            .into(),
    }
}

/// The record in an ESP slot directory, if there is a readable one.
pub fn read(slot_dir: &Path) -> Option<Failure> {
    let text = std::fs::read_to_string(slot_dir.join(FAILURE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the record (new file, synced, renamed: a torn record is never read).
pub fn write(slot_dir: &Path, failure: &Failure) -> std::io::Result<()> {
    let json = serde_json::to_vec(failure).map_err(std::io::Error::other)?;
    let tmp = slot_dir.join("failure.json.new");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, slot_dir.join(FAILURE_FILE))?;
    std::fs::File::open(slot_dir)?.sync_all()
}

/// Forgets the record (a new system is being written into the slot).
pub fn clear(slot_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(slot_dir.join(FAILURE_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_clear() {
        let dir = crate::testutil::scratch_dir("failure-record");
        assert_eq!(read(&dir), None);
        let f = Failure {
            version: "0.2.0".into(),
            reason: "critical units not healthy within 5m: web".into(),
        };
        write(&dir, &f).unwrap();
        assert_eq!(read(&dir), Some(f));
        clear(&dir).unwrap();
        clear(&dir).unwrap();
        assert_eq!(read(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
