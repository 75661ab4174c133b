//! Applying an update bundle to the inactive slot. Runs in a child process
//! (`berth-init update-apply`), never in PID 1's loop: it streams hundreds of MiB.
//!
//! Order of work, each step only after the one before succeeded:
//! 1. header and manifest: signature against the trusted keys, version policy, size against
//!    the slot (nothing written yet; a refused bundle leaves every byte as it was);
//! 2. the target slot is marked unbootable in grubenv if it was bootable (its root is about
//!    to be overwritten);
//! 3. the root payload streams into the slot while its SHA-256 and (on a second thread) its
//!    verity tree are computed; then fsync;
//! 4. the kernel streams into `SLOT/vmlinuz.new` on the ESP (SHA-256 checked), the slot's boot
//!    arguments into `SLOT/boot.cfg.new`, both synced, then renamed into place;
//! 5. only then grubenv: the slot becomes new (with its boot attempts) and first in ORDER.

pub mod failure;
pub mod machine;
pub mod rollback;
pub mod source;
pub mod status;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use berth_formats::bundle::keys::{KeyError, TrustedKeys};
use berth_formats::bundle::tree::TreeCheck;
use berth_formats::bundle::{self, BundleError, Manifest};
use berth_formats::grubenv::{BootState, GrubEnvError, Slot, SlotState};

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("trusted keys: {0}")]
    Keys(#[from] KeyError),
    #[error("bundle is Berth {bundle}, older than the running {running}: refusing a downgrade (allow it explicitly)")]
    Downgrade { bundle: String, running: String },
    #[error("bundle updates only from Berth {min_from} or later; this system runs {running}")]
    TooOld { min_from: String, running: String },
    #[error("running version {0:?} is not a version like 1.2.3")]
    RunningVersion(String),
    #[error("root payload is {size} bytes, slot {slot} holds only {capacity}")]
    TooLarge {
        size: u64,
        slot: Slot,
        capacity: u64,
    },
    #[error(
        "slot {running}, running, is on trial (not marked good yet) and slot {target} holds \
         the only good system: an update would overwrite it and leave nothing to fall back to. \
         Wait until this boot is marked good (its critical units healthy), or roll back"
    )]
    RunningOnTrial { running: Slot, target: Slot },
    #[error("boot state: {0}")]
    GrubEnv(#[from] GrubEnvError),
    #[error("slot {slot} boot configuration: {problem}")]
    BootConfig { slot: Slot, problem: String },
    /// Applying a fetched bundle failed, and so did the fetch (its reason).
    #[error("{error}; {fetch}")]
    Fetch {
        error: Box<UpdateError>,
        fetch: String,
    },
    #[error("starting {command}: {error}")]
    FetchSpawn {
        command: String,
        error: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where a bundle goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The slot to write: never the one running.
    pub slot: Slot,
    /// The slot's root partition (a regular file in tests).
    pub root_device: PathBuf,
    /// Bytes the slot's root can hold.
    pub root_capacity: u64,
    /// The partition's GPT unique GUID, for the kernel's `dm-mod.create=`.
    pub root_partuuid: String,
    /// The mounted ESP: `grub/grubenv*`, `A/`, `B/`.
    pub esp: PathBuf,
}

/// What the machine accepts.
#[derive(Debug, Clone)]
pub struct Policy {
    pub trusted_keys: PathBuf,
    pub running_version: String,
    pub allow_downgrade: bool,
    /// Boot attempts the new slot gets before it is retired.
    pub tries: u8,
    /// Testing: stop at this point as if the power were cut there (see [`StopPoint`]).
    pub stop_at: Option<StopPoint>,
}

/// Points where `update-apply --stop-at` stops, everything written so far synced, so that a
/// test can cut the power there: the writes an update must survive being interrupted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPoint {
    /// Verified, nothing written yet.
    BeforeWrite,
    /// Half the root written into the slot.
    MidRoot,
    /// The root written and checked, the kernel not started.
    AfterRoot,
    /// Half the kernel written (as `vmlinuz.new`).
    MidKernel,
    /// The new boot state block written over its copy up to its end marker (a write torn
    /// after every variable but before `END`, the worst place for it).
    MidGrubenv,
}

impl StopPoint {
    pub const ALL: [(&'static str, StopPoint); 5] = [
        ("before-write", StopPoint::BeforeWrite),
        ("mid-root", StopPoint::MidRoot),
        ("after-root", StopPoint::AfterRoot),
        ("mid-kernel", StopPoint::MidKernel),
        ("mid-grubenv", StopPoint::MidGrubenv),
    ];

    pub fn parse(name: &str) -> Option<StopPoint> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|&(_, p)| p)
    }

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("?", |(n, _)| n)
    }
}

