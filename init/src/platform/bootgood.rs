//! Marking the running slot's boot good (`X_NEW=0` in the boot state on the ESP), which
//! berth-init does once every critical unit is healthy. Until then a newly installed slot uses
//! up its boot attempts: after a panic, a PID 1 crash or a watchdog reset on its last attempt,
//! GRUB retires it and boots the other slot. A slot already good is left alone (no write).

use std::fs::File;
use std::path::Path;

use berth_formats::grubenv::{BootState, GrubEnvError, Slot, SlotState, ENV_FILES};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::MsFlags;

use crate::disk::blockdev::BlockDevices;
use crate::update::failure::{self, Failure};

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
    #[error("the boot state is being rewritten by an update; trying again later")]
    Busy,
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

/// Marks the slot good in the boot state of the ESP, mounted briefly on
/// `mountpoint` and synced before it is unmounted.
pub fn mark(blocks: &BlockDevices, slot: Slot, mountpoint: &Path) -> Result<Marked, BootGoodError> {
    with_esp(blocks, mountpoint, |esp| mark_in(&esp.join("grub"), slot))
}

/// Runs `f` with this machine's ESP mounted (synchronously) on `mountpoint`; syncs and
/// unmounts it afterwards.
pub fn with_esp<T>(
    blocks: &BlockDevices,
    mountpoint: &Path,
    f: impl FnOnce(&Path) -> Result<T, BootGoodError>,
) -> Result<T, BootGoodError> {
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
    let result = f(mountpoint);
    nix::unistd::sync();
    let _ = nix::mount::umount(mountpoint);
    result
}

/// Serialises read-modify-write of the boot state in `dir` between PID 1 (marking a boot
/// good) and an update child: an exclusive `flock` on the first copy, held until dropped.
/// With `wait` false a lock held elsewhere is [`BootGoodError::Busy`] at once (PID 1 never
/// waits for it; an update holds it only while it rewrites grubenv).
pub fn lock_boot_state(dir: &Path, wait: bool) -> Result<Flock<File>, BootGoodError> {
    let path = dir.join(ENV_FILES[0]);
    let file = File::open(&path).map_err(|source| BootGoodError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    Flock::lock(file, arg).map_err(|(_, errno)| match errno {
        Errno::EWOULDBLOCK => BootGoodError::Busy,
        source => BootGoodError::Io {
            path: path.display().to_string(),
            source: source.into(),
        },
    })
}

/// Whether this boot is an attempt of a new slot (GRUB adds `berth.trying=1`): until it is
/// marked good, a fatal boot error or unhealthy critical units end it with a reboot.
pub fn trying_boot(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "berth.trying=1")
}

/// What retiring found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    /// The slot will not boot again; the other one boots next.
    Now,
    /// The slot was not new (already good, or retired): nothing changed.
    NotNew,
}

/// Gives up the running new `slot` in the boot state of the ESP mounted at `esp`: records
/// `failure` beside its kernel, then retires it (the failure record first, so a power cut in
/// between leaves a slot that is still counted down by GRUB, never an unexplained retirement).
pub fn retire_in(esp: &Path, slot: Slot, failure: &Failure) -> Result<Retired, BootGoodError> {
    let dir = esp.join("grub");
    let _lock = lock_boot_state(&dir, false)?;
    let mut state = BootState::load(&dir)?;
    if !state.is_trying(slot) {
        return Ok(Retired::NotNew);
    }
    record_in(esp, slot, failure)?;
    state.disable(slot);
    state.store(&dir)?;
    Ok(Retired::Now)
}

/// Records why an attempt of the running new `slot` ended (a fatal boot error), without
/// retiring it: GRUB counts the attempt, and the record explains a retirement if it was the
/// last.
pub fn record_in(esp: &Path, slot: Slot, failure: &Failure) -> Result<(), BootGoodError> {
    let slot_dir = esp.join(slot.name());
    failure::write(&slot_dir, failure).map_err(|source| BootGoodError::Io {
        path: slot_dir.join(failure::FAILURE_FILE).display().to_string(),
        source,
    })
}

/// Marks `slot` good in the boot state kept in `dir` (the ESP's `/grub`).
pub fn mark_in(dir: &Path, slot: Slot) -> Result<Marked, BootGoodError> {
    let _lock = lock_boot_state(dir, false)?;
    let mut state = BootState::load(dir)?;
    if state.state(slot) == SlotState::Good {
        return Ok(Marked::Already);
    }
    state.mark_good(slot);
    state.store(dir)?;
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
    fn a_trying_boot_is_flagged_by_grub() {
        assert!(trying_boot("ro berth.slot=B berth.trying=1"));
        assert!(!trying_boot("ro berth.slot=B"));
        assert!(!trying_boot("berth.trying=0"));
    }

    #[test]
    fn retiring_a_new_slot_records_why_and_boots_the_other() {
        let esp = crate::testutil::scratch_dir("bootgood-retire");
        let dir = esp.join("grub");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(esp.join("B")).unwrap();
        let mut s = BootState::fresh();
        s.install(Slot::B, berth_formats::grubenv::DEFAULT_TRIES);
        assert_eq!(s.grub_boot(), Some(Slot::B));
        s.store(&dir).unwrap();
        let why = Failure {
            version: "0.2.0".into(),
            reason: "critical units not healthy within 5m: web".into(),
        };
        assert_eq!(retire_in(&esp, Slot::B, &why).unwrap(), Retired::Now);
        let after = BootState::load(&dir).unwrap();
        assert_eq!(after.state(Slot::B), SlotState::Empty);
        assert_eq!(after.next_boot(), Some(Slot::A));
        assert_eq!(failure::read(&esp.join("B")), Some(why.clone()));
        // A good slot is never retired by its own health check.
        assert_eq!(retire_in(&esp, Slot::A, &why).unwrap(), Retired::NotNew);
        assert_eq!(
            BootState::load(&dir).unwrap().state(Slot::A),
            SlotState::Good
        );
        std::fs::remove_dir_all(&esp).unwrap();
    }

    #[test]
    fn marking_a_new_slot_good_once() {
        let dir = std::env::temp_dir().join(format!("berth-bootgood-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = BootState::fresh();
        s.install(Slot::B, berth_formats::grubenv::DEFAULT_TRIES);
        s.grub_boot();
        s.store(&dir).unwrap();
        // While an update holds the boot state, PID 1 does not wait: it tries again later.
        let held = lock_boot_state(&dir, true).unwrap();
        assert!(matches!(mark_in(&dir, Slot::B), Err(BootGoodError::Busy)));
        drop(held);
        assert_eq!(mark_in(&dir, Slot::B).unwrap(), Marked::Now);
        assert_eq!(mark_in(&dir, Slot::B).unwrap(), Marked::Already);
        let after = BootState::load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(after.state(Slot::B), SlotState::Good);
        assert_eq!(after.next_boot(), Some(Slot::B));
    }
}
