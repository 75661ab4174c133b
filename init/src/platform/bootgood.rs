//! Marking the running slot's boot good (`X_TRY=0` in grubenv on the ESP), which berth-init
//! does once every critical unit is healthy. Until then GRUB treats the boot as failed: after a
//! panic, a PID 1 crash or a watchdog reset, the next boot falls back to the other slot.

use std::path::Path;

use berth_image::grubenv::{BootState, GrubEnvError, Slot};
use nix::mount::MsFlags;

use crate::disk::blockdev::BlockDevices;

/// GPT name of the ESP.
pub const ESP_PARTITION: &str = "berth-boot";

#[derive(Debug, thiserror::Error)]
pub enum BootGoodError {
    #[error("no partition named {ESP_PARTITION:?}")]
    NoEsp,
    #[error("mount {device} on {target}: {source}")]
    Mount {
        device: String,
        target: String,
        source: nix::errno::Errno,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    GrubEnv(#[from] GrubEnvError),
}

/// The slot GRUB booted, from `berth.slot=` on the kernel command line.
pub fn booted_slot(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("berth.slot="))
        .and_then(Slot::parse)
}

/// The slot this machine booted, when it booted from a Berth disk (GRUB put `berth.slot=` on
/// the command line). `None` for PID 1 elsewhere, e.g. in a test's namespaces: then nothing
/// touches disks, the watchdog or grubenv.
pub fn booted_slot_of_this_machine() -> Option<Slot> {
    booted_slot(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

/// What marking found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// TRY was cleared.
    Now,
    /// The slot was already marked good (e.g. a rescue boot, or marked earlier).
    Already,
}

/// Sets the slot's TRY=0 (and OK=1) in the grubenv of the ESP, mounted briefly on
/// `mountpoint` and synced before it is unmounted.
pub fn mark(blocks: &BlockDevices, slot: Slot, mountpoint: &Path) -> Result<Marked, BootGoodError> {
    let part = blocks
        .partition_named(ESP_PARTITION)
        .ok_or(BootGoodError::NoEsp)?;
    let device = blocks.dev_path(&part.name);
    std::fs::create_dir_all(mountpoint).map_err(|source| BootGoodError::Io {
        path: mountpoint.display().to_string(),
        source,
    })?;
    nix::mount::mount(
        Some(&device),
        mountpoint,
        Some("vfat"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_SYNCHRONOUS,
        None::<&str>,
    )
    .map_err(|source| BootGoodError::Mount {
        device: device.display().to_string(),
        target: mountpoint.display().to_string(),
        source,
    })?;
    let result = mark_in(&mountpoint.join("grub/grubenv"), slot);
    nix::unistd::sync();
    let _ = nix::mount::umount(mountpoint);
    result
}

/// Marks `slot` good in the grubenv file at `path`.
pub fn mark_in(path: &Path, slot: Slot) -> Result<Marked, BootGoodError> {
    let mut state = BootState::load(path)?;
    if state.is_ok(slot) && !state.is_trying(slot) {
        return Ok(Marked::Already);
    }
    state.mark_good(slot);
    state.store(path)?;
    Ok(Marked::Now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_comes_from_the_kernel_command_line() {
        assert_eq!(booted_slot("ro berth.slot=B quiet"), Some(Slot::B));
        assert_eq!(booted_slot("ro quiet"), None);
        assert_eq!(booted_slot("berth.slot=C"), None);
    }

    #[test]
    fn marking_clears_try_once() {
        let path = std::env::temp_dir().join(format!("berth-bootgood-{}", std::process::id()));
        let mut s = BootState::fresh();
        s.begin_try(Slot::A);
        s.store(&path).unwrap();
        assert_eq!(mark_in(&path, Slot::A).unwrap(), Marked::Now);
        assert_eq!(mark_in(&path, Slot::A).unwrap(), Marked::Already);
        let after = BootState::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!after.is_trying(Slot::A));
        assert_eq!(after.next_boot(), Some(Slot::A));
    }
}
