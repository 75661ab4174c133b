//! The state partition is created when it is blank: a disk whose state partition was wiped
//! boots, gets an empty ext4 state filesystem grown to the partition, and keeps what is written
//! to it across a clean shutdown. A state partition that holds something else is never
//! overwritten: the boot stops in the emergency shell on the console, not in a kernel panic.
//! A container that fills the partition harms nothing else: the supervisor, the API and the
//! other units carry on, the machine boots again, and removing the unit gives the space back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::FileExt;
use std::time::Duration;

use berth_qemu_tests::{disk, disk_or_skip, Firmware, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);
const DISK_SIZE: u64 = 1 << 30;

#[test]
fn a_wiped_state_partition_is_created_and_grown_at_boot() {
    let Some((fx, disk_path)) = disk_or_skip("blank_state", Some(DISK_SIZE)) else {
        return;
    };
    let state = disk::partition(&disk_path, "berth-state").unwrap();
    disk::zero_partition(&disk_path, &state).unwrap();
    assert!(disk::ext4_state(&disk_path, &state).is_err(), "not wiped");

    let mut vm = Vm::start(&VmConfig::new(Firmware::Bios, disk_path.clone()), &fx.dir).unwrap();
    vm.wait_for("(created: the partition was blank)", BOOT)
        .unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    let mounts = vm.run_ok("cat /proc/mounts", CMD).unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/var/lib/berth"))
        .unwrap_or_else(|| panic!("state not mounted:\n{mounts}"));
    assert!(line.contains(" ext4 rw"), "{line}");
    // Grown to the end of the 1 GiB disk like on any first boot.
    let room = DISK_SIZE - state.offset() - (1 << 20);
    let df = vm.run_ok("df -k /var/lib/berth | tail -1", CMD).unwrap();
    let kib: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(kib * 1024 > room * 9 / 10, "not grown to {room}: {df}");
    // berth-init's own state is there (unit logs), and so is what an operator writes.
    vm.run_ok(
        "test -d /var/lib/berth/logs && echo kept > /var/lib/berth/marker",
        CMD,
    )
    .unwrap();

    let sb = power_off_cleanly(vm, &disk_path);
    assert!(sb.blocks * sb.block_size > room * 9 / 10, "{sb:?}");
}

#[test]
fn a_state_partition_that_does_not_mount_is_kept_and_pid1_opens_an_emergency_shell() {
    let Some((fx, disk_path)) = disk_or_skip("broken_state", None) else {
        return;
    };
    let state = disk::partition(&disk_path, "berth-state").unwrap();
    // Not blank and not ext4: 4 KiB of 0xaa where the superblock was.
    let junk = vec![0xaau8; 4096];
    let f = std::fs::File::options()
        .write(true)
        .open(&disk_path)
        .unwrap();
    f.write_all_at(&junk, state.offset()).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let mut vm = Vm::start(&VmConfig::new(Firmware::Bios, disk_path.clone()), &fx.dir).unwrap();
    vm.wait_for("boot failed: mount-state-partition", BOOT)
        .unwrap();
    vm.wait_for("starting an emergency shell on the console", CMD)
        .unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    // The shell is a child of a live PID 1 (berth-init), whose boot stopped before any unit.
    assert_eq!(vm.run_ok("cat /proc/1/comm", CMD).unwrap().trim(), "init");
    let ps = vm.run_ok("ls /proc | grep -c '^[0-9]'", CMD).unwrap();
    assert!(ps.trim().parse::<u32>().unwrap() < 100, "{ps}");
    let (status, _) = vm
        .run("grep -q ' /var/lib/berth ' /proc/mounts", CMD)
        .unwrap();
    assert_ne!(status, 0, "the broken state partition was mounted");
    drop(vm);
    let log = std::fs::read_to_string(fx.path("console.log")).unwrap();
    assert!(log.contains("berth-emergency# "), "{log}");
    assert!(!log.contains("Kernel panic"), "{log}");
    // What the partition held is untouched.
    let mut head = vec![0u8; 4096];
    let f = std::fs::File::open(&disk_path).unwrap();
    f.read_exact_at(&mut head, state.offset()).unwrap();
    assert_eq!(head, junk);
}

/// A container whose writable root fills the state partition (its upper directory lives
/// there). As root it may take ext4's reserved blocks too. It starts once the demo is healthy:
/// a container whose setup must write (an image lease, a writable root) cannot start on a full
/// disk, and what this test checks is that what runs keeps running.
const FILLER: &str = r#"
hostname = "full-state"

[units]
filler = '''
[unit]
description = "Writes until the state partition is full, then waits"
after = ["demo-web"]
[container]
image = "berth.local/demo-web:latest"
command = ["sh", "-c", "dd if=/dev/zero of=/fill bs=1M; sync; exec sleep 3600"]
[service]
restart = "never"
'''
"#;

