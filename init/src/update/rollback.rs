//! Rolling back (`POST /v1/update/rollback`): the slot that is not running boots next, when
//! it holds a good system. A short write of the boot state, under the same lock as an
//! update's rewrites of it, so PID 1 does it in its loop like boot marking.

use std::path::Path;

use berth_formats::grubenv::{BootState, GrubEnvError, Slot};
use nix::mount::MsFlags;
use serde::Serialize;

use super::machine::{mount_esp, MachineError};
use super::status::state_name;
use crate::disk::blockdev::BlockDevices;
use crate::platform::bootgood::{booted_slot_of_this_machine, lock_boot_state, BootGoodError};

/// Where the ESP is mounted while a rollback rewrites the boot state.
const ROLLBACK_MOUNT: &str = "/run/berth/rollback-esp";

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("slot {slot} is {state}: {why}; only a good slot can be rolled back to")]
    NotGood {
        slot: Slot,
        /// `empty`, `retired` or `new`.
        state: &'static str,
        why: &'static str,
    },
    #[error("the boot state is being rewritten by an update; try again when it has finished")]
    Busy,
    #[error("boot state {path}: {source}")]
    BootState {
        path: String,
        #[source]
        source: GrubEnvError,
    },
    #[error("boot state lock: {0}")]
    Lock(BootGoodError),
    #[error(transparent)]
    Machine(#[from] MachineError),
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolledBack {
    /// The slot that boots next.
    pub next: &'static str,
    /// False when it booted next already (nothing was written).
    pub changed: bool,
}

/// Rolls back on an ESP mounted at `esp` (its root: `grub/`, `A/`, `B/`) of a machine that
/// booted `booted`. Never waits for the lock: an update holding it makes this `Busy`.
pub fn rollback_in(esp: &Path, booted: Slot) -> Result<RolledBack, RollbackError> {
    let grub = esp.join("grub");
    let _lock = lock_boot_state(&grub, false).map_err(|e| match e {
        BootGoodError::Busy => RollbackError::Busy,
        other => RollbackError::Lock(other),
    })?;
    let state_err = |source| RollbackError::BootState {
        path: grub.display().to_string(),
        source,
    };
    let mut state = BootState::load(&grub).map_err(state_err)?;
    let target = booted.other();
    match state.roll_back_to(target) {
        Ok(changed) => {
            if changed {
                state.store(&grub).map_err(state_err)?;
            }
            Ok(RolledBack {
                next: target.name(),
                changed,
            })
        }
        Err(refused) => {
            let has_kernel = esp.join(target.name()).join("vmlinuz").is_file();
            let (name, _) = state_name(refused, has_kernel);
            let why = match name {
                "new" => "installed by an update and never marked good",
                "retired" => "retired after failed boots (or an update into it stopped)",
                _ => "it holds no system",
            };
            Err(RollbackError::NotGood {
                slot: target,
                state: name,
                why,
            })
        }
    }
}

/// Rolls back this machine: the ESP is mounted (synchronous writes) for the moment it takes,
/// synced and unmounted again.
pub fn rollback_this_machine() -> Result<RolledBack, RollbackError> {
    let booted = booted_slot_of_this_machine().ok_or(MachineError::NotBerth)?;
    let blocks = BlockDevices::system();
    mount_esp(&blocks, ROLLBACK_MOUNT, MsFlags::MS_SYNCHRONOUS)?;
    let result = rollback_in(Path::new(ROLLBACK_MOUNT), booted);
    nix::unistd::sync();
    let _ = nix::mount::umount(ROLLBACK_MOUNT);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_formats::grubenv::{SlotState, ENV_FILES};

    fn esp(tag: &str, state: &BootState) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-rollback-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("grub")).unwrap();
        for (name, block) in ENV_FILES.iter().zip(state.initial_blocks().unwrap()) {
            std::fs::write(dir.join("grub").join(name), block).unwrap();
        }
        dir
    }

    #[test]
    fn rolls_back_to_the_good_other_slot_and_stores_it() {
        // Booted B after an update, marked good; A still holds the good old system.
        let mut state = BootState::fresh();
        state.install(Slot::B, 3);
        state.mark_good(Slot::B);
        let dir = esp("good", &state);
        let done = rollback_in(&dir, Slot::B).unwrap();
        assert_eq!(
            done,
            RolledBack {
                next: "A",
                changed: true
            }
        );
        let read = BootState::load(&dir.join("grub")).unwrap();
        assert_eq!(read.next_boot(), Some(Slot::A));
        assert_eq!(read.state(Slot::B), SlotState::Good);
        // Again: A boots next already.
        assert!(!rollback_in(&dir, Slot::B).unwrap().changed);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_empty_retired_and_new_slots_with_the_reason() {
        let dir = esp("refused", &BootState::fresh());
        let err = rollback_in(&dir, Slot::A).unwrap_err();
        assert!(
            matches!(err, RollbackError::NotGood { state: "empty", .. }),
            "{err}"
        );
        // An empty slot with a kernel was retired.
        std::fs::create_dir_all(dir.join("B")).unwrap();
        std::fs::write(dir.join("B/vmlinuz"), b"k").unwrap();
        let err = rollback_in(&dir, Slot::A).unwrap_err();
        assert!(err.to_string().contains("slot B is retired"), "{err}");
        // Installed, never marked good.
        let mut s = BootState::load(&dir.join("grub")).unwrap();
        s.install(Slot::B, 3);
        s.store(&dir.join("grub")).unwrap();
        let err = rollback_in(&dir, Slot::A).unwrap_err();
        assert!(
            matches!(err, RollbackError::NotGood { state: "new", .. }),
            "{err}"
        );
        // Nothing was written: B still boots next.
        let read = BootState::load(&dir.join("grub")).unwrap();
        assert_eq!(read.next_boot(), Some(Slot::B));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_update_holding_the_lock_makes_it_busy() {
        let mut state = BootState::fresh();
        state.install(Slot::B, 3);
        state.mark_good(Slot::B);
        let dir = esp("busy", &state);
        let held = lock_boot_state(&dir.join("grub"), true).unwrap();
        assert!(matches!(
            rollback_in(&dir, Slot::B),
            Err(RollbackError::Busy)
        ));
        drop(held);
        assert!(rollback_in(&dir, Slot::B).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
