//! Booting the image: BIOS and UEFI reach all units running, the demo container answers
//! through the forwarded port, the root is a read-only dm-verity device, first boot applies the
//! config drive and grows the state partition, the boot is marked good, and the ACPI power
//! button shuts down in order with the state filesystem cleanly unmounted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use berth_formats::grubenv::{BootState, Slot};
use berth_qemu_tests::{disk, disk_or_skip, http, Firmware, Fixture, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);
const DISK_SIZE: u64 = 1 << 30;
/// Units in a fresh image: network, timesync, admin-shell, demo-web.
const DEFAULT_UNITS: u64 = 4;

/// The machine's uplink as QEMU's user network would lease it, set statically.
const STATIC_NETWORK: &str = "[network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\n\
                              gateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\n";

fn boot(test: &str, firmware: Firmware, user_data: &str) -> Option<(Fixture, Vm)> {
    let (fx, disk_path) = disk_or_skip(test, Some(DISK_SIZE))?;
    let cidata = fx
        .config_drive(&format!(
            "hostname = \"{}\"\n{user_data}",
            test.replace('_', "-")
        ))
        .unwrap();
    let mut cfg = VmConfig::new(firmware, disk_path);
    cfg.extra_drives.push(cidata);
    cfg.forward.push(80);
    let vm = Vm::start(&cfg, &fx.dir).unwrap();
    Some((fx, vm))
}

/// The network unit configured the first NIC with QEMU's user-network address, once, and said
/// how (`how`) in its log. Returns the log.
fn assert_uplink(vm: &mut Vm, how: &str) -> String {
    let log = vm.run_ok("berthctl logs network", CMD).unwrap();
    assert!(log.contains(&format!("network: eth0 {how}")), "{log}");
    let addresses = vm.run_ok("ip -4 -o addr show dev eth0", CMD).unwrap();
    let inet: Vec<&str> = addresses.lines().filter(|l| l.contains(" inet ")).collect();
    assert_eq!(inet.len(), 1, "{addresses}\n{log}");
    assert!(inet[0].contains("inet 10.0.2.15/24 "), "{addresses}\n{log}");
    log
}

/// The boot state on the ESP of a stopped VM's disk.
fn grubenv_of(disk_path: &Path) -> BootState {
    disk::boot_state(disk_path).unwrap()
}

