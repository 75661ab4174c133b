//! The root is verity-protected: one flipped byte in root A's data and the tampered code
//! never runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use berth_qemu_tests::{disk, disk_or_skip, Firmware, Vm, VmConfig};

/// The first block of /sbin/init as it sits in the erofs root (staged next to the image).
fn init_first_block(image: &Path) -> Vec<u8> {
    let staged = image.parent().unwrap().join("rootfs/sbin/init");
    let bytes = std::fs::read(&staged).unwrap_or_else(|e| panic!("{}: {e}", staged.display()));
    assert!(bytes.len() > 4096, "init is smaller than a block");
    bytes[..4096].to_vec()
}

#[test]
fn tampered_init_is_refused_and_never_runs() {
    let Some((fx, disk_path)) = disk_or_skip("verity", None) else {
        return;
    };
    let image = berth_qemu_tests::fixture::default_image();
    let root_a = disk::partition(&disk_path, "berth-root-a").unwrap();
    let needle = init_first_block(&image);
    let at = disk::find_block(&disk_path, &root_a, &needle)
        .unwrap()
        .expect("the first block of /sbin/init is in root A");
    // A byte inside the ELF program headers: the kernel must read it to exec init.
    disk::flip_byte(&disk_path, at + 100).unwrap();

    let mut vm = Vm::start(&VmConfig::new(Firmware::Bios, disk_path), &fx.dir).unwrap();
    vm.wait_for("device-mapper: verity", Duration::from_secs(180))
        .unwrap();
    // Reading the tampered block fails, so exec fails and the kernel refuses to go on
    // (panic=5, and the VM runs with -no-reboot, so it exits).
    vm.wait_for(
        "Kernel panic - not syncing: Requested init /sbin/init failed",
        Duration::from_secs(60),
    )
    .unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let log = vm.transcript();
    assert!(
        log.contains("is corrupted"),
        "no verity corruption report:\n{log}"
    );
    assert!(
        log.contains("error -5"),
        "exec did not fail with EIO:\n{log}"
    );
}
