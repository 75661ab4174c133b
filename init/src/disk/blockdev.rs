//! Finding Berth's block devices without udev or blkid: partitions by their GPT name (the
//! kernel's `PARTNAME` in sysfs uevents) and filesystems by their label (read from the
//! superblock).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A partition as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDev {
    /// Kernel name (`vda5`, `nvme0n1p5`).
    pub name: String,
    /// The whole disk it belongs to (`vda`, `nvme0n1`).
    pub disk: String,
    /// 1-based partition number.
    pub number: u32,
}

/// Filesystems a config drive may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Vfat,
    Iso9660,
}

impl FsKind {
    pub fn mount_type(self) -> &'static str {
        match self {
            FsKind::Vfat => "vfat",
            FsKind::Iso9660 => "iso9660",
        }
    }
}

/// sysfs and /dev, rooted somewhere (tests use a fake tree).
#[derive(Debug, Clone)]
pub struct BlockDevices {
    sys_class_block: PathBuf,
    dev: PathBuf,
}

impl BlockDevices {
    pub fn system() -> BlockDevices {
        BlockDevices::at(Path::new("/sys/class/block"), Path::new("/dev"))
    }

    pub fn at(sys_class_block: &Path, dev: &Path) -> BlockDevices {
        BlockDevices {
            sys_class_block: sys_class_block.to_path_buf(),
            dev: dev.to_path_buf(),
        }
    }

    pub fn dev_path(&self, name: &str) -> PathBuf {
        self.dev.join(name)
    }

    /// Kernel names of every block device, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.sys_class_block)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn uevent(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.sys_class_block.join(name).join("uevent")).ok()
    }

    /// Whether `name` is one of the partitions a Berth disk is laid out with (GPT names
    /// `berth-*` and `bios-boot`): their content is Berth's own, never a config drive.
    fn is_berth_partition(&self, name: &str) -> bool {
        self.uevent(name).is_some_and(|u| {
            uevent_field(&u, "PARTNAME")
                .is_some_and(|p| p.starts_with("berth-") || p == "bios-boot")
        })
    }

    /// The partition whose GPT name is `partname`.
    pub fn partition_named(&self, partname: &str) -> Option<PartitionDev> {
        self.names().into_iter().find_map(|name| {
            let uevent = self.uevent(&name)?;
            let field = |k: &str| uevent_field(&uevent, k);
            if field("DEVTYPE")? != "partition" || field("PARTNAME")? != partname {
                return None;
            }
            let number = field("PARTN")?.parse().ok()?;
            // /sys/class/block/vda5 links to .../block/vda/vda5: the parent is the disk.
            let real = std::fs::canonicalize(self.sys_class_block.join(&name)).ok()?;
            let disk = real.parent()?.file_name()?.to_string_lossy().into_owned();
            Some(PartitionDev { name, disk, number })
        })
    }

    /// The first device (whole disk or partition) holding a vfat or iso9660 filesystem
    /// labelled `label` (case-insensitive).
    pub fn labelled(&self, label: &str) -> Option<(String, FsKind)> {
        self.names().into_iter().find_map(|name| {
            if name.starts_with("dm-") || name.starts_with("loop") || name.starts_with("ram") {
                return None;
            }
            // Each read is a cold block-device read on the boot's path: the boot disk's own
            // partitions are skipped by name.
            if self.is_berth_partition(&name) {
                return None;
            }
            // Labels live in the first 34 KiB (ISO 9660's volume descriptor at 32 KiB).
            let mut head = Vec::with_capacity(0x8800);
            let f = File::open(self.dev_path(&name)).ok()?;
            f.take(0x8800).read_to_end(&mut head).ok()?;
            let (kind, found) = probe_label(&head)?;
            found.eq_ignore_ascii_case(label).then_some((name, kind))
        })
    }
}

