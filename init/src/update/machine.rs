//! `berth-init update-apply SOURCE [--allow-downgrade] [--keys DIR]`: the child process that
//! applies a bundle on a Berth machine. SOURCE is a file, `-` (stdin), an `http(s)://` URL or
//! the OCI reference of a bundle pushed with `berth-runtime image push-bundle` (see
//! [`Source::classify`]); URLs and references are fetched by `berth-runtime fetch`. It writes the slot that is not running, with the
//! ESP mounted privately, reports progress as JSON lines on stdout
//! (`{"phase":"root","done":N,"total":M}`) and exits 0 once the new slot boots next.

use std::path::{Path, PathBuf};

use berth_formats::bundle::keys::TRUSTED_KEYS_DIR;
use berth_formats::gpt::Gpt;
use berth_formats::grubenv::{Slot, DEFAULT_TRIES, MAX_TRIES};
use nix::mount::MsFlags;

use super::source::{apply_from, Fetcher, Source};
use super::{Applied, Policy, StopPoint, Target, UpdateError};
use crate::disk::blockdev::BlockDevices;
use crate::platform::bootgood::{booted_slot_of_this_machine, ESP_PARTITION};

pub const USAGE: &str =
    "usage: berth-init update-apply SOURCE [--allow-downgrade] [--keys DIR] [--tries N]
  SOURCE: - (stdin), a file (absolute, ./ or ../, or any existing path), an http:// or
  https:// URL, or else an OCI reference (registry/repo:tag or @sha256:...) of a bundle
  pushed with `berth-runtime image push-bundle`. URLs and references are fetched by
  `berth-runtime fetch` with the [registries] settings of /var/lib/berth/machine.toml.
  --tries N: boot attempts the new slot gets (default 3).
  Testing: --stop-at before-write|mid-root|after-root|mid-kernel|mid-grubenv stops there,
  everything synced, as if the power were cut.";
/// Where the ESP is mounted while an update writes it (not where boot marking mounts it).
const ESP_MOUNT: &str = "/run/berth/update-esp";

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("not booted from a Berth disk (no berth.slot= on the kernel command line)")]
    NotBerth,
    #[error("no partition named {0:?}")]
    NoPartition(String),
    #[error("{path}: {problem}")]
    Device { path: String, problem: String },
    #[error("mount {device} on {target}: {source}")]
    Mount {
        device: String,
        target: String,
        source: nix::errno::Errno,
    },
    #[error("an update is writing the boot partition; ask again once it has ended")]
    UpdateWriting,
    #[error(transparent)]
    Update(#[from] UpdateError),
}

struct Args {
    bundle: Source,
    allow_downgrade: bool,
    keys: PathBuf,
    tries: u8,
    stop_at: Option<StopPoint>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut bundle = None;
    let mut allow_downgrade = false;
    let mut keys = PathBuf::from(TRUSTED_KEYS_DIR);
    let mut tries = DEFAULT_TRIES;
    let mut stop_at = None;
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| format!("{e}\n{USAGE}"))? {
        match arg {
            Long("allow-downgrade") => allow_downgrade = true,
            Long("keys") => {
                keys = PathBuf::from(parser.value().map_err(|_| "--keys needs a directory")?)
            }
            Long("tries") => {
                tries = parser
                    .value()
                    .ok()
                    .and_then(|n| n.to_str()?.parse().ok())
                    .filter(|n| (1..=MAX_TRIES).contains(n))
                    .ok_or(format!("--tries needs a number from 1 to {MAX_TRIES}"))?
            }
            Long("stop-at") => {
                let name = parser.value().map_err(|_| "--stop-at needs a point")?;
                let name = name.to_string_lossy();
                stop_at =
                    Some(StopPoint::parse(&name).ok_or(format!("unknown stop point {name:?}"))?);
            }
            Value(s) if bundle.is_none() => bundle = Some(s.string().map_err(|e| e.to_string())?),
            Value(other) => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            Short(c) => return Err(format!("unknown argument \"-{c}\"\n{USAGE}")),
            Long(name) => return Err(format!("unknown argument \"--{name}\"\n{USAGE}")),
        }
    }
    let bundle: String = bundle.ok_or_else(|| format!("a bundle source is required\n{USAGE}"))?;
    Ok(Args {
        bundle: Source::classify(&bundle).map_err(|e| format!("{e}\n{USAGE}"))?,
        allow_downgrade,
        keys,
        tries,
        stop_at,
    })
}