#[test]
fn bios_boot_runs_units_serves_demo_and_powers_off_cleanly() {
    let Some((fx, mut vm)) = boot("bios_boot", Firmware::Bios, "") else {
        return;
    };
    vm.wait_for("berth: booting slot A", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    // GRUB read a valid boot state and found slot A good (no rescue boot).
    let console = vm.transcript();
    assert!(!console.contains("no valid boot state"), "{console}");
    assert!(!console.contains("rescue boot"), "{console}");
    let counts = vm.wait_all_units_running(DEFAULT_UNITS, BOOT).unwrap();
    assert_eq!(counts.failed, 0);

    // The demo runs as a container (overlay root from the preloaded image, bridge network,
    // port 80 mapped) and answers through QEMU's forwarded port.
    let demo = vm.run_ok("berthctl --json show demo-web", CMD).unwrap();
    assert!(demo.contains("\"kind\": \"container\""), "{demo}");
    let port = vm.host_port(80).unwrap();
    let body = http::wait_for_200(port, "/", Duration::from_secs(120)).unwrap();
    assert!(body.contains("Hello from Berth"), "{body}");

    // The config drive set the hostname.
    assert_eq!(vm.run_ok("hostname", CMD).unwrap().trim(), "bios-boot");
    // DHCP (no [network] on the config drive): the lease's address (QEMU's restricted user
    // network offers no router).
    let log = assert_uplink(&mut vm, "via DHCP");
    assert!(log.contains("network: eth0 bound 10.0.2.15/24"), "{log}");
    // System units ran at the lowest CPU weight while the demo was set up, and have the
    // default weight back.
    let share = vm.run_ok("dmesg | grep 'system units'", CMD).unwrap();
    assert!(
        share.contains("system units at CPU weight 1 while containers are set up"),
        "{share}"
    );
    assert!(
        share.contains("system units back at CPU weight 100 after"),
        "{share}"
    );
    assert_eq!(
        vm.run_ok("cat /sys/fs/cgroup/units/cpu.weight", CMD)
            .unwrap()
            .trim(),
        "100"
    );
    // RCU grace periods were expedited for the boot, and are normal once it settled (10 s).
    let grace = vm
        .run_ok(
            "for i in $(seq 90); do dmesg | grep -q 'RCU grace periods back' && break; \
             sleep 1; done; dmesg | grep 'RCU grace periods'; cat /sys/kernel/rcu_expedited",
            CMD + Duration::from_secs(90),
        )
        .unwrap();
    assert!(
        grace.contains("RCU grace periods expedited until the boot settles"),
        "{grace}"
    );
    assert!(
        grace.contains("RCU grace periods back to normal"),
        "{grace}"
    );
    assert!(grace.trim_end().ends_with('0'), "{grace}");
    // The bridge network is IPv4 only: IPv6 is off on its links (containers could otherwise
    // route the host through themselves with forged router advertisements), and no network
    // namespace carries an IPv6-in-IPv4 tunnel device.
    let links = vm
        .run_ok(
            "cat /proc/sys/net/ipv6/conf/berth0/disable_ipv6; ls /sys/class/net",
            CMD,
        )
        .unwrap();
    assert!(links.starts_with("1\n"), "{links}");
    assert!(!links.contains("sit0"), "{links}");

    // GRUB booted the kernel through the 16-bit protocol: its protected-mode code ran where
    // it was loaded (1 MiB), not moved there from a temporary address (`linux` sets 16 MiB).
    assert_eq!(
        vm.run_ok(
            "hexdump -s 532 -n 4 -e '\"%08x\"' /sys/kernel/boot_params/data",
            CMD
        )
        .unwrap()
        .trim(),
        "00100000"
    );

    // The root is dm-0, a read-only verity device over root A, mounted read-only.
    assert_eq!(
        vm.run_ok("cat /sys/block/dm-0/dm/name", CMD)
            .unwrap()
            .trim(),
        "berth-root"
    );
    assert_eq!(
        vm.run_ok("cat /sys/block/dm-0/ro", CMD).unwrap().trim(),
        "1"
    );
    let slaves = vm.run_ok("ls /sys/block/dm-0/slaves", CMD).unwrap();
    let root_a = disk::partition(&fx.path("disk.img"), "berth-root-a").unwrap();
    assert_eq!(slaves.trim(), format!("vda{}", root_a.number));
    let cmdline = vm.run_ok("cat /proc/cmdline", CMD).unwrap();
    assert!(cmdline.contains(" verity 1 PARTUUID="), "{cmdline}");
    // The kernel carries configs/kernel/patches: its init sections were unmapped and kept,
    // not poisoned and freed.
    let initmem = vm
        .run_ok("dmesg | grep 'kernel image (initmem)'", CMD)
        .unwrap();
    assert!(
        initmem.contains("Unmapping unused kernel image (initmem) memory"),
        "{initmem}"
    );
    assert!(!initmem.contains("Freeing"), "{initmem}");
    // Machines describe their CPUs in ACPI: the kernel does not scan the BIOS areas for the MP
    // table of pre-ACPI machines (SeaBIOS has one; the scan took ~10 ms under TCG).
    let (_, mp_table) = vm.run("dmesg | grep -c 'SMP MP-table'", CMD).unwrap();
    assert_eq!(mp_table.trim(), "0", "{mp_table}");
    // The kernel carries the CPU vulnerability mitigations (containers run untrusted code):
    // QEMU's CPU is affected by both Spectre variants, and both are mitigated.
    for bug in ["spectre_v1", "spectre_v2"] {
        let state = vm
            .run_ok(
                &format!("cat /sys/devices/system/cpu/vulnerabilities/{bug}"),
                CMD,
            )
            .unwrap();
        assert!(state.trim().starts_with("Mitigation:"), "{bug}: {state}");
    }
    // The kernel log is for CAP_SYSLOG only: it names every unit, container and address.
    assert_eq!(
        vm.run_ok("cat /proc/sys/kernel/dmesg_restrict", CMD)
            .unwrap()
            .trim(),
        "1"
    );
    let mounts = vm.run_ok("cat /proc/mounts", CMD).unwrap();
    let root_line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/"))
        .unwrap();
    assert!(root_line.contains(" erofs ro"), "{root_line}");
    // The demo's root is read-only: its directory is on the /run tmpfs (its layers on the
    // state partition), where overlayfs keeps its extended attributes as on a disk (no
    // fallback logged), and the image's unit cache held every unit (not rewritten at boot).
    let demo_root = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/run/berth/containers/demo-web/rootfs"));
    assert!(
        demo_root.is_some_and(|l| l.starts_with("overlay ")),
        "{mounts}"
    );
    let overlay = vm.run_ok("dmesg | grep overlayfs || true", CMD).unwrap();
    assert!(!overlay.contains("overlayfs"), "{overlay}");
    let log = vm.run_ok("dmesg | grep 'berth-init: '", CMD).unwrap();
    assert!(log.contains("loaded 4 units"), "{log}");
    assert!(!log.contains("unit cache"), "{log}");
    let (status, out) = vm.run("touch /tampered", CMD).unwrap();
    assert_ne!(status, 0);
    assert!(out.contains("Read-only file system"), "{out}");

    // First boot grew the state partition (64 MiB in the image) to the end of the 1 GiB disk.
    let state_start = disk::partition(&fx.path("disk.img"), "berth-state")
        .unwrap()
        .offset();
    let room = DISK_SIZE - state_start - (1 << 20);
    let df = vm.run_ok("df -k /var/lib/berth | tail -1", CMD).unwrap();
    let kib: u64 = df.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        kib * 1024 > room * 9 / 10,
        "state not grown to {room} bytes: {df}"
    );

    // Once every critical unit is healthy, berth-init marks the boot good (checked on disk
    // after poweroff).
    let deadline = std::time::Instant::now() + BOOT;
    while !vm
        .run("dmesg | grep 'marked good'", CMD)
        .unwrap()
        .1
        .contains("boot of slot A marked good")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "boot never marked good"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // ACPI power button: ordered shutdown, then QEMU exits 0 (poweroff, not a crash).
    vm.kernel_log_on_console(true).unwrap();
    vm.power_button().unwrap();
    let status = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    let log = vm.transcript();
    let stop = log
        .rfind("stopping all units")
        .expect("no ordered stop in the log");
    assert!(
        log[stop..].contains("Power down"),
        "did not power off after stopping units"
    );
    drop(vm);

    // The state filesystem was cleanly unmounted, and keeps its grown size.
    let disk_path = fx.path("disk.img");
    let state = disk::partition(&disk_path, "berth-state").unwrap();
    let sb = disk::ext4_state(&disk_path, &state).unwrap();
    assert!(sb.valid, "state filesystem not marked clean: {sb:?}");
    assert!(!sb.needs_recovery, "state journal needs recovery: {sb:?}");
    assert!(sb.blocks * sb.block_size > room * 9 / 10, "{sb:?}");
    assert!(
        state.size() > room * 9 / 10,
        "GPT entry not grown: {state:?}"
    );

    // Every critical unit became healthy, so the boot was marked good.
    let env = grubenv_of(&disk_path);
    assert!(env.is_ok(Slot::A) && !env.is_trying(Slot::A), "{env:?}");
    assert_eq!(env.next_boot(), Some(Slot::A));
}

