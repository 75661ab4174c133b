//! The state partition (`berth-state`, ext4): mounted at /var/lib/berth, and grown to the end
//! of the disk on first boot. Growing needs no e2fsprogs: extend the GPT entry, tell the kernel
//! (BLKPG resize), then grow the mounted filesystem online (EXT4_IOC_RESIZE_FS).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use berth_formats::gpt::{Gpt, GptError, SECTOR};
use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::disk::blockdev::{BlockDevices, PartitionDev};

pub const PARTITION_NAME: &str = "berth-state";

/// An empty state filesystem (ext4 with a journal, labelled `berth-state`, zstd-compressed),
/// built with the image. A state partition found blank gets it, then grows like any first
/// boot.
pub const SEED: &str = "/usr/lib/berth/state-seed.ext4.zst";

/// How much of a partition must be zero for it to count as blank: the boot block and the
/// superblocks of every filesystem Linux knows sit well inside it.
const BLANK_PROBE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no partition named {PARTITION_NAME:?} on any disk")]
    NotFound,
    #[error("mount {device} on {target}: {source}")]
    Mount {
        device: String,
        target: String,
        source: Errno,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("partition table of {disk}: {source}")]
    Gpt {
        disk: String,
        #[source]
        source: GptError,
    },
    #[error("{what} on {path}: {source}")]
    Ioctl {
        what: &'static str,
        path: String,
        source: Errno,
    },
    #[error("{path}: no ext4 superblock")]
    NotExt4 { path: String },
    #[error("state filesystem seed {path}: {reason}")]
    Seed { path: String, reason: String },
}

/// What mounting found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The partition held a filesystem.
    Existing,
    /// The partition was blank: an empty filesystem was written from the seed first.
    Created,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Mounts the state partition on `target`. A blank partition (all zero in its first MiB)
/// first gets an empty filesystem from `seed`; anything else that does not mount is an error
/// and is never overwritten.
pub fn mount(
    blocks: &BlockDevices,
    target: &Path,
    seed: &Path,
) -> Result<(PartitionDev, Found), StateError> {
    let part = blocks
        .partition_named(PARTITION_NAME)
        .ok_or(StateError::NotFound)?;
    let device = blocks.dev_path(&part.name);
    std::fs::create_dir_all(target).map_err(io(target))?;
    let found = match mount_ext4(&device, target) {
        Ok(()) => Found::Existing,
        Err(e) if is_blank(&device)? => {
            log::info!(
                "{}: blank ({e}): creating the state filesystem",
                device.display()
            );
            write_seed(seed, &device)?;
            mount_ext4(&device, target)?;
            Found::Created
        }
        Err(e) => return Err(e),
    };
    Ok((part, found))
}

fn mount_ext4(device: &Path, target: &Path) -> Result<(), StateError> {
    nix::mount::mount(
        Some(device),
        target,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|source| StateError::Mount {
        device: device.display().to_string(),
        target: target.display().to_string(),
        source,
    })
}

/// True when the first [`BLANK_PROBE`] bytes of `device` are all zero (a partition the
/// image left empty, or one wiped for a factory reset).
fn is_blank(device: &Path) -> Result<bool, StateError> {
    let f = File::open(device).map_err(io(device))?;
    let mut buf = Vec::with_capacity(BLANK_PROBE);
    std::io::Read::read_to_end(&mut std::io::Read::take(f, BLANK_PROBE as u64), &mut buf)
        .map_err(io(device))?;
    Ok(!buf.is_empty() && buf.iter().all(|&b| b == 0))
}

/// Writes the decompressed seed to the start of `device` and flushes it to the disk.
fn write_seed(seed: &Path, device: &Path) -> Result<(), StateError> {
    let bad = |reason: String| StateError::Seed {
        path: seed.display().to_string(),
        reason,
    };
    let input = File::open(seed).map_err(|e| bad(e.to_string()))?;
    let mut decoder = ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(input))
        .map_err(|e| bad(e.to_string()))?;
    let mut out = File::options()
        .write(true)
        .open(device)
        .map_err(io(device))?;
    std::io::copy(&mut decoder, &mut out).map_err(|e| bad(e.to_string()))?;
    out.sync_all().map_err(io(device))
}

/// What growing did, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    pub partition_before: u64,
    pub partition_after: u64,
    pub filesystem_before: u64,
    pub filesystem_after: u64,
}

