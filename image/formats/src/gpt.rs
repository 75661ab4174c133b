//! GUID partition tables: written by the image builder, read and grown by berth-init.
//!
//! Sectors are 512 bytes. The table has 128 entries of 128 bytes (32 sectors) after the primary
//! header at LBA 1, and a mirrored copy at the end of the disk. Sector 0 is a protective MBR;
//! its first 440 bytes (boot code) belong to the bootloader and are never touched here.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::guid::Guid;

pub const SECTOR: u64 = 512;
const ENTRY_COUNT: u32 = 128;
const ENTRY_SIZE: u32 = 128;
const ENTRY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64) / SECTOR;
const HEADER_SIZE: u32 = 92;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
/// Primary header and entries: LBA 0 (MBR), 1 (header), 2..34 (entries).
pub const FIRST_USABLE_LBA: u64 = 2 + ENTRY_SECTORS;
const MAX_NAME_UNITS: usize = 36;

pub mod types {
    //! Partition type GUIDs Berth uses.
    pub const BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
    pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    /// Root partition (x86-64), from the Discoverable Partitions Specification.
    pub const ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
    pub const LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("disk I/O at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("no GPT: {0}")]
    Missing(&'static str),
    #[error("GPT {what} checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("unsupported GPT: {0}")]
    Unsupported(String),
    #[error("partition {name:?}: {problem}")]
    Partition { name: String, problem: String },
    #[error("disk of {sectors} sectors is too small for a GPT")]
    DiskTooSmall { sectors: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number (entry index + 1), as the kernel names it (`vda3`).
    pub number: u32,
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Guid,
    pub partitions: Vec<Partition>,
}

/// The usable area of a disk of `disk_sectors` sectors: (first, last) LBA, inclusive.
pub fn usable_range(disk_sectors: u64) -> Result<(u64, u64), GptError> {
    let backup_area = 1 + ENTRY_SECTORS;
    if disk_sectors < FIRST_USABLE_LBA + backup_area + 1 {
        return Err(GptError::DiskTooSmall {
            sectors: disk_sectors,
        });
    }
    Ok((FIRST_USABLE_LBA, disk_sectors - backup_area - 1))
}

impl Gpt {
    pub fn find(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// Checks that every partition fits the disk, has a valid name, and that none overlap.
    pub fn validate(&self, disk_sectors: u64) -> Result<(), GptError> {
        let (first, last) = usable_range(disk_sectors)?;
        let bad = |p: &Partition, problem: String| GptError::Partition {
            name: p.name.clone(),
            problem,
        };
        for p in &self.partitions {
            if p.number == 0 || p.number > ENTRY_COUNT {
                return Err(bad(p, format!("number {} outside 1..=128", p.number)));
            }
            if p.name.encode_utf16().count() > MAX_NAME_UNITS {
                return Err(bad(p, "name longer than 36 UTF-16 units".into()));
            }
            if p.type_guid.is_zero() {
                return Err(bad(p, "zero type GUID marks an unused entry".into()));
            }
            if p.first_lba < first || p.last_lba > last || p.first_lba > p.last_lba {
                return Err(bad(
                    p,
                    format!(
                        "sectors {}..={} outside usable {first}..={last}",
                        p.first_lba, p.last_lba
                    ),
                ));
            }
            for q in &self.partitions {
                if q.number == p.number && !std::ptr::eq(p, q) {
                    return Err(bad(p, format!("number {} used twice", p.number)));
                }
                if q.number != p.number && p.first_lba <= q.last_lba && q.first_lba <= p.last_lba {
                    return Err(bad(p, format!("overlaps {:?}", q.name)));
                }
            }
        }
        Ok(())
    }

    /// Writes the protective MBR's partition record, the primary and the backup table.
    pub fn write<D: Write + Seek>(&self, dev: &mut D, disk_sectors: u64) -> Result<(), GptError> {
        self.validate(disk_sectors)?;
        let (first_usable, last_usable) = usable_range(disk_sectors)?;
        let entries = self.entry_array();
        let entries_crc = crc32fast::hash(&entries);
        let backup_lba = disk_sectors - 1;
        let backup_entries_lba = backup_lba - ENTRY_SECTORS;
        let header = |current: u64, alternate: u64, entries_lba: u64| {
            let mut h = [0u8; SECTOR as usize];
            h[0..8].copy_from_slice(SIGNATURE);
            h[8..12].copy_from_slice(&REVISION.to_le_bytes());
            h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
            h[24..32].copy_from_slice(&current.to_le_bytes());
            h[32..40].copy_from_slice(&alternate.to_le_bytes());
            h[40..48].copy_from_slice(&first_usable.to_le_bytes());
            h[48..56].copy_from_slice(&last_usable.to_le_bytes());
            h[56..72].copy_from_slice(&self.disk_guid.to_disk());
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
            h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
            h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
            let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        write_at(dev, 440, &protective_mbr_tail(disk_sectors))?;
        write_at(dev, SECTOR, &header(1, backup_lba, 2))?;
        write_at(dev, 2 * SECTOR, &entries)?;
        write_at(dev, backup_entries_lba * SECTOR, &entries)?;
        write_at(
            dev,
            backup_lba * SECTOR,
            &header(backup_lba, 1, backup_entries_lba),
        )?;
        dev.flush()
            .map_err(|source| GptError::Io { offset: 0, source })
    }

    /// Reads and verifies the primary table.
    pub fn read<D: Read + Seek>(dev: &mut D) -> Result<Gpt, GptError> {
        let mut h = [0u8; SECTOR as usize];
        read_at(dev, SECTOR, &mut h)?;
        if &h[0..8] != SIGNATURE {
            return Err(GptError::Missing("no \"EFI PART\" signature at LBA 1"));
        }
        let header_size = le32(&h[12..16]);
        if header_size < HEADER_SIZE || header_size as u64 > SECTOR {
            return Err(GptError::Unsupported(format!("header size {header_size}")));
        }
        let stored = le32(&h[16..20]);
        let mut zeroed = h;
        zeroed[16..20].fill(0);
        let computed = crc32fast::hash(&zeroed[..header_size as usize]);
        if stored != computed {
            return Err(GptError::Checksum {
                what: "header",
                stored,
                computed,
            });
        }
        let entries_lba = le64(&h[72..80]);
        let count = le32(&h[80..84]);
        let size = le32(&h[84..88]);
        if size != ENTRY_SIZE || count == 0 || count > 1024 {
            return Err(GptError::Unsupported(format!(
                "{count} entries of {size} bytes"
            )));
        }
        let mut entries = vec![0u8; (count * size) as usize];
        read_at(dev, entries_lba * SECTOR, &mut entries)?;
        let stored = le32(&h[88..92]);
        let computed = crc32fast::hash(&entries);
        if stored != computed {
            return Err(GptError::Checksum {
                what: "entry array",
                stored,
                computed,
            });
        }
        if count != ENTRY_COUNT {
            return Err(GptError::Unsupported(format!(
                "{count} entries (Berth uses 128)"
            )));
        }
        let mut partitions = Vec::new();
        for (i, e) in entries.chunks_exact(ENTRY_SIZE as usize).enumerate() {
            let type_guid = Guid::from_disk(arr16(&e[0..16]));
            if type_guid.is_zero() {
                continue;
            }
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            partitions.push(Partition {
                number: i as u32 + 1,
                type_guid,
                guid: Guid::from_disk(arr16(&e[16..32])),
                first_lba: le64(&e[32..40]),
                last_lba: le64(&e[40..48]),
                attributes: le64(&e[48..56]),
                name: String::from_utf16_lossy(&units),
            });
        }
        Ok(Gpt {
            disk_guid: Guid::from_disk(arr16(&h[56..72])),
            partitions,
        })
    }

    /// Extends the partition `name`, which must end last on the disk, to the end of the usable
    /// area of a disk of `disk_sectors` sectors. Returns the grown partition, or `None` when it
    /// already reaches the end (within one MiB of alignment slack).
    pub fn grow_to_end(
        &mut self,
        name: &str,
        disk_sectors: u64,
    ) -> Result<Option<Partition>, GptError> {
        let (_, last_usable) = usable_range(disk_sectors)?;
        let last_end = self
            .partitions
            .iter()
            .map(|p| p.last_lba)
            .max()
            .unwrap_or(0);
        let part = self
            .partitions
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| GptError::Partition {
                name: name.into(),
                problem: "not in the partition table".into(),
            })?;
        if part.last_lba != last_end {
            return Err(GptError::Partition {
                name: name.into(),
                problem: "is not the last partition on the disk".into(),
            });
        }
        // Keep the end MiB-aligned, like the image builder lays partitions out.
        let align = (1 << 20) / SECTOR;
        let new_last = ((last_usable + 1) / align * align).saturating_sub(1);
        if new_last <= part.last_lba + align {
            return Ok(None);
        }
        part.last_lba = new_last;
        Ok(Some(part.clone()))
    }

    fn entry_array(&self) -> Vec<u8> {
        let mut out = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
        for p in &self.partitions {
            let at = (p.number as usize - 1) * ENTRY_SIZE as usize;
            let e = &mut out[at..at + ENTRY_SIZE as usize];
            e[0..16].copy_from_slice(&p.type_guid.to_disk());
            e[16..32].copy_from_slice(&p.guid.to_disk());
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (i, unit) in p.name.encode_utf16().take(MAX_NAME_UNITS).enumerate() {
                e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
            }
        }
        out
    }
}

/// Bytes 440..512 of the protective MBR: disk signature, one 0xEE partition covering the disk
/// (capped at 2^32-1 sectors), the 0x55AA signature.
fn protective_mbr_tail(disk_sectors: u64) -> [u8; 72] {
    let mut t = [0u8; 72];
    let rec = &mut t[6..22];
    rec[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    rec[4] = 0xee;
    rec[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    rec[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = (disk_sectors - 1).min(u32::MAX as u64) as u32;
    rec[12..16].copy_from_slice(&size.to_le_bytes());
    t[70] = 0x55;
    t[71] = 0xaa;
    t
}

fn write_at<D: Write + Seek>(dev: &mut D, offset: u64, data: &[u8]) -> Result<(), GptError> {
    dev.seek(SeekFrom::Start(offset))
        .and_then(|_| dev.write_all(data))
        .map_err(|source| GptError::Io { offset, source })
}

fn read_at<D: Read + Seek>(dev: &mut D, offset: u64, buf: &mut [u8]) -> Result<(), GptError> {
    dev.seek(SeekFrom::Start(offset))
        .and_then(|_| dev.read_exact(buf))
        .map_err(|source| GptError::Io { offset, source })
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn arr16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 2048;

    fn sample() -> Gpt {
        let t = |s| Guid::parse(s).unwrap();
        Gpt {
            disk_guid: Guid::random().unwrap(),
            partitions: vec![
                Partition {
                    number: 1,
                    type_guid: t(types::ESP),
                    guid: Guid::random().unwrap(),
                    first_lba: MIB,
                    last_lba: 3 * MIB - 1,
                    attributes: 0,
                    name: "berth-boot".into(),
                },
                Partition {
                    number: 2,
                    type_guid: t(types::LINUX_DATA),
                    guid: Guid::random().unwrap(),
                    first_lba: 3 * MIB,
                    last_lba: 5 * MIB - 1,
                    attributes: 0,
                    name: "berth-state".into(),
                },
            ],
        }
    }

    #[test]
    fn write_then_read_round_trips_and_both_copies_agree() {
        let sectors = 8 * MIB;
        let mut disk = Cursor::new(vec![0u8; (sectors * SECTOR) as usize]);
        let gpt = sample();
        gpt.write(&mut disk, sectors).unwrap();
        assert_eq!(Gpt::read(&mut disk).unwrap(), gpt);
        let raw = disk.get_ref();
        assert_eq!(&raw[510..512], &[0x55, 0xaa]);
        assert_eq!(raw[446 + 4], 0xee);
        // The backup entry array mirrors the primary one.
        let primary = &raw[1024..1024 + 16384];
        let backup_at = ((sectors - 33) * SECTOR) as usize;
        assert_eq!(primary, &raw[backup_at..backup_at + 16384]);
        assert_eq!(&raw[((sectors - 1) * SECTOR) as usize..][..8], SIGNATURE);
    }

    #[test]
    fn sgdisk_accepts_the_table() {
        let Ok(status) = std::process::Command::new("sgdisk")
            .arg("--version")
            .output()
        else {
            eprintln!("sgdisk not installed; skipping");
            return;
        };
        assert!(status.status.success());
        let dir = std::env::temp_dir().join(format!("berth-gpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        let sectors = 8 * MIB;
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(sectors * SECTOR).unwrap();
        sample().write(&mut f, sectors).unwrap();
        let out = std::process::Command::new("sgdisk")
            .arg("-v")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.contains("No problems found"), "{text}");
    }

    #[test]
    fn corrupt_header_is_detected() {
        let sectors = 8 * MIB;
        let mut disk = Cursor::new(vec![0u8; (sectors * SECTOR) as usize]);
        sample().write(&mut disk, sectors).unwrap();
        disk.get_mut()[512 + 40] ^= 1;
        assert!(matches!(
            Gpt::read(&mut disk),
            Err(GptError::Checksum { what: "header", .. })
        ));
        assert!(matches!(
            Gpt::read(&mut Cursor::new(vec![0u8; 4096])),
            Err(GptError::Missing(_))
        ));
    }

    #[test]
    fn grow_moves_last_partition_end_and_backup_table() {
        let small = 8 * MIB;
        let mut disk = Cursor::new(vec![0u8; (small * SECTOR) as usize]);
        sample().write(&mut disk, small).unwrap();
        // The disk grows to 16 MiB.
        let big = 16 * MIB;
        disk.get_mut().resize((big * SECTOR) as usize, 0);
        let mut gpt = Gpt::read(&mut disk).unwrap();
        let grown = gpt.grow_to_end("berth-state", big).unwrap().unwrap();
        assert_eq!(grown.first_lba, 3 * MIB);
        assert_eq!(grown.last_lba, 15 * MIB - 1);
        gpt.write(&mut disk, big).unwrap();
        let again = Gpt::read(&mut disk).unwrap();
        assert_eq!(again.find("berth-state").unwrap().last_lba, 15 * MIB - 1);
        // Growing again changes nothing.
        assert_eq!(gpt.grow_to_end("berth-state", big).unwrap(), None);
        // Only the last partition can grow.
        assert!(gpt.grow_to_end("berth-boot", big).is_err());
        assert!(gpt.grow_to_end("nope", big).is_err());
    }

    #[test]
    fn overlapping_or_out_of_range_partitions_are_rejected() {
        let mut gpt = sample();
        gpt.partitions[1].first_lba = 2 * MIB;
        assert!(gpt
            .write(&mut Cursor::new(vec![0u8; 8 << 20]), 8 * MIB)
            .is_err());
        let mut gpt = sample();
        gpt.partitions[1].last_lba = 8 * MIB;
        assert!(gpt.validate(8 * MIB).is_err());
    }
}
