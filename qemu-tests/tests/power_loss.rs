//! Power cuts during an A/B update: QEMU is killed at each point where the update writes
//! (before writing, mid-root, after the root, mid-kernel, mid-grubenv write, right after the
//! flip, during the first boots of the new slot) and during a normal boot of a good slot.
//! After each cut the machine boots a good slot, and a file written to the state partition
//! before the update is intact. Each test starts from a fresh copy of the image.
//!
//! `update-apply --stop-at POINT` stops at POINT with everything written so far synced and
//! waits; the test cuts the power there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use berth_formats::grubenv::{Slot, SlotState};
use berth_qemu_tests::update::{
    apply_command, later_version, os_release_field, running_version, update_status,
    wait_marked_good, OtherBuild, APPLY, BOOT, CMD, DISK_SIZE,
};
use berth_qemu_tests::{disk, disk_or_skip, fixture, Firmware, Fixture, Vm, VmConfig};

const MARKER: &str = "/var/lib/berth/before-update";

struct Machine {
    fx: Fixture,
    disk: PathBuf,
    cfg: VmConfig,
    bundle_len: u64,
    version: String,
}

impl Machine {
    /// A fresh image with a bundle of a newer build attached as vdb.
    fn new(test: &str) -> Option<Machine> {
        let (fx, disk_path) = disk_or_skip(test, Some(DISK_SIZE))?;
        let version = later_version(&running_version(), 1);
        let build =
            OtherBuild::assemble(&fx.path("next"), &fixture::default_image(), &version, test)
                .unwrap();
        let (bundle, bundle_len) = build.bundle(test, str::to_string).unwrap();
        // Every boot ends with QEMU: a reboot or a cut, and the test starts it again.
        let mut cfg = VmConfig::new(Firmware::Bios, disk_path.clone());
        cfg.extra_drives.push(bundle);
        Some(Machine {
            fx,
            disk: disk_path,
            cfg,
            bundle_len,
            version,
        })
    }

    /// Starts the machine and waits for `slot` to boot and its shell to answer.
    fn boot(&self, slot: &str) -> Vm {
        let mut vm = Vm::start(&self.cfg, &self.fx.dir).unwrap();
        vm.wait_for(&format!("berth: booting slot {slot}"), BOOT)
            .unwrap();
        vm.wait_for_shell(BOOT).unwrap();
        vm
    }

    /// The first boot: slot A, marked good, with the marker file on the state partition.
    fn first_boot(&self) -> Vm {
        let mut vm = self.boot("A");
        wait_marked_good(&mut vm, "A").unwrap();
        vm.run_ok(&format!("echo kept > {MARKER} && sync"), CMD)
            .unwrap();
        vm
    }

    fn apply(&self, vm: &mut Vm, args: &str) -> String {
        vm.run_ok(&apply_command("/dev/vdb", self.bundle_len, args), APPLY)
            .unwrap()
    }

    /// Applies with `--stop-at point` and cuts the power once the update stopped there.
    fn cut_at(&self, vm: &mut Vm, point: &str) {
        vm.send(&apply_command(
            "/dev/vdb",
            self.bundle_len,
            &format!("--stop-at {point}"),
        ))
        .unwrap();
        vm.wait_for(&format!("update-apply: stopped at {point}"), APPLY)
            .unwrap();
        vm.power_cut().unwrap();
    }

    fn assert_marker(&self, vm: &mut Vm) {
        let out = vm.run_ok(&format!("cat {MARKER}"), CMD).unwrap();
        assert_eq!(out.trim(), "kept");
    }

    /// After a cut before the flip: A boots, good and next, the marker intact; slot B is not
    /// bootable. Leaves the machine running on A.
    fn assert_still_on_a(&self, point: &str) -> Vm {
        let env = disk::boot_state(&self.disk).unwrap();
        assert_eq!(env.state(Slot::A), SlotState::Good, "{point}: {env:?}");
        assert_eq!(env.state(Slot::B), SlotState::Empty, "{point}: {env:?}");
        assert_eq!(env.next_boot(), Some(Slot::A), "{point}: {env:?}");
        let mut vm = self.boot("A");
        self.assert_marker(&mut vm);
        assert_eq!(
            os_release_field(&mut vm, "VERSION_ID").unwrap(),
            running_version()
        );
        let status = update_status(&mut vm).unwrap();
        assert_eq!(status["booted"], "A", "{point}: {status}");
        assert_eq!(status["next"], "A", "{point}: {status}");
        assert_eq!(status["slots"][0]["state"], "good", "{point}: {status}");
        assert_ne!(status["slots"][1]["state"], "new", "{point}: {status}");
        vm
    }
}

/// Cuts at each of `points` in turn on one machine (each cut leaves it on slot A, so the
/// next point starts from a machine that already survived the previous ones).
fn cut_while_writing(test: &str, points: &[&str]) -> Option<(Machine, Vm)> {
    let m = Machine::new(test)?;
    let mut vm = m.first_boot();
    for point in points {
        m.cut_at(&mut vm, point);
        vm = m.assert_still_on_a(point);
    }
    Some((m, vm))
}

