//! The kernel fragment asks for everything a Berth machine needs built in (scripts/build-kernel.sh
//! then fails the build if olddefconfig drops any of it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn fragment() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/kernel/berth.config");
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn every_required_feature_is_built_in() {
    let f = fragment();
    let required = [
        // Boot: no modules, no initramfs; the verity root is opened by dm-mod.create=.
        "BLK_DEV_DM",
        "DM_INIT",
        "DM_VERITY",
        "CRYPTO_SHA256",
        "EFI_STUB",
        "ACPI",
        "ACPI_BUTTON",
        "INPUT_EVDEV",
        "SERIAL_8250_CONSOLE",
        "DEVTMPFS",
        "KERNEL_LZ4",
        // Disks and NICs of clouds, hypervisors and bare metal.
        "VIRTIO_PCI",
        "VIRTIO_BLK",
        "SCSI_VIRTIO",
        "VIRTIO_NET",
        "VIRTIO_CONSOLE",
        "HW_RANDOM_VIRTIO",
        "SATA_AHCI",
        "BLK_DEV_NVME",
        "E1000",
        "E1000E",
        // Filesystems.
        "EXT4_FS",
        "EROFS_FS",
        "VFAT_FS",
        "ISO9660_FS",
        "OVERLAY_FS",
        "EFI_PARTITION",
        // Containers: every cgroup v2 controller, every namespace, seccomp, networking.
        "CGROUPS",
        "MEMCG",
        "CGROUP_PIDS",
        "CGROUP_SCHED",
        "CFS_BANDWIDTH",
        "BLK_CGROUP",
        "CPUSETS",
        "CGROUP_MISC",
        "CGROUP_HUGETLB",
        "CGROUP_PERF",
        "CGROUP_BPF",
        "UTS_NS",
        "IPC_NS",
        "USER_NS",
        "PID_NS",
        "NET_NS",
        "TIME_NS",
        "SECCOMP_FILTER",
        "VETH",
        "BRIDGE",
        "NF_TABLES",
        "NFT_NAT",
        "NFT_MASQ",
        "NFT_CT",
        // Watchdogs.
        "WATCHDOG",
        "I6300ESB_WDT",
        "ITCO_WDT",
    ];
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|o| !f.lines().any(|l| l.trim() == format!("CONFIG_{o}=y")))
        .collect();
    assert!(missing.is_empty(), "fragment lacks: {missing:?}");
    for off in ["MODULES", "BLK_DEV_INITRD", "SERIO"] {
        assert!(
            f.lines()
                .any(|l| l.trim() == format!("# CONFIG_{off} is not set")),
            "{off} must be off"
        );
    }
}
