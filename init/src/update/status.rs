//! The update status of both slots (`GET /v1/update`, `berthctl update status`): what each
//! holds, from the boot state and the release record an update leaves beside the slot's
//! kernel on the ESP (`SLOT/release.json`).

use std::path::Path;

use berth_formats::grubenv::{BootState, Slot, SlotState};
use serde::{Deserialize, Serialize};

use super::failure::{self, Failure};

/// The record of what a slot holds, written by `update-apply` with the slot's kernel.
pub const RELEASE_FILE: &str = "release.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub build_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub slot: &'static str,
    /// `good`, `new` (installed, not marked good yet), `retired` (holds a system GRUB will not
    /// boot any more) or `empty`.
    pub state: &'static str,
    /// Boot attempts left while `new`.
    pub attempts_left: Option<u8>,
    pub version: Option<String>,
    pub build_id: Option<String>,
    pub booted: bool,
    /// GRUB boots this slot next.
    pub next: bool,
    /// Why the system in a retired slot was given up, as far as it is known.
    pub failure: Option<Failure>,
}

/// What the ESP holds for a slot besides the boot state.
#[derive(Debug, Clone, Default)]
pub struct SlotFiles {
    pub release: Option<Release>,
    pub has_kernel: bool,
    pub failure: Option<Failure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpdateStatus {
    pub booted: &'static str,
    pub next: Option<&'static str>,
    pub slots: Vec<SlotStatus>,
}

/// The release record in an ESP slot directory, if there is a readable one.
pub fn read_release(slot_dir: &Path) -> Option<Release> {
    let text = std::fs::read_to_string(slot_dir.join(RELEASE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The status of both slots. `releases` are the records found on the ESP, and whether the
/// slot has a kernel there; the booted slot without a record (the one a disk image was built
/// with) is the running system, `running`.
pub fn status(
    state: &BootState,
    booted: Slot,
    running: &Release,
    found: impl Fn(Slot) -> SlotFiles,
) -> UpdateStatus {
    let next = state.next_boot();
    let slots = Slot::ALL
        .iter()
        .map(|&slot| {
            let SlotFiles {
                release,
                has_kernel,
                failure: recorded,
            } = found(slot);
            let release = release.or_else(|| (slot == booted).then(|| running.clone()));
            let (name, attempts_left) = state_name(state.state(slot), has_kernel);
            let failure = (name == "retired").then(|| {
                recorded.unwrap_or_else(|| {
                    let version = release.as_ref().map_or("unknown", |r| r.version.as_str());
                    failure::unrecorded(version)
                })
            });
            SlotStatus {
                slot: slot.name(),
                state: name,
                failure,
                attempts_left,
                version: release.as_ref().map(|r| r.version.clone()),
                build_id: release.map(|r| r.build_id),
                booted: slot == booted,
                next: next == Some(slot),
            }
        })
        .collect();
    UpdateStatus {
        booted: booted.name(),
        next: next.map(Slot::name),
        slots,
    }
}

/// A slot's state as the API names it, with its boot attempts left while new. An empty slot
/// that still has a kernel on the ESP was retired (or is being written).
pub fn state_name(state: SlotState, has_kernel: bool) -> (&'static str, Option<u8>) {
    match state {
        SlotState::Good => ("good", None),
        SlotState::New { tries_left } => ("new", Some(tries_left)),
        SlotState::Empty if has_kernel => ("retired", None),
        SlotState::Empty => ("empty", None),
    }
}

/// The status from a mounted ESP (`esp`: its root, with `grub/` and the slot directories).
pub fn status_in(
    esp: &Path,
    booted: Slot,
    running: &Release,
) -> Result<UpdateStatus, berth_formats::grubenv::GrubEnvError> {
    let state = BootState::load(&esp.join("grub"))?;
    Ok(status(&state, booted, running, |slot| {
        let dir = esp.join(slot.name());
        SlotFiles {
            release: read_release(&dir),
            has_kernel: dir.join("vmlinuz").is_file(),
            failure: failure::read(&dir),
        }
    }))
}

/// `BUILD_ID=` of an os-release file's text.
pub fn os_release_build_id(text: &str) -> Option<String> {
    os_release_field(text, "BUILD_ID")
}

fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// The system running now, from its os-release text: the version an update installed
/// (`VERSION_ID`, which the bundle's manifest names), else berth-init's own version.
pub fn running_release_from(os_release: &str) -> Release {
    Release {
        version: os_release_field(os_release, "VERSION_ID")
            .unwrap_or_else(|| crate::VERSION.to_string()),
        build_id: os_release_build_id(os_release).unwrap_or_else(|| "unknown".into()),
    }
}

/// The running system's release (`/etc/os-release`).
pub fn running_release() -> Release {
    running_release_from(&std::fs::read_to_string("/etc/os-release").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Release {
        Release {
            version: "0.1.0".into(),
            build_id: "abc".into(),
        }
    }

    #[test]
    fn a_fresh_machine_runs_a_with_b_empty() {
        let s = status(&BootState::fresh(), Slot::A, &running(), |_| {
            SlotFiles::default()
        });
        assert_eq!((s.booted, s.next), ("A", Some("A")));
        let a = &s.slots[0];
        assert_eq!((a.state, a.booted, a.next), ("good", true, true));
        assert_eq!(a.version.as_deref(), Some("0.1.0"));
        assert_eq!(a.build_id.as_deref(), Some("abc"));
        let b = &s.slots[1];
        assert_eq!((b.state, b.booted, b.next), ("empty", false, false));
        assert_eq!(b.version, None);
    }

    #[test]
    fn an_installed_slot_is_new_and_next_with_its_release() {
        let mut state = BootState::fresh();
        state.install(Slot::B, 3);
        let next = Release {
            version: "0.2.0".into(),
            build_id: "def".into(),
        };
        let s = status(&state, Slot::A, &running(), |slot| SlotFiles {
            release: (slot == Slot::B).then(|| next.clone()),
            has_kernel: true,
            failure: None,
        });
        assert_eq!(s.next, Some("B"));
        let b = &s.slots[1];
        assert_eq!((b.state, b.attempts_left, b.next), ("new", Some(3), true));
        assert_eq!(b.version.as_deref(), Some("0.2.0"));
        assert_eq!(b.failure, None);
        // A retired slot still holds its kernel, and says why it was given up: the record
        // berth-init left, or what GRUB's counting tells.
        state.disable(Slot::B);
        let files = |failure: Option<Failure>| SlotFiles {
            release: Some(next.clone()),
            has_kernel: true,
            failure,
        };
        let s = status(&state, Slot::A, &running(), |_| files(None));
        assert_eq!(s.slots[1].state, "retired");
        assert_eq!(s.next, Some("A"));
        let f = s.slots[1].failure.clone().unwrap();
        assert_eq!(f.version, "0.2.0");
        assert!(f.reason.contains("before Berth's PID 1 started"), "{f:?}");
        let why = Failure {
            version: "0.2.0".into(),
            reason: "critical units not healthy within 5m0s: web".into(),
        };
        let s = status(&state, Slot::A, &running(), |_| files(Some(why.clone())));
        assert_eq!(s.slots[1].failure, Some(why.clone()));
        assert_eq!(s.slots[0].failure, None);
    }

    #[test]
    fn status_reads_grubenv_and_release_records_from_an_esp_tree() {
        let dir = std::env::temp_dir().join(format!("berth-update-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("grub")).unwrap();
        std::fs::create_dir_all(dir.join("B")).unwrap();
        let mut state = BootState::fresh();
        for (name, block) in berth_formats::grubenv::ENV_FILES
            .iter()
            .zip(state.initial_blocks().unwrap())
        {
            std::fs::write(dir.join("grub").join(name), block).unwrap();
        }
        state.install(Slot::B, 3);
        state.store(&dir.join("grub")).unwrap();
        std::fs::write(dir.join("B/vmlinuz"), b"k").unwrap();
        std::fs::write(
            dir.join("B").join(RELEASE_FILE),
            br#"{"version":"0.2.0","build_id":"def"}"#,
        )
        .unwrap();
        let s = status_in(&dir, Slot::A, &running()).unwrap();
        assert_eq!(s.slots[1].state, "new");
        assert_eq!(s.slots[1].build_id.as_deref(), Some("def"));
        assert_eq!(s.slots[0].version.as_deref(), Some("0.1.0"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn build_id_comes_from_os_release() {
        let text = "NAME=Berth\nBUILD_ID=8b4a0b3\nVERSION_ID=0.1.0\n";
        assert_eq!(os_release_build_id(text).as_deref(), Some("8b4a0b3"));
        assert_eq!(os_release_build_id("NAME=Berth\n"), None);
        let r = running_release_from(text);
        assert_eq!(
            (r.version.as_str(), r.build_id.as_str()),
            ("0.1.0", "8b4a0b3")
        );
        let r = running_release_from("VERSION_ID=\"0.3.1\"\nBUILD_ID_X=1\n");
        assert_eq!(
            (r.version.as_str(), r.build_id.as_str()),
            ("0.3.1", "unknown")
        );
    }
}