/// The child's `main`: returns the exit code (0 applied, 1 refused or failed, 2 usage).
pub fn main(args: &[String]) -> i32 {
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth-init update-apply: {e}");
            return 2;
        }
    };
    match run(&args) {
        Ok(a) => {
            println!(
                "{}",
                serde_json::json!({"applied": {"slot": a.slot.name(), "version": a.version,
                    "build_id": a.build_id, "key": a.key_id}})
            );
            0
        }
        Err(e) => {
            eprintln!("berth-init update-apply: {e}");
            1
        }
    }
}

fn run(args: &Args) -> Result<Applied, MachineError> {
    let booted = booted_slot_of_this_machine().ok_or(MachineError::NotBerth)?;
    let slot = booted.other();
    let blocks = BlockDevices::system();
    let (root_device, root_capacity, root_partuuid) = slot_partition(&blocks, slot)?;
    let mountpoint = Path::new(ESP_MOUNT);
    private_mounts()?;
    mount_esp(&blocks, ESP_MOUNT, MsFlags::empty())?;
    let target = Target {
        slot,
        root_device,
        root_capacity,
        root_partuuid,
        esp: mountpoint.to_path_buf(),
    };
    let policy = Policy {
        trusted_keys: args.keys.clone(),
        running_version: super::status::running_release().version,
        allow_downgrade: args.allow_downgrade,
        tries: args.tries,
        stop_at: args.stop_at,
    };
    let mut report = |p: super::Progress| {
        println!("{}", serde_json::to_string(&p).unwrap_or_default());
    };
    let result = apply_from(
        &args.bundle,
        &Fetcher::of_this_machine(),
        &target,
        &policy,
        &mut report,
    );
    nix::unistd::sync();
    let _ = nix::mount::umount(mountpoint);
    Ok(result?)
}

/// Gives this process a mount namespace of its own, nothing propagating back: the ESP's
/// read-write mount then ends with the process however it ends (a cancelled or timed-out
/// update is killed with SIGKILL), instead of staying in the machine's mount table, where it
/// made every later read-only mount of the ESP (the update status) fail with EBUSY.
fn private_mounts() -> Result<(), MachineError> {
    let fail = |problem: String| MachineError::Device {
        path: "/".into(),
        problem,
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| fail(format!("a mount namespace of its own: {e}")))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail(format!("private mounts: {e}")))
}

/// The slot's root partition: device, size in bytes, GPT unique GUID.
fn slot_partition(
    blocks: &BlockDevices,
    slot: Slot,
) -> Result<(PathBuf, u64, String), MachineError> {
    let name = slot.partition_name();
    let part = blocks
        .partition_named(name)
        .ok_or_else(|| MachineError::NoPartition(name.into()))?;
    let dev = blocks.dev_path(&part.name);
    let bad = |path: &Path, problem: String| MachineError::Device {
        path: path.display().to_string(),
        problem,
    };
    let size_file = Path::new("/sys/class/block").join(&part.name).join("size");
    let sectors: u64 = std::fs::read_to_string(&size_file)
        .map_err(|e| bad(&size_file, e.to_string()))?
        .trim()
        .parse()
        .map_err(|_| bad(&size_file, "not a number".into()))?;
    let disk_dev = blocks.dev_path(&part.disk);
    let mut disk = std::fs::File::open(&disk_dev).map_err(|e| bad(&disk_dev, e.to_string()))?;
    let gpt = Gpt::read(&mut disk).map_err(|e| bad(&disk_dev, e.to_string()))?;
    let guid = gpt
        .find(name)
        .map(|p| p.guid.to_string())
        .ok_or_else(|| bad(&disk_dev, format!("no GPT entry named {name:?}")))?;
    Ok((dev, sectors * 512, guid))
}