/// `berthctl`'s answer to a unit file, installed through the API from the admin shell's
/// /tmp (a tmpfs): `(exit status, output)`.
fn apply_extra_unit(vm: &mut Vm) -> (i32, String) {
    vm.run(
        "printf '[container]\\ncommand = [\"sleep\", \"3600\"]\\n' > /tmp/extra.toml \
         && berthctl apply /tmp/extra.toml",
        CMD,
    )
    .unwrap()
}

/// `(used, available)` KiB of the state filesystem, from `df`.
fn state_usage(vm: &mut Vm) -> (u64, u64) {
    let out = vm.run_ok("df -k /var/lib/berth | tail -1", CMD).unwrap();
    let fields: Vec<u64> = out
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    match fields[..] {
        [_, used, avail, ..] => (used, avail),
        _ => panic!("df: {out:?}"),
    }
}

/// Waits until the filler's shell has exec'd `sleep`: its `dd` ran into a full disk.
fn wait_until_filled(vm: &mut Vm) {
    vm.run_until(
        "cat /proc/$(berthctl --json show filler | sed -n 's/.*\"pid\": \\([0-9]*\\).*/\\1/p')/comm",
        BOOT,
        |out| out.lines().any(|l| l.trim() == "sleep"),
    )
    .unwrap();
}

/// The demo still answers through its forwarded port.
fn assert_serving(vm: &mut Vm) {
    let port = vm.host_port(80).unwrap();
    let body = berth_qemu_tests::http::wait_for_200(port, "/", Duration::from_secs(120)).unwrap();
    assert!(body.contains("Hello from Berth"), "{body}");
}

#[test]
fn a_container_that_fills_the_state_partition_harms_nothing_else() {
    let Some((fx, disk_path)) = disk_or_skip("full_state", None) else {
        return;
    };
    let mut cfg = VmConfig::new(Firmware::Bios, disk_path.clone());
    cfg.extra_drives.push(fx.config_drive(FILLER).unwrap());
    cfg.forward.push(80);
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    wait_until_filled(&mut vm);
    let (used, avail) = state_usage(&mut vm);
    assert_eq!(avail, 0, "not full: {used} KiB used, {avail} KiB available");

    // The supervisor, the API and the units that run carry on.
    let counts = vm.wait_all_units_running(5, BOOT).unwrap();
    assert_eq!(counts.failed, 0, "{counts:?}");
    assert_serving(&mut vm);
    // A write through the API either fits in what is left or is refused with the reason,
    // and berth-init answers the next request.
    let (status, out) = apply_extra_unit(&mut vm);
    if status != 0 {
        assert!(out.contains("No space left on device"), "{out}");
        let (status, out) = vm.run("berthctl show extra", CMD).unwrap();
        assert_ne!(status, 0, "a refused unit was installed: {out}");
    }
    assert_eq!(vm.run_ok("cat /proc/1/comm", CMD).unwrap().trim(), "init");

    // A machine with a full state partition powers off cleanly and boots again.
    power_off_cleanly(vm, &disk_path);
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    // The demo's image lease is already written: it starts on the full disk. (The filler may
    // fail to start again; that is its own business.)
    vm.run_until("berthctl ps", BOOT, |ps| {
        ps.lines()
            .any(|l| l.starts_with("demo-web ") && l.contains(" healthy "))
    })
    .unwrap();
    assert_serving(&mut vm);
    assert_eq!(vm.run_ok("cat /proc/1/comm", CMD).unwrap().trim(), "init");

    // Removing the filler gives its space back, and the API's writes work again.
    vm.run_ok("berthctl rm filler", CMD).unwrap();
    // The container's directory goes in a cleanup task after the answer.
    let deadline = std::time::Instant::now() + CMD;
    loop {
        let (_, avail) = state_usage(&mut vm);
        if avail > 16 << 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "space not given back: {avail} KiB available"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, out) = apply_extra_unit(&mut vm);
    assert_eq!(status, 0, "{out}");
    power_off_cleanly(vm, &disk_path);
}

/// Presses the power button, waits for QEMU to exit, and returns the state filesystem's
/// superblock, checked clean (unmounted in order, nothing left in the journal).
fn power_off_cleanly(mut vm: Vm, disk_path: &std::path::Path) -> disk::Ext4State {
    vm.power_button().unwrap();
    let status = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    drop(vm);
    let state = disk::partition(disk_path, "berth-state").unwrap();
    let sb = disk::ext4_state(disk_path, &state).unwrap();
    assert!(sb.valid && !sb.needs_recovery, "{sb:?}");
    sb
}