/// The value of `key` in a sysfs uevent file's text (`KEY=value` lines).
fn uevent_field<'a>(uevent: &'a str, key: &str) -> Option<&'a str> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// Reads the volume label of a FAT or ISO 9660 filesystem from its first 34 KiB.
pub fn probe_label(head: &[u8]) -> Option<(FsKind, String)> {
    let text = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .trim_end_matches([' ', '\0'])
            .to_string()
    };
    // ISO 9660: primary volume descriptor at 32 KiB, "CD001", volume id at +40 (32 bytes).
    if head.len() >= 0x8048 && head[0x8000] == 1 && &head[0x8001..0x8006] == b"CD001" {
        return Some((FsKind::Iso9660, text(&head[0x8028..0x8048])));
    }
    if head.len() < 512 || head[510..512] != [0x55, 0xaa] {
        return None;
    }
    // FAT32: extended BPB at 0x40 (signature 0x29 at 0x42, label at 0x47, type at 0x52).
    if &head[0x52..0x57] == b"FAT32" && head[0x42] == 0x29 {
        return Some((FsKind::Vfat, text(&head[0x47..0x52])));
    }
    // FAT12/16: extended BPB at 0x24 (signature at 0x26, label at 0x2b, type at 0x36).
    if &head[0x36..0x39] == b"FAT" && head[0x26] == 0x29 {
        return Some((FsKind::Vfat, text(&head[0x2b..0x36])));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        crate::testutil::scratch_dir(&format!("blockdev-{name}"))
    }

    #[test]
    fn finds_partition_by_gpt_name_and_its_disk() {
        let root = tmp("sysfs");
        let devices = root.join("devices/pci0/virtio1/block/vda");
        std::fs::create_dir_all(devices.join("vda5")).unwrap();
        std::fs::write(devices.join("uevent"), "DEVTYPE=disk\nDEVNAME=vda\n").unwrap();
        std::fs::write(
            devices.join("vda5/uevent"),
            "MAJOR=254\nMINOR=5\nDEVNAME=vda5\nDEVTYPE=partition\nPARTN=5\nPARTNAME=berth-state\n",
        )
        .unwrap();
        let class = root.join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&devices, class.join("vda")).unwrap();
        std::os::unix::fs::symlink(devices.join("vda5"), class.join("vda5")).unwrap();
        let b = BlockDevices::at(&class, Path::new("/dev"));
        assert_eq!(
            b.partition_named("berth-state"),
            Some(PartitionDev {
                name: "vda5".into(),
                disk: "vda".into(),
                number: 5
            })
        );
        assert_eq!(b.partition_named("berth-boot"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn labels_are_not_looked_for_on_berths_own_partitions() {
        let root = tmp("labels");
        let class = root.join("class/block");
        let dev = root.join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        let mut fat = vec![0u8; 0x8800];
        fat[510] = 0x55;
        fat[511] = 0xaa;
        fat[0x26] = 0x29;
        fat[0x2b..0x36].copy_from_slice(b"CIDATA     ");
        fat[0x36..0x39].copy_from_slice(b"FAT");
        for (name, partname) in [("vda1", Some("berth-boot")), ("vdb", None)] {
            std::fs::create_dir_all(class.join(name)).unwrap();
            let uevent = match partname {
                Some(p) => format!("DEVTYPE=partition\nPARTN=1\nPARTNAME={p}\n"),
                None => "DEVTYPE=disk\n".to_string(),
            };
            std::fs::write(class.join(name).join("uevent"), uevent).unwrap();
            std::fs::write(dev.join(name), &fat).unwrap();
        }
        let b = BlockDevices::at(&class, &dev);
        assert!(b.is_berth_partition("vda1"));
        assert!(!b.is_berth_partition("vdb"));
        assert_eq!(b.labelled("cidata"), Some(("vdb".into(), FsKind::Vfat)));
        std::fs::remove_file(dev.join("vdb")).unwrap();
        assert_eq!(b.labelled("cidata"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn reads_labels_of_real_fat_filesystems() {
        let dir = tmp("fat");
        for (size, fat) in [("1024", "12"), ("40000", "32")] {
            let img = dir.join(format!("fat{fat}.img"));
            let ok = std::process::Command::new("mkfs.vfat")
                .args(["-C", "-F", fat, "-n", "cidata"])
                .arg(&img)
                .arg(size)
                .output();
            let Ok(out) = ok else {
                eprintln!("mkfs.vfat missing; skipping");
                return;
            };
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let head = std::fs::read(&img).unwrap();
            assert_eq!(
                probe_label(&head[..0x8800]),
                Some((FsKind::Vfat, "cidata".to_string())),
                "FAT{fat}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_iso9660_volume_id_and_ignores_other_data() {
        let mut head = vec![0u8; 0x8800];
        head[0x8000] = 1;
        head[0x8001..0x8006].copy_from_slice(b"CD001");
        head[0x8028..0x8048].copy_from_slice(b"CIDATA                          ");
        assert_eq!(probe_label(&head), Some((FsKind::Iso9660, "CIDATA".into())));
        assert_eq!(probe_label(&[0u8; 4096]), None);
        assert_eq!(probe_label(&[0x55u8; 10]), None);
    }
}