/// Mounts this machine's ESP (vfat, never executable) at `mountpoint` with `extra` flags;
/// returns the ESP's device.
pub(super) fn mount_esp(
    blocks: &BlockDevices,
    mountpoint: &str,
    extra: MsFlags,
) -> Result<std::path::PathBuf, MachineError> {
    let esp = blocks
        .partition_named(ESP_PARTITION)
        .ok_or_else(|| MachineError::NoPartition(ESP_PARTITION.into()))?;
    let esp_dev = blocks.dev_path(&esp.name);
    std::fs::create_dir_all(mountpoint).map_err(|e| MachineError::Device {
        path: mountpoint.into(),
        problem: e.to_string(),
    })?;
    nix::mount::mount(
        Some(&esp_dev),
        mountpoint,
        Some("vfat"),
        extra | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|source| MachineError::Mount {
        device: esp_dev.display().to_string(),
        target: mountpoint.into(),
        source,
    })?;
    Ok(esp_dev)
}

/// Where the ESP is mounted (read-only) while the update status is read.
const STATUS_MOUNT: &str = "/run/berth/status-esp";

/// The update status of this machine's slots (`GET /v1/update`): the ESP is mounted
/// read-only for the moment it takes to read the boot state and the slots' release records.
pub fn status_of_this_machine() -> Result<super::status::UpdateStatus, MachineError> {
    let booted = booted_slot_of_this_machine().ok_or(MachineError::NotBerth)?;
    let blocks = BlockDevices::system();
    let mountpoint = Path::new(STATUS_MOUNT);
    // The kernel refuses a read-only mount of a filesystem mounted read-write elsewhere: an
    // update (in its own mount namespace) holds it for as long as it runs.
    let esp_dev = match mount_esp(&blocks, STATUS_MOUNT, MsFlags::MS_RDONLY) {
        Err(MachineError::Mount {
            source: nix::errno::Errno::EBUSY,
            ..
        }) => return Err(MachineError::UpdateWriting),
        other => other?,
    };
    let running = super::status::running_release();
    let result = super::status::status_in(mountpoint, booted, &running);
    let _ = nix::mount::umount(mountpoint);
    result.map_err(|e| MachineError::Device {
        path: format!("{}/grub", esp_dev.display()),
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parsed(a: &[&str]) -> Result<Args, String> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_around_the_source_in_both_forms() {
        let a = parsed(&["--keys=/k", "-", "--allow-downgrade", "--tries", "2"]).unwrap();
        assert!(matches!(a.bundle, Source::Stdin));
        assert!(a.allow_downgrade);
        assert_eq!(a.keys, PathBuf::from("/k"));
        assert_eq!(a.tries, 2);
        assert_eq!(a.stop_at, None);
        let a = parsed(&["/b", "--stop-at=mid-root", "--keys", "/a", "--keys", "/b"]).unwrap();
        assert!(matches!(a.bundle, Source::File(ref f) if f == Path::new("/b")));
        assert_eq!(a.stop_at, Some(StopPoint::MidRoot));
        // A repeated option: the last one counts.
        assert_eq!(a.keys, PathBuf::from("/b"));
        assert_eq!(parsed(&["--", "/b"]).unwrap().tries, DEFAULT_TRIES);
        // `--keys=` is an empty value, as `--keys ""` is.
        assert_eq!(parsed(&["/b", "--keys="]).unwrap().keys, PathBuf::new());
    }

    #[test]
    fn usage_errors_name_the_option() {
        let err = |a: &[&str]| parsed(a).err().unwrap();
        assert!(err(&["/b", "--bogus"]).starts_with("unknown argument \"--bogus\"\nusage:"));
        assert!(err(&["/b", "-x"]).starts_with("unknown argument \"-x\"\n"));
        assert!(err(&["/b", "/c"]).starts_with("unknown argument \"/c\"\n"));
        assert_eq!(err(&["/b", "--keys"]), "--keys needs a directory");
        assert!(err(&["/b", "--tries", "0"]).starts_with("--tries needs a number from 1"));
        assert!(err(&["/b", "--tries="]).starts_with("--tries needs a number from 1"));
        assert_eq!(
            err(&["/b", "--stop-at", "never"]),
            "unknown stop point \"never\""
        );
        assert!(err(&["/b", "--allow-downgrade=yes"]).contains("--allow-downgrade"));
        assert!(err(&["--tries", "2"]).starts_with("a bundle source is required"));
    }
}