/// Grows the partition to the end of its disk (when the disk is larger than the image was),
/// then the filesystem mounted at `mountpoint` to the partition's size. Returns `None` when
/// both already fill their space.
pub fn grow(
    blocks: &BlockDevices,
    part: &PartitionDev,
    mountpoint: &Path,
) -> Result<Option<Growth>, StateError> {
    let disk_path = blocks.dev_path(&part.disk);
    let mut disk = File::options()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(io(&disk_path))?;
    let disk_size = disk.seek(SeekFrom::End(0)).map_err(io(&disk_path))?;
    let gpt_err = |source| StateError::Gpt {
        disk: disk_path.display().to_string(),
        source,
    };
    let mut gpt = Gpt::read(&mut disk).map_err(gpt_err)?;
    let before = gpt
        .find(PARTITION_NAME)
        .map(|p| p.size())
        .ok_or(StateError::NotFound)?;
    let mut partition_after = before;
    if let Some(grown) = gpt
        .grow_to_end(PARTITION_NAME, disk_size / SECTOR)
        .map_err(gpt_err)?
    {
        gpt.write(&mut disk, disk_size / SECTOR).map_err(gpt_err)?;
        disk.sync_all().map_err(io(&disk_path))?;
        blkpg_resize(
            &disk,
            &disk_path,
            grown.number,
            grown.offset(),
            grown.size(),
        )?;
        partition_after = grown.size();
    }

    let part_path = blocks.dev_path(&part.name);
    let (block_size, fs_blocks) = ext4_geometry(&part_path)?;
    let want_blocks = partition_after / block_size;
    if want_blocks <= fs_blocks {
        return Ok((partition_after != before).then_some(Growth {
            partition_before: before,
            partition_after,
            filesystem_before: fs_blocks * block_size,
            filesystem_after: fs_blocks * block_size,
        }));
    }
    let dir = File::open(mountpoint).map_err(io(mountpoint))?;
    let count: u64 = want_blocks;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) from the pointer,
    // which stays valid for the call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &count as *const u64) };
    if rc != 0 {
        return Err(StateError::Ioctl {
            what: "EXT4_IOC_RESIZE_FS",
            path: mountpoint.display().to_string(),
            source: Errno::last(),
        });
    }
    Ok(Some(Growth {
        partition_before: before,
        partition_after,
        filesystem_before: fs_blocks * block_size,
        filesystem_after: want_blocks * block_size,
    }))
}

/// `_IOW('f', 16, __u64)`
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
/// `_IO(0x12, 105)`
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// Tells the kernel the partition's new extent (bytes).
fn blkpg_resize(
    disk: &File,
    path: &Path,
    number: u32,
    start: u64,
    length: u64,
) -> Result<(), StateError> {
    let mut part = BlkpgPartition {
        start: start as libc::c_longlong,
        length: length as libc::c_longlong,
        pno: number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: BLKPG reads a blkpg_ioctl_arg whose data points at a blkpg_partition; both
    // live on this stack frame for the duration of the call.
    let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &mut arg as *mut BlkpgIoctlArg) };
    if rc != 0 {
        return Err(StateError::Ioctl {
            what: "BLKPG resize partition",
            path: path.display().to_string(),
            source: Errno::last(),
        });
    }
    Ok(())
}

/// (block size, block count) from the ext4 superblock on `device`.
fn ext4_geometry(device: &Path) -> Result<(u64, u64), StateError> {
    let f = File::open(device).map_err(io(device))?;
    let mut sb = [0u8; 1024];
    f.read_exact_at(&mut sb, 1024).map_err(io(device))?;
    parse_ext4_geometry(&sb).ok_or_else(|| StateError::NotExt4 {
        path: device.display().to_string(),
    })
}

fn parse_ext4_geometry(sb: &[u8; 1024]) -> Option<(u64, u64)> {
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return None;
    }
    let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]) as u64;
    let log = le32(0x18);
    if log > 6 {
        return None;
    }
    let incompat_64bit = le32(0x60) & 0x80 != 0;
    let hi = if incompat_64bit { le32(0x150) } else { 0 };
    Some((1024 << log, le32(0x4) | (hi << 32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_geometry_of_a_real_ext4() {
        let img = std::env::temp_dir().join(format!("berth-statefs-{}.img", std::process::id()));
        let out = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
            .arg(&img)
            .arg("8M")
            .output();
        let Ok(out) = out else {
            eprintln!("mke2fs missing; skipping");
            return;
        };
        assert!(out.status.success());
        let geometry = ext4_geometry(&img).unwrap();
        std::fs::remove_file(&img).unwrap();
        assert_eq!(geometry, (4096, 2048));
        assert!(parse_ext4_geometry(&[0u8; 1024]).is_none());
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("berth-statefs-{}-{name}", std::process::id()))
    }

    #[test]
    fn only_an_all_zero_start_counts_as_blank() {
        let zero = temp("zero");
        std::fs::write(&zero, vec![0u8; 2 << 20]).unwrap();
        assert!(is_blank(&zero).unwrap());
        // One byte anywhere in the first MiB: not blank, never overwritten.
        let used = temp("used");
        let mut bytes = vec![0u8; 2 << 20];
        bytes[BLANK_PROBE - 1] = 1;
        std::fs::write(&used, bytes).unwrap();
        assert!(!is_blank(&used).unwrap());
        for p in [zero, used] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn the_seed_lands_at_the_start_of_the_partition() {
        let fs = temp("seed.ext4");
        let made = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "berth-state"])
            .arg(&fs)
            .arg("8M")
            .status();
        let seed = temp("seed.ext4.zst");
        let packed = std::process::Command::new("zstd")
            .args(["-q", "-f"])
            .arg(&fs)
            .arg("-o")
            .arg(&seed)
            .status();
        if !matches!((made, packed), (Ok(a), Ok(b)) if a.success() && b.success()) {
            eprintln!("mke2fs or zstd missing; skipping");
            return;
        }
        let partition = temp("partition");
        std::fs::write(&partition, vec![0u8; 16 << 20]).unwrap();
        write_seed(&seed, &partition).unwrap();
        assert_eq!(ext4_geometry(&partition).unwrap(), (4096, 2048));
        assert!(!is_blank(&partition).unwrap());
        let broken = temp("broken.zst");
        std::fs::write(&broken, b"not zstd").unwrap();
        let err = write_seed(&broken, &partition).unwrap_err().to_string();
        assert!(err.contains("broken.zst"), "{err}");
        for p in [fs, seed, partition, broken] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
