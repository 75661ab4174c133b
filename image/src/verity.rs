//! The read-only root: an erofs image followed, in the same partition, by its dm-verity hash tree.

use std::path::Path;
use std::process::Command;

use crate::host::{self, HostError};

/// erofs and dm-verity both use 4 KiB blocks here.
pub const BLOCK: u64 = 4096;

/// The hash of the verity tree, as veritysetup and the kernel's crypto API both name it.
/// BLAKE2b's portable code is about twice as fast as SHA-256's on CPUs without SHA
/// extensions, and every page of the root is hashed when it is first read.
pub const HASH: &str = "blake2b-512";

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("veritysetup printed no {0} line")]
    Output(&'static str),
    #[error("root image {path} is {size} bytes, not a multiple of 4096")]
    Unaligned { path: String, size: u64 },
}

/// What the kernel needs to open the verity device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verity {
    pub data_blocks: u64,
    /// Block (in the same device) where the hash tree's superblock starts.
    pub hash_offset_blocks: u64,
    pub root_hash: String,
    pub salt: String,
    /// Data plus superblock plus hash tree, in bytes.
    pub total_size: u64,
}

impl Verity {
    /// The `dm-mod.create=` value opening `device` (e.g. `PARTUUID=...`) as `/dev/dm-0`.
    /// The table's hash start is one block after the hash offset: the verity superblock sits
    /// there first.
    pub fn dm_create(&self, device: &str) -> String {
        format!(
            "berth-root,,,ro,0 {sectors} verity 1 {device} {device} {BLOCK} {BLOCK} {n} {hash} {HASH} {root} {salt}",
            sectors = self.data_blocks * BLOCK / 512,
            n = self.data_blocks,
            hash = self.hash_offset_blocks + 1,
            root = self.root_hash,
            salt = self.salt,
        )
    }
}

/// The erofs UUID: nothing looks the root up by it (the verity device is opened by PARTUUID),
/// and a fixed value keeps the image reproducible (Buildroot's reproducible mode uses the same).
pub const EROFS_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Builds an erofs image of `tree` into `out`: every file owned by root, every timestamp
/// `epoch`, a fixed UUID. erofs-utils lays directories out in name order, so the image does
/// not depend on the order the build tree's filesystem lists them in.
pub fn mkfs_erofs(tree: &Path, out: &Path, epoch: u64) -> Result<u64, VerityError> {
    let _ = std::fs::remove_file(out);
    host::run(
        Command::new("mkfs.erofs")
            // With SOURCE_DATE_EPOCH in its environment, erofs-utils only clamps newer times to
            // it, even with -T: files older than the epoch (a checkout's) would keep theirs.
            .env_remove("SOURCE_DATE_EPOCH")
            .arg("--quiet")
            .arg("--all-root")
            .arg(format!("-T{epoch}"))
            .arg(format!("-U{EROFS_UUID}"))
            .arg(out)
            .arg(tree),
    )?;
    data_size(out)
}

/// Checks that an erofs image built elsewhere (Buildroot's rootfs.erofs) can carry a hash tree
/// in 4 KiB blocks; returns its size.
pub fn data_size(image: &Path) -> Result<u64, VerityError> {
    let size = file_size(image)?;
    if size % BLOCK != 0 {
        return Err(VerityError::Unaligned {
            path: image.display().to_string(),
            size,
        });
    }
    Ok(size)
}

/// Appends the hash tree to `image` (whose first `data_size` bytes are the data). `salt`
/// (hex) and `uuid` are given rather than random, so the same data gives the same tree.
pub fn format(image: &Path, data_size: u64, salt: &str, uuid: &str) -> Result<Verity, VerityError> {
    if data_size % BLOCK != 0 {
        return Err(VerityError::Unaligned {
            path: image.display().to_string(),
            size: data_size,
        });
    }
    let blocks = data_size / BLOCK;
    let out = host::run(
        Command::new("veritysetup")
            .arg("format")
            .arg(format!("--hash={HASH}"))
            .arg(format!("--data-blocks={blocks}"))
            .arg(format!("--hash-offset={data_size}"))
            .arg(format!("--salt={salt}"))
            .arg(format!("--uuid={uuid}"))
            .arg(image)
            .arg(image),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &'static str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .ok_or(VerityError::Output(name))
    };
    Ok(Verity {
        data_blocks: blocks,
        hash_offset_blocks: blocks,
        root_hash: field("Root hash:")?,
        salt: field("Salt:")?,
        total_size: file_size(image)?,
    })
}

fn file_size(path: &Path) -> Result<u64, VerityError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| HostError::io(path)(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_points_past_the_verity_superblock() {
        let v = Verity {
            data_blocks: 100,
            hash_offset_blocks: 100,
            root_hash: "ab".into(),
            salt: "cd".into(),
            total_size: 0,
        };
        assert_eq!(
            v.dm_create("PARTUUID=x"),
            "berth-root,,,ro,0 800 verity 1 PARTUUID=x PARTUUID=x 4096 4096 100 101 blake2b-512 ab cd"
        );
    }
}
