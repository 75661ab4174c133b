//! Boot phases for a Berth machine's writable storage (PID 1 booted from a Berth disk only;
//! elsewhere, e.g. PID 1 in a test's namespaces, they do nothing): a tmpfs on /tmp (the root
//! is read-only), the state partition mounted and grown to the disk's end, and on first boot
//! the `cidata` config drive applied into it. The disk itself (partitions, state filesystem,
//! config drive format) is `crate::disk`.

use std::path::Path;

use log::info;
use nix::mount::MsFlags;

use super::{Boot, BootError};
use crate::disk::blockdev::BlockDevices;
use crate::disk::configdrive::{self, UserData};
use crate::disk::statefs;
use crate::platform::bootgood::booted_slot_of_this_machine;

/// Where the config drive is mounted while it is read.
const CONFIG_DRIVE_MOUNT: &str = "/run/berth/cidata";

pub fn mount_tmp(_: &mut Boot) -> Result<(), BootError> {
    if booted_slot_of_this_machine().is_none() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(|source| BootError::Mount {
        target: "/tmp".into(),
        source,
    })
}

pub fn mount_state_partition(boot: &mut Boot) -> Result<(), BootError> {
    if booted_slot_of_this_machine().is_none() {
        return Ok(());
    }
    let seed = std::path::Path::new(statefs::SEED);
    let (part, found) = statefs::mount(&BlockDevices::system(), &boot.paths.state, seed)?;
    info!(
        "state partition /dev/{} mounted on {}{}",
        part.name,
        boot.paths.state.display(),
        match found {
            statefs::Found::Existing => "",
            statefs::Found::Created => " (created: the partition was blank)",
        }
    );
    Ok(())
}

pub fn grow_state_partition(boot: &mut Boot) -> Result<(), BootError> {
    if booted_slot_of_this_machine().is_none() {
        return Ok(());
    }
    let blocks = BlockDevices::system();
    let part = blocks
        .partition_named(statefs::PARTITION_NAME)
        .ok_or(statefs::StateError::NotFound)?;
    if let Some(g) = statefs::grow(&blocks, &part, &boot.paths.state)? {
        info!(
            "state partition grown: partition {} → {} MiB, filesystem {} → {} MiB",
            g.partition_before >> 20,
            g.partition_after >> 20,
            g.filesystem_before >> 20,
            g.filesystem_after >> 20
        );
    }
    Ok(())
}

pub fn read_config_drive(boot: &mut Boot) -> Result<(), BootError> {
    if booted_slot_of_this_machine().is_none() {
        return Ok(());
    }
    if boot.paths.state.join(configdrive::APPLIED_MARKER).exists() {
        return Ok(());
    }
    let text = configdrive::read(&BlockDevices::system(), Path::new(CONFIG_DRIVE_MOUNT))?;
    let Some(text) = text else {
        info!("no config drive: first boot with defaults");
        return Ok(());
    };
    let written = UserData::parse(&text)?.apply(&boot.paths.state)?;
    info!("config drive applied ({} files)", written.len());
    Ok(())
}
