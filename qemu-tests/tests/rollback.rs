//! Automatic rollback: slot A installs a new system into slot B that cannot come up, and the
//! machine ends on slot A by itself, running, with the failure reported by the update status
//! and the state partition intact. Each case boots a fresh copy of the image; the VM reboots
//! on its own (no `-no-reboot`), as a real machine would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use berth_formats::grubenv::{Slot, SlotState};
use berth_qemu_tests::update::{
    apply_command, later_version, os_release_field, running_version, update_status,
    wait_marked_good, OtherBuild, APPLY, BOOT, CMD, DISK_SIZE,
};
use berth_qemu_tests::{disk, disk_or_skip, fixture, Firmware, Fixture, Vm, VmConfig};

/// A machine on slot A with a new system in slot B that boots next.
struct Installed {
    fx: Fixture,
    disk: std::path::PathBuf,
    vm: Vm,
    cfg: VmConfig,
    version: String,
}

/// Boots a fresh image on slot A (with `user_data` on a config drive, if any), leaves a file
/// on the state partition, and applies a bundle of another build whose kernel arguments are
/// edited by `edit`, with `tries` attempts.
fn install(
    test: &str,
    user_data: Option<&str>,
    edit: impl Fn(&str) -> String,
    tries: u8,
) -> Option<Installed> {
    let (fx, disk_path) = disk_or_skip(test, Some(DISK_SIZE))?;
    let running = running_version();
    let version = later_version(&running, 1);
    let build =
        OtherBuild::assemble(&fx.path("next"), &fixture::default_image(), &version, test).unwrap();
    let (bundle, len) = build.bundle(test, edit).unwrap();
    let mut cfg = VmConfig::new(Firmware::Bios, disk_path.clone());
    cfg.no_reboot = false;
    cfg.extra_drives.push(bundle);
    if let Some(u) = user_data {
        cfg.extra_drives.push(fx.config_drive(u).unwrap());
    }
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for("berth: booting slot A", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    wait_marked_good(&mut vm, "A").unwrap();
    vm.run_ok("echo before-update > /var/lib/berth/marker && sync", CMD)
        .unwrap();
    let applied = vm
        .run_ok(
            &apply_command("/dev/vdb", len, &format!("--tries {tries}")),
            APPLY,
        )
        .unwrap();
    assert!(applied.contains("\"slot\":\"B\""), "{applied}");
    Some(Installed {
        fx,
        disk: disk_path,
        vm,
        cfg,
        version,
    })
}

impl Installed {
    /// Reboots into B and waits until B is given up and A runs again; returns the update
    /// status A reports.
    fn reboot_and_expect_rollback(&mut self, patience: Duration) -> serde_json::Value {
        // SIGUSR1: PID 1's ordered reboot.
        self.vm.send("kill -USR1 1").unwrap();
        self.expect_rollback(patience)
    }

    /// Waits for the boot of B, then for A to run again; returns A's update status.
    fn expect_rollback(&mut self, patience: Duration) -> serde_json::Value {
        self.vm.wait_for("berth: booting slot B", BOOT).unwrap();
        self.vm.wait_for("berth: booting slot A", patience).unwrap();
        self.vm.wait_for_shell(BOOT).unwrap();
        assert_eq!(
            os_release_field(&mut self.vm, "VERSION_ID").unwrap(),
            running_version()
        );
        assert_eq!(
            self.vm
                .run_ok("cat /var/lib/berth/marker", CMD)
                .unwrap()
                .trim(),
            "before-update"
        );
        let status = update_status(&mut self.vm).unwrap();
        assert_eq!(status["booted"], "A", "{status}");
        assert_eq!(status["next"], "A", "{status}");
        assert_eq!(status["slots"][0]["state"], "good", "{status}");
        assert_eq!(status["slots"][1]["state"], "retired", "{status}");
        assert_eq!(
            status["slots"][1]["failure"]["version"],
            self.version.as_str(),
            "{status}"
        );
        // berthctl's table says it too.
        let table = self.vm.run_ok("berthctl update status", CMD).unwrap();
        assert!(
            table.contains(&format!("slot B ({}) failed:", self.version)),
            "{table}"
        );
        status
    }

    /// Powers off and checks the boot state on the disk: A good and first, B retired.
    fn finish(mut self) {
        self.vm.power_button().unwrap();
        assert!(self
            .vm
            .wait_exit(Duration::from_secs(120))
            .unwrap()
            .success());
        let env = disk::boot_state(&self.disk).unwrap();
        assert_eq!(env.state(Slot::A), SlotState::Good, "{env:?}");
        assert_eq!(env.state(Slot::B), SlotState::Empty, "{env:?}");
        assert_eq!(env.next_boot(), Some(Slot::A), "{env:?}");
        let _ = (&self.fx, &self.cfg);
    }
}

fn reason(status: &serde_json::Value) -> String {
    status["slots"][1]["failure"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn with_init(init: &'static str) -> impl Fn(&str) -> String {
    move |args: &str| args.replace("init=/sbin/init", &format!("init={init}"))
}

#[test]
fn a_kernel_panic_on_every_attempt_ends_on_slot_a() {
    // The kernel panics when the init it was told to run does not exist (`panic=5` reboots).
    let Some(mut m) = install("rollback_panic", None, with_init("/nonexistent"), 3) else {
        return;
    };
    let status = m.reboot_and_expect_rollback(BOOT);
    let console = m.vm.transcript();
    assert_eq!(
        console.matches("Kernel panic").count(),
        3,
        "one panic per attempt"
    );
    assert!(console.contains("slot B failed all its boot attempts; retiring it"));
    assert!(
        reason(&status).contains("before Berth's PID 1 started"),
        "{status}"
    );
    m.finish();
}

#[test]
fn a_root_that_fails_verification_ends_on_slot_a() {
    let Some(mut m) = install("rollback_verity", None, str::to_string, 2) else {
        return;
    };
    // The bundle was good; the slot is corrupted afterwards, on the disk itself (one byte
    // of the root's first block, which mounting it reads).
    m.vm.power_button().unwrap();
    assert!(m.vm.wait_exit(Duration::from_secs(120)).unwrap().success());
    let part = disk::partition(&m.disk, "berth-root-b").unwrap();
    disk::flip_byte(&m.disk, part.first_lba * 512 + 1024 + 8).unwrap();
    m.vm = Vm::start(&m.cfg, &m.fx.dir).unwrap();
    let status = m.expect_rollback(BOOT);
    let console = m.vm.transcript();
    assert!(console.contains("verity"), "no verity error on the console");
    assert!(
        reason(&status).contains("before Berth's PID 1 started"),
        "{status}"
    );
    m.finish();
}

#[test]
fn a_pid_1_that_exits_ends_on_slot_a() {
    // PID 1 exits at once: the kernel panics ("Attempted to kill init").
    let Some(mut m) = install("rollback_exit", None, with_init("/bin/false"), 2) else {
        return;
    };
    let status = m.reboot_and_expect_rollback(BOOT);
    assert!(m.vm.transcript().contains("Attempted to kill init"));
    assert!(
        reason(&status).contains("before Berth's PID 1 started"),
        "{status}"
    );
    m.finish();
}

#[test]
fn a_hung_pid_1_is_reset_by_the_watchdog_and_ends_on_slot_a() {
    // berth.fault=hang: berth-init arms the watchdog, records its attempt, then stops.
    let Some(mut m) = install(
        "rollback_hang",
        None,
        |args: &str| format!("{args} berth.fault=hang"),
        1,
    ) else {
        return;
    };
    let status = m.reboot_and_expect_rollback(Duration::from_secs(400));
    assert!(m
        .vm
        .transcript()
        .contains("berth.fault=hang: PID 1 stops here"));
    assert!(reason(&status).contains("PID 1 started"), "{status}");
    m.finish();
}

const UNHEALTHY_ON_B: &str = r#"
hostname = "rollback-health"

[machine.update]
health_deadline = "20s"

[units]
gatekeeper = '''
[unit]
description = "Healthy on slot A only"
critical = true
[container]
command = ["sleep", "100000"]
[health]
exec = ["sh", "-c", "! grep -q berth.slot=B /proc/cmdline"]
interval = "1s"
retries = 1
'''
"#;

#[test]
fn a_critical_unit_unhealthy_past_the_deadline_ends_on_slot_a() {
    let Some(mut m) = install("rollback_health", Some(UNHEALTHY_ON_B), str::to_string, 3) else {
        return;
    };
    let status = m.reboot_and_expect_rollback(BOOT);
    let r = reason(&status);
    assert!(
        r.contains("critical units not healthy within 20s: gatekeeper"),
        "{status}"
    );
    // Retired by berth-init at its first attempt, not by running out of attempts.
    assert!(!m
        .vm
        .transcript()
        .contains("slot B failed all its boot attempts"));
    m.finish();
}