/// Syncs what was written and waits for the power to be cut (never returns).
fn stop_here(policy: &Policy, point: StopPoint) {
    if policy.stop_at != Some(point) {
        return;
    }
    nix::unistd::sync();
    eprintln!("update-apply: stopped at {}", point.name());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// The stage progress is reported for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Root,
    Kernel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// A bundle that was written and will boot next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub slot: Slot,
    pub version: String,
    pub build_id: String,
    pub key_id: String,
}

/// Checks the version policy and the slot's size for a verified manifest.
pub fn check_policy(m: &Manifest, target: &Target, policy: &Policy) -> Result<(), UpdateError> {
    use std::cmp::Ordering;
    let running = &policy.running_version;
    let cmp = |a: &str, b: &str| {
        bundle::compare_versions(a, b).ok_or_else(|| UpdateError::RunningVersion(running.clone()))
    };
    if cmp(running, &m.min_from_version)? == Ordering::Less {
        return Err(UpdateError::TooOld {
            min_from: m.min_from_version.clone(),
            running: running.clone(),
        });
    }
    if cmp(&m.os_version, running)? == Ordering::Less && !policy.allow_downgrade {
        return Err(UpdateError::Downgrade {
            bundle: m.os_version.clone(),
            running: running.clone(),
        });
    }
    if m.root().size > target.root_capacity {
        return Err(UpdateError::TooLarge {
            size: m.root().size,
            slot: target.slot,
            capacity: target.root_capacity,
        });
    }
    Ok(())
}

/// The slot's GRUB script: the verity table opening its root and the kernel arguments.
pub fn slot_boot_config(m: &Manifest, target: &Target) -> Result<String, UpdateError> {
    let v = &m.verity;
    let dev = format!("PARTUUID={}", target.root_partuuid);
    let dm = format!(
        "berth-root,,,ro,0 {sectors} verity 1 {dev} {dev} 4096 4096 {n} {hash_start} {alg} {root} {salt}",
        sectors = v.data_blocks * 8,
        n = v.data_blocks,
        hash_start = v.hash_offset_blocks + 1,
        alg = v.hash,
        root = v.root_hash,
        salt = v.salt,
    );
    let args = format!(
        "root=/dev/dm-0 ro rootfstype=erofs dm-mod.waitfor={dev} {}",
        m.boot_args
    );
    berth_formats::bootcfg::slot_config(&dm, &args).map_err(|e| UpdateError::BootConfig {
        slot: target.slot,
        problem: e.to_string(),
    })
}

/// Verifies and writes the bundle read from `bundle_reader` into `target` (see the module
/// documentation for the order). `progress` gets bytes done per payload.
/// An update writes the slot that is not running. While the running one is on trial (an
/// update booted it and it is not marked good yet), that other slot may hold the machine's only
/// good system: overwriting it would leave a machine whose trial fails nothing to boot.
fn refuse_losing_the_good_slot(target: &Target) -> Result<(), UpdateError> {
    let state = BootState::load(&target.esp.join("grub"))?;
    let running = target.slot.other();
    if state.state(running) != SlotState::Good && state.state(target.slot) == SlotState::Good {
        return Err(UpdateError::RunningOnTrial {
            running,
            target: target.slot,
        });
    }
    Ok(())
}

