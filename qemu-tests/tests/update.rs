//! A/B update on a booted machine: slot A applies a signed bundle of a different build (its
//! own root with a newer version) read from an extra disk, the next boot runs slot B, marks
//! it good, and keeps slot A good and the state partition as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use berth_formats::grubenv::{BootState, Slot};
use berth_qemu_tests::update::{
    apply_command, later_version, os_release_field, power_off, running_version, update_status,
    wait_marked_good, OtherBuild, APPLY, BOOT, CMD, DISK_SIZE,
};
use berth_qemu_tests::{disk, disk_or_skip, fixture, Firmware, Vm, VmConfig};

/// The boot state on the ESP of a stopped VM's disk.
fn grubenv_of(disk_path: &Path) -> BootState {
    disk::boot_state(disk_path).unwrap()
}

#[test]
fn bundle_of_another_build_boots_in_slot_b_and_is_marked_good() {
    let test = "update_a_to_b";
    let Some((fx, disk_path)) = disk_or_skip(test, Some(DISK_SIZE)) else {
        return;
    };
    let image = fixture::default_image();
    let running = running_version();
    let next = later_version(&running, 1);
    let build = OtherBuild::assemble(&fx.path("next"), &image, &next, "update-test").unwrap();
    let (bundle, bundle_len) = build.bundle("next", str::to_string).unwrap();

    let mut cfg = VmConfig::new(Firmware::Bios, disk_path.clone());
    // Only extra drive: the guest sees it as vdb.
    cfg.extra_drives.push(bundle);
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for("berth: booting slot A", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    assert_eq!(os_release_field(&mut vm, "VERSION_ID").unwrap(), running);
    wait_marked_good(&mut vm, "A").unwrap();
    let status = update_status(&mut vm).unwrap();
    assert_eq!(status["booted"], "A", "{status}");
    assert_eq!(status["slots"][0]["state"], "good", "{status}");
    assert_eq!(status["slots"][0]["version"], running.as_str(), "{status}");
    assert_eq!(status["slots"][1]["state"], "empty", "{status}");
    vm.run_ok(
        "echo kept-across-updates > /var/lib/berth/update-marker && sync",
        CMD,
    )
    .unwrap();

    // The bundle streams from the disk into the child process, exactly its length.
    let applied = vm
        .run_ok(&apply_command("/dev/vdb", bundle_len, ""), APPLY)
        .unwrap();
    assert!(applied.contains("\"applied\""), "{applied}");
    assert!(applied.contains("\"slot\":\"B\""), "{applied}");
    assert!(
        applied.contains(&format!("\"version\":\"{next}\"")),
        "{applied}"
    );
    let status = update_status(&mut vm).unwrap();
    assert_eq!(status["next"], "B", "{status}");
    assert_eq!(status["slots"][1]["state"], "new", "{status}");
    assert_eq!(status["slots"][1]["attempts_left"], 3, "{status}");
    assert_eq!(status["slots"][1]["version"], next.as_str(), "{status}");
    assert_eq!(status["slots"][1]["build_id"], "update-test", "{status}");
    power_off(&mut vm).unwrap();

    let env = grubenv_of(&disk_path);
    assert!(env.is_trying(Slot::B), "{env:?}");
    assert_eq!(env.next_boot(), Some(Slot::B), "{env:?}");

    // Next boot: slot B, the new build, marked good once its critical units are healthy.
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for("berth: booting slot B", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    let cmdline = vm.run_ok("cat /proc/cmdline", CMD).unwrap();
    assert!(cmdline.contains("berth.slot=B"), "{cmdline}");
    let root_b = disk::partition(&disk_path, "berth-root-b").unwrap();
    let slaves = vm.run_ok("ls /sys/block/dm-0/slaves", CMD).unwrap();
    assert_eq!(slaves.trim(), format!("vda{}", root_b.number));
    assert_eq!(os_release_field(&mut vm, "VERSION_ID").unwrap(), next);
    assert_eq!(
        os_release_field(&mut vm, "BUILD_ID").unwrap(),
        "update-test"
    );
    assert_eq!(
        vm.run_ok("cat /var/lib/berth/update-marker", CMD)
            .unwrap()
            .trim(),
        "kept-across-updates"
    );
    wait_marked_good(&mut vm, "B").unwrap();
    let status = update_status(&mut vm).unwrap();
    assert_eq!(status["booted"], "B", "{status}");
    assert_eq!(status["next"], "B", "{status}");
    assert_eq!(status["slots"][0]["state"], "good", "{status}");
    assert_eq!(status["slots"][0]["version"], running.as_str(), "{status}");
    assert_eq!(status["slots"][1]["state"], "good", "{status}");
    assert_eq!(status["slots"][1]["version"], next.as_str(), "{status}");
    power_off(&mut vm).unwrap();

    let env = grubenv_of(&disk_path);
    assert!(env.is_ok(Slot::B) && !env.is_trying(Slot::B), "{env:?}");
    assert!(env.is_ok(Slot::A), "{env:?}");
    assert_eq!(env.next_boot(), Some(Slot::B), "{env:?}");
}
