//! Private disk copies for a test, and the offline inspections tests make on them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use berth_formats::gpt::{Gpt, Partition};

use crate::{io_err, HarnessError, Result};

/// Copies the raw image `src` to `dst` (sparse) and grows it to `size` bytes, as a cloud
/// provider gives a disk larger than the image.
pub fn copy_raw(src: &Path, dst: &Path, size: Option<u64>) -> Result<()> {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(dst)
        .status()
        .map_err(io_err("cp"))?;
    if !status.success() {
        return Err(HarnessError::Setup(format!("cp {} failed", src.display())));
    }
    if let Some(size) = size {
        let f = File::options()
            .write(true)
            .open(dst)
            .map_err(io_err(dst.display().to_string()))?;
        f.set_len(size).map_err(io_err("grow disk copy"))?;
    }
    Ok(())
}

pub fn partition(disk: &Path, name: &str) -> Result<Partition> {
    let mut f = File::open(disk).map_err(io_err(disk.display().to_string()))?;
    let gpt = Gpt::read(&mut f).map_err(|e| HarnessError::Setup(e.to_string()))?;
    gpt.find(name)
        .cloned()
        .ok_or_else(|| HarnessError::Setup(format!("no partition {name:?}")))
}

/// Finds the 4 KiB-aligned block in partition `part` whose content starts with `needle`
/// (e.g. the first block of a file in the uncompressed erofs root). Returns its disk offset.
pub fn find_block(disk: &Path, part: &Partition, needle: &[u8]) -> Result<Option<u64>> {
    let f = File::open(disk).map_err(io_err(disk.display().to_string()))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = part.offset();
    let end = part.offset() + part.size();
    while at < end {
        let len = chunk.len().min((end - at) as usize);
        f.read_exact_at(&mut chunk[..len], at)
            .map_err(io_err("read partition"))?;
        for (i, block) in chunk[..len].chunks(4096).enumerate() {
            if block.starts_with(needle) {
                return Ok(Some(at + (i * 4096) as u64));
            }
        }
        at += len as u64;
    }
    Ok(None)
}

/// Flips every bit of the byte at `offset`.
pub fn flip_byte(disk: &Path, offset: u64) -> Result<()> {
    let f = File::options()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io_err(disk.display().to_string()))?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)
        .map_err(io_err("read byte"))?;
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).map_err(io_err("write byte"))?;
    f.sync_all().map_err(io_err("sync"))
}

/// Overwrites partition `part` with zeros, as a factory reset wipes the state partition.
pub fn zero_partition(disk: &Path, part: &Partition) -> Result<()> {
    let f = File::options()
        .write(true)
        .open(disk)
        .map_err(io_err(disk.display().to_string()))?;
    let chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < part.size() {
        let n = chunk.len().min((part.size() - at) as usize);
        f.write_all_at(&chunk[..n], part.offset() + at)
            .map_err(io_err("zero partition"))?;
        at += n as u64;
    }
    f.sync_all().map_err(io_err("sync"))
}

/// The ext4 superblock's view of whether the filesystem was cleanly unmounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4State {
    /// `s_state & EXT4_VALID_FS`: set on a clean unmount.
    pub valid: bool,
    /// `s_feature_incompat & RECOVER`: the journal needs replaying.
    pub needs_recovery: bool,
    /// Blocks in the filesystem.
    pub blocks: u64,
    pub block_size: u64,
}

pub fn ext4_state(disk: &Path, part: &Partition) -> Result<Ext4State> {
    let f = File::open(disk).map_err(io_err(disk.display().to_string()))?;
    let mut sb = [0u8; 1024];
    f.read_exact_at(&mut sb, part.offset() + 1024)
        .map_err(io_err("read ext4 superblock"))?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return Err(HarnessError::Setup("no ext4 superblock magic".into()));
    }
    let le16 = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]) as u64;
    let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]) as u64;
    let blocks = le32(0x4) | (le32(0x150) << 32);
    Ok(Ext4State {
        valid: le16(0x3a) & 1 == 1,
        needs_recovery: le32(0x60) & 0x4 != 0,
        blocks,
        block_size: 1024 << le32(0x18),
    })
}

/// A file of the ESP (`path` from its root, e.g. `/grub/grubenv`) of a stopped VM's disk or an
/// image, read with mtools at the ESP's offset.
pub fn esp_file(disk: &Path, path: &str) -> Result<Vec<u8>> {
    let esp = partition(disk, "berth-boot")?;
    crate::run_tool(
        Command::new("mtype")
            .arg("-i")
            .arg(format!("{}@@{}", disk.display(), esp.offset()))
            .arg(format!("::{path}")),
    )
}

/// The boot state on the ESP of a stopped VM's disk: the newest valid of its two grubenv
/// copies.
pub fn boot_state(disk: &Path) -> Result<berth_formats::grubenv::BootState> {
    use berth_formats::grubenv::{BootState, ENV_FILES};
    let mut copies: [Vec<u8>; 2] = Default::default();
    for (copy, name) in copies.iter_mut().zip(ENV_FILES) {
        *copy = esp_file(disk, &format!("/grub/{name}"))?;
    }
    BootState::newest([Some(&copies[0]), Some(&copies[1])])
        .map(|(state, _)| state)
        .map_err(|e| HarnessError::Setup(format!("boot state of {}: {e}", disk.display())))
}