#[test]
fn power_cut_before_writing_mid_root_and_after_the_root_keeps_slot_a() {
    let Some((_m, mut vm)) = cut_while_writing(
        "power_cut_root",
        &["before-write", "mid-root", "after-root"],
    ) else {
        return;
    };
    vm.power_cut().unwrap();
}

#[test]
fn power_cut_mid_kernel_and_mid_grubenv_keeps_slot_a_and_a_later_update_works() {
    let Some((m, mut vm)) = cut_while_writing("power_cut_boot", &["mid-kernel", "mid-grubenv"])
    else {
        return;
    };
    // The half-written boot state copy is ignored; the next update goes through.
    let applied = m.apply(&mut vm, "");
    assert!(applied.contains("\"slot\":\"B\""), "{applied}");
    vm.power_cut().unwrap();
    let mut vm = m.boot("B");
    m.assert_marker(&mut vm);
    assert_eq!(os_release_field(&mut vm, "VERSION_ID").unwrap(), m.version);
    wait_marked_good(&mut vm, "B").unwrap();
    vm.power_cut().unwrap();
}

/// An update killed where it stands (a cancel and the job's deadline send SIGKILL) leaves no
/// mount of the boot partition behind: the update status reads it, and the next update goes
/// through.
#[test]
fn a_killed_update_leaves_no_mount_of_the_boot_partition_behind() {
    let Some(m) = Machine::new("update_killed") else {
        return;
    };
    let mut vm = m.first_boot();
    let apply = apply_command("/dev/vdb", m.bundle_len, "--stop-at mid-root");
    vm.run_ok(&format!("({apply} >/tmp/apply.out 2>&1 &); true"), CMD)
        .unwrap();
    vm.run_until("cat /tmp/apply.out", APPLY, |out| {
        out.contains("update-apply: stopped at mid-root")
    })
    .unwrap();
    // Its read-write mount is its own: the machine's mount table does not show it. The
    // status says why it cannot read the boot partition meanwhile.
    let mounts = vm.run_ok("cat /proc/mounts", CMD).unwrap();
    assert!(!mounts.contains("update-esp"), "{mounts}");
    let (code, busy) = vm.run("berthctl update status", CMD).unwrap();
    assert!(
        code == 1 && busy.contains("an update is writing the boot partition"),
        "{code}: {busy}"
    );
    vm.run_ok("pkill -9 -f update-apply; sleep 1", CMD).unwrap();
    let status = update_status(&mut vm).unwrap();
    assert_eq!(status["booted"], "A", "{status}");
    let applied = m.apply(&mut vm, "");
    assert!(applied.contains("\"slot\":\"B\""), "{applied}");
    vm.power_cut().unwrap();
}

#[test]
fn power_cuts_after_the_flip_and_while_booting_never_lose_a_good_slot() {
    let Some(m) = Machine::new("power_cut_flip") else {
        return;
    };
    let mut vm = m.first_boot();
    // Right after the flip: the update has returned, nothing else happened.
    let applied = m.apply(&mut vm, "");
    assert!(applied.contains("\"slot\":\"B\""), "{applied}");
    vm.power_cut().unwrap();
    let env = disk::boot_state(&m.disk).unwrap();
    assert_eq!(
        env.state(Slot::B),
        SlotState::New { tries_left: 3 },
        "{env:?}"
    );

    // The first boot of the new slot, cut while PID 1 starts its units (before it is good).
    let mut vm = Vm::start(&m.cfg, &m.fx.dir).unwrap();
    vm.wait_for("berth: booting slot B", BOOT).unwrap();
    vm.wait_for("berth-init: control API on", BOOT).unwrap();
    vm.power_cut().unwrap();
    let env = disk::boot_state(&m.disk).unwrap();
    assert_eq!(
        env.state(Slot::B),
        SlotState::New { tries_left: 2 },
        "{env:?}"
    );
    assert_eq!(env.state(Slot::A), SlotState::Good, "{env:?}");

    // The next attempt comes up and is marked good.
    let mut vm = m.boot("B");
    m.assert_marker(&mut vm);
    assert_eq!(os_release_field(&mut vm, "VERSION_ID").unwrap(), m.version);
    wait_marked_good(&mut vm, "B").unwrap();
    vm.power_cut().unwrap();

    // A normal boot of a good slot cut early, twice: never a rollback, no attempt counted.
    for _ in 0..2 {
        let mut vm = Vm::start(&m.cfg, &m.fx.dir).unwrap();
        vm.wait_for("berth: booting slot B", BOOT).unwrap();
        vm.wait_for("berth-init: control API on", BOOT).unwrap();
        vm.power_cut().unwrap();
        let env = disk::boot_state(&m.disk).unwrap();
        assert_eq!(env.state(Slot::B), SlotState::Good, "{env:?}");
        assert_eq!(env.next_boot(), Some(Slot::B), "{env:?}");
    }
    let mut vm = m.boot("B");
    m.assert_marker(&mut vm);
    let status = update_status(&mut vm).unwrap();
    assert_eq!(status["booted"], "B", "{status}");
    assert_eq!(status["slots"][0]["state"], "good", "{status}");
    assert_eq!(status["slots"][1]["state"], "good", "{status}");
    vm.power_cut().unwrap();
}
