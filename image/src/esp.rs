//! The EFI system partition: a FAT image built as a file with mkfs.vfat and mtools.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::{self, HostError};

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("ESP path {0:?} must be absolute inside the ESP (\"/grub/grub.cfg\")")]
    BadPath(String),
}

/// 1980-01-01T00:00:00Z, the first time FAT can store.
const FAT_EPOCH: u64 = 315_532_800;

/// What would otherwise come from the clock and the random pool: the FAT volume ID, and the
/// time every directory entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub volume_id: u32,
    /// Seconds since 1970 (mtools' SOURCE_DATE_EPOCH).
    pub epoch: u64,
}

/// Files to place on the ESP: (source on the host, absolute path on the ESP).
#[derive(Debug, Default)]
pub struct EspContents {
    files: Vec<(PathBuf, String)>,
    empty_dirs: Vec<String>,
}

impl EspContents {
    pub fn add(&mut self, source: &Path, dest: &str) -> Result<(), EspError> {
        if !dest.starts_with('/') || dest.contains("..") {
            return Err(EspError::BadPath(dest.into()));
        }
        self.files.push((source.to_path_buf(), dest.to_string()));
        Ok(())
    }

    /// An empty directory (e.g. `/B`, the slot an update fills).
    pub fn add_dir(&mut self, dest: &str) -> Result<(), EspError> {
        if !dest.starts_with('/') || dest.contains("..") || dest.ends_with('/') {
            return Err(EspError::BadPath(dest.into()));
        }
        self.empty_dirs.push(format!("{dest}/"));
        Ok(())
    }

    /// Every directory the files need, parents first.
    fn dirs(&self) -> Vec<String> {
        let mut dirs: Vec<String> = Vec::new();
        let files = self.files.iter().map(|(_, d)| d);
        for dest in files.chain(self.empty_dirs.iter()) {
            let mut at = 0;
            while let Some(i) = dest[at + 1..].find('/') {
                at += i + 1;
                let d = dest[..at].to_string();
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        dirs
    }

    /// Writes a FAT filesystem of `size` bytes labelled `label` to `out`. Its volume ID and
    /// every timestamp come from `stamp`: mkfs.vfat's `--invariant` fixes the label entry's
    /// time (otherwise the clock's), mtools takes SOURCE_DATE_EPOCH for everything it writes.
    pub fn build(&self, out: &Path, size: u64, label: &str, stamp: Stamp) -> Result<(), EspError> {
        let _ = std::fs::remove_file(out);
        // FAT cannot store dates before 1980 (mtools wraps them into the 2090s).
        let epoch = stamp.epoch.max(FAT_EPOCH).to_string();
        host::run(
            Command::new("mkfs.vfat")
                .arg("--invariant")
                .arg("-i")
                .arg(format!("{:08x}", stamp.volume_id))
                .arg("-C")
                .arg("-n")
                .arg(label)
                .arg(out)
                .arg((size / 1024).to_string()),
        )?;
        let image = out.as_os_str();
        for d in self.dirs() {
            host::run(
                Command::new("mmd")
                    .env("SOURCE_DATE_EPOCH", &epoch)
                    .arg("-i")
                    .arg(image)
                    .arg(format!("::{d}")),
            )?;
        }
        for (src, dest) in &self.files {
            host::run(
                Command::new("mcopy")
                    .env("SOURCE_DATE_EPOCH", &epoch)
                    .arg("-i")
                    .arg(image)
                    .arg(src)
                    .arg(format!("::{dest}")),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_created_parents_first() {
        let mut c = EspContents::default();
        c.add(Path::new("x"), "/EFI/BOOT/BOOTX64.EFI").unwrap();
        c.add(Path::new("y"), "/grub/grub.cfg").unwrap();
        c.add(Path::new("z"), "/top").unwrap();
        c.add_dir("/B").unwrap();
        assert_eq!(c.dirs(), ["/EFI", "/EFI/BOOT", "/grub", "/B"]);
        assert!(c.add_dir("/B/").is_err());
        assert!(c.add(Path::new("x"), "relative").is_err());
        assert!(c.add(Path::new("x"), "/a/../b").is_err());
    }
}