#[test]
fn uefi_boot_runs_units_and_serves_demo() {
    let Some((_fx, mut vm)) = boot("uefi_boot", Firmware::Uefi, STATIC_NETWORK) else {
        return;
    };
    vm.wait_for("berth: booting slot A", BOOT).unwrap();
    // The kernel saw EFI firmware: this boot went through OVMF and GRUB's EFI image.
    vm.wait_for("efi: EFI v", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    vm.wait_all_units_running(DEFAULT_UNITS, BOOT).unwrap();
    // The machine's TPM reached the kernel through the firmware's ACPI tables.
    let tpm = vm
        .run_ok("ls /sys/firmware/acpi/tables/", Duration::from_secs(30))
        .unwrap();
    assert!(tpm.split_whitespace().any(|t| t == "TPM2"), "{tpm}");
    let port = vm.host_port(80).unwrap();
    let body = http::wait_for_200(port, "/", Duration::from_secs(120)).unwrap();
    assert!(body.contains("Hello from Berth"), "{body}");
    // The config drive's static [network]: the address, the default route and the DNS server,
    // without DHCP.
    let log = assert_uplink(&mut vm, "static 10.0.2.15/24 via 10.0.2.2");
    assert!(!log.contains("udhcpc"), "{log}");
    let routes = vm.run_ok("ip route", CMD).unwrap();
    assert!(routes.contains("default via 10.0.2.2 dev eth0"), "{routes}");
    let resolv = vm.run_ok("cat /run/berth/resolv.conf", CMD).unwrap();
    assert_eq!(resolv.trim(), "nameserver 10.0.2.3");
    vm.power_button().unwrap();
    let status = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
}