pub fn apply<R: Read>(
    bundle_reader: R,
    target: &Target,
    policy: &Policy,
    progress: &mut dyn FnMut(Progress),
) -> Result<Applied, UpdateError> {
    refuse_losing_the_good_slot(target)?;
    let mut r = std::io::BufReader::with_capacity(1 << 16, bundle_reader);
    let keys = TrustedKeys::load(&policy.trusted_keys)?;
    let verified = bundle::read_verified(&mut r, &keys)?;
    let m = &verified.manifest;
    check_policy(m, target, policy)?;
    let boot_cfg = slot_boot_config(m, target)?;
    stop_here(policy, StopPoint::BeforeWrite);

    // The slot is about to be overwritten: GRUB must not pick it meanwhile.
    let grub_dir = target.esp.join("grub");
    {
        let _lock = lock(&grub_dir)?;
        let mut state = BootState::load(&grub_dir)?;
        if state.is_ok(target.slot) {
            state.disable(target.slot);
            state.store(&grub_dir)?;
        }
    }
    // What the slot's last system failed of is history once another is written there.
    let slot_dir = target.esp.join(target.slot.name());
    if slot_dir.is_dir() {
        failure::clear(&slot_dir).map_err(io(&slot_dir))?;
    }

    // Root: streamed into the slot, hashed on the way.
    let root = m.root().clone();
    let dev = &target.root_device;
    let mut slot_file = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(io(dev))?;
    // The verity tree is recomputed on a second thread, fed the chunks as they are written:
    // with more than one CPU the two hashes (SHA-256 here, the tree there) run side by side.
    let params = m.verity.tree_params()?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (copied, checked) = std::thread::scope(|s| {
        let checker = s.spawn(move || {
            let mut tree = TreeCheck::new(params);
            for chunk in rx {
                tree.update(&chunk);
            }
            tree.finish()
        });
        let copied = bundle::copy_payload(
            &mut r,
            &root,
            verified.payload_offset,
            |chunk| {
                tx.send(chunk.to_vec())
                    .map_err(|_| std::io::Error::other("the verity check stopped"))?;
                slot_file.write_all(chunk)
            },
            |done| report(progress, policy, Phase::Root, done, root.size),
        );
        drop(tx);
        (copied, checker.join())
    });
    copied?;
    slot_file.sync_all().map_err(io(dev))?;
    drop(slot_file);
    match checked {
        Ok(result) => result?,
        Err(_) => {
            return Err(UpdateError::Io {
                path: "verity check".into(),
                source: std::io::Error::other("the verity check thread panicked"),
            })
        }
    }
    stop_here(policy, StopPoint::AfterRoot);

    // Kernel and boot arguments: new files, synced, then renamed over the old ones.
    std::fs::create_dir_all(&slot_dir).map_err(io(&slot_dir))?;
    let kernel = m.kernel().clone();
    let kernel_new = slot_dir.join("vmlinuz.new");
    let mut kf = std::fs::File::create(&kernel_new).map_err(io(&kernel_new))?;
    let written = bundle::copy_payload(
        &mut r,
        &kernel,
        verified.payload_offset + root.size,
        |chunk| kf.write_all(chunk),
        |done| report(progress, policy, Phase::Kernel, done, kernel.size),
    )
    .map_err(UpdateError::from)
    .and_then(|()| kf.sync_all().map_err(io(&kernel_new)))
    .and_then(|()| bundle::expect_end(&mut r).map_err(UpdateError::from));
    drop(kf);
    if let Err(e) = written {
        // A refused kernel does not stay on the ESP.
        let _ = std::fs::remove_file(&kernel_new);
        return Err(e);
    }
    let cfg_new = slot_dir.join("boot.cfg.new");
    write_synced(&cfg_new, boot_cfg.as_bytes())?;
    // What the slot holds, for the update status (the slot is not bootable yet, so a stale
    // record is never shown for a slot that boots).
    let release = status::Release {
        version: m.os_version.clone(),
        build_id: m.build_id.clone(),
    };
    let release_json = serde_json::to_vec(&release).map_err(|e| UpdateError::Io {
        path: status::RELEASE_FILE.into(),
        source: std::io::Error::other(e),
    })?;
    let release_new = slot_dir.join("release.json.new");
    write_synced(&release_new, &release_json)?;
    let release_path = slot_dir.join(status::RELEASE_FILE);
    std::fs::rename(&release_new, &release_path).map_err(io(&release_path))?;
    let kernel_path = slot_dir.join("vmlinuz");
    std::fs::rename(&kernel_new, &kernel_path).map_err(io(&kernel_path))?;
    let cfg_path = slot_dir.join("boot.cfg");
    std::fs::rename(&cfg_new, &cfg_path).map_err(io(&cfg_path))?;
    sync_dir(&slot_dir)?;

    // Last: the new slot boots next.
    let _lock = lock(&grub_dir)?;
    let mut state = BootState::load(&grub_dir)?;
    state.install(target.slot, policy.tries);
    let pending = state.prepare_store(&grub_dir)?;
    if policy.stop_at == Some(StopPoint::MidGrubenv) {
        tear(&pending)?;
        stop_here(policy, StopPoint::MidGrubenv);
    }
    state.commit(pending)?;
    Ok(Applied {
        slot: target.slot,
        version: m.os_version.clone(),
        build_id: m.build_id.clone(),
        key_id: verified.key_id.clone(),
    })
}

/// Reports a payload's progress; halfway through it, the payload's stop point.
fn report(
    progress: &mut dyn FnMut(Progress),
    policy: &Policy,
    phase: Phase,
    done: u64,
    total: u64,
) {
    progress(Progress { phase, done, total });
    if done * 2 >= total {
        let point = match phase {
            Phase::Root => StopPoint::MidRoot,
            Phase::Kernel => StopPoint::MidKernel,
        };
        stop_here(policy, point);
    }
}

/// Writes a boot state block over its copy up to its `END` variable, as a power cut in the
/// middle of the write could leave it.
fn tear(pending: &berth_formats::grubenv::PendingStore) -> Result<(), UpdateError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pending.path)
        .map_err(io(&pending.path))?;
    let cut = pending
        .block
        .windows(4)
        .position(|w| w == b"END=")
        .unwrap_or(pending.block.len() / 2);
    f.write_all_at(&pending.block[..cut], 0)
        .and_then(|()| f.sync_all())
        .map_err(io(&pending.path))
}

/// The boot state's lock, shared with PID 1's boot marking (held only around a rewrite).
fn lock(grub_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, UpdateError> {
    crate::platform::bootgood::lock_boot_state(grub_dir, true).map_err(|e| UpdateError::Io {
        path: grub_dir.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), UpdateError> {
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<(), UpdateError> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}
