//! GRUB for BIOS and UEFI, installed without `grub-install` (which needs a real block device):
//! `grub-mkimage` builds both images; the BIOS one goes into the bios-boot partition and the
//! MBR's boot code is pointed at it by hand.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

pub use berth_formats::bootcfg::slot_config;
use berth_formats::bootcfg::Unquotable;

use crate::gpt::SECTOR;
use crate::host::{self, HostError};

/// GRUB's BIOS boot sector, from grub-pc-bin.
pub const BOOT_IMG: &str = "/usr/lib/grub/i386-pc/boot.img";
/// Where Debian's grub-pc-bin and grub-efi-amd64-bin keep the modules grub-mkimage reads.
pub const PC_DIR: &str = "/usr/lib/grub/i386-pc";
pub const EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
/// Only the boot code: bytes 440.. of the MBR hold the disk signature and partition table.
const MBR_CODE_LEN: usize = 440;
/// boot.img: 64-bit LBA of core.img's first sector.
const BOOT_KERNEL_SECTOR: usize = 0x5c;
/// diskboot.img (core.img's first sector): the last blocklist entry, {u64 start, u16 len}.
const CORE_BLOCKLIST_START: usize = 0x1f4;
const CORE_BLOCKLIST_LEN: usize = 0x1fc;

/// Modules built into both images: no module is ever loaded from disk.
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "fat",
    "search",
    "search_label",
    "search_fs_uuid",
    "search_fs_file",
    "configfile",
    "normal",
    "linux",
    "echo",
    "test",
    "loadenv",
    "serial",
    "terminal",
];

#[derive(Debug, thiserror::Error)]
pub enum GrubError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("core.img is {core} bytes; the bios-boot partition holds {room}")]
    CoreTooBig { core: u64, room: u64 },
    #[error("{what} is malformed: {problem}")]
    Malformed { what: String, problem: String },
    #[error(transparent)]
    Unquotable(#[from] Unquotable),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GrubError + '_ {
    move |source| HostError::io(path)(source).into()
}

/// The configuration embedded in both GRUB images: find the ESP by its FAT label, then run
/// the shared grub.cfg there.
pub fn embedded_config(esp_label: &str) -> String {
    format!(
        "search --no-floppy --label --set=root {esp_label}\n\
         set prefix=($root)/grub\n\
         configfile ($root)/grub/grub.cfg\n"
    )
}

/// Builds GRUB's BIOS core image (i386-pc) into `out` from the modules in `dir`.
pub fn mkimage_bios(embed_cfg: &Path, out: &Path, dir: &Path) -> Result<(), GrubError> {
    // linux16: grub.cfg boots the kernel through the 16-bit protocol on BIOS.
    mkimage("i386-pc", &["biosdisk", "linux16"], embed_cfg, out, dir)
}

/// Builds GRUB's EFI application (x86_64-efi) into `out` from the modules in `dir`.
pub fn mkimage_efi(embed_cfg: &Path, out: &Path, dir: &Path) -> Result<(), GrubError> {
    // efi_gop gives the kernel a video mode (without it GRUB reports "no suitable video mode").
    mkimage("x86_64-efi", &["efi_gop"], embed_cfg, out, dir)
}

fn mkimage(
    format: &str,
    extra: &[&str],
    embed_cfg: &Path,
    out: &Path,
    dir: &Path,
) -> Result<(), GrubError> {
    host::run(
        Command::new("grub-mkimage")
            .arg("-d")
            .arg(dir)
            .arg("-O")
            .arg(format)
            .arg("-o")
            .arg(out)
            .arg("-c")
            .arg(embed_cfg)
            .arg("-p")
            .arg("/grub")
            .args(extra)
            .args(COMMON_MODULES),
    )?;
    Ok(())
}

/// Writes `core_img` at `lba` (the bios-boot partition, `room` bytes) and boot.img's code
/// into the MBR, patched so that BIOS → boot.img → core.img's first sector → the rest of it.
pub fn install_bios(
    disk: &File,
    boot_img: &[u8],
    core_img: &[u8],
    lba: u64,
    room: u64,
) -> Result<(), GrubError> {
    let malformed = |what: &str, problem: &str| GrubError::Malformed {
        what: what.into(),
        problem: problem.into(),
    };
    if boot_img.len() != SECTOR as usize || boot_img[510..512] != [0x55, 0xaa] {
        return Err(malformed("boot.img", "not a 512-byte boot sector"));
    }
    if core_img.len() < SECTOR as usize {
        return Err(malformed("core.img", "shorter than one sector"));
    }
    let core_len = core_img.len() as u64;
    if core_len > room {
        return Err(GrubError::CoreTooBig {
            core: core_len,
            room,
        });
    }
    let sectors = core_len.div_ceil(SECTOR);
    let rest = u16::try_from(sectors - 1)
        .map_err(|_| malformed("core.img", "more sectors than one blocklist entry holds"))?;

    let mut core = core_img.to_vec();
    core.resize((sectors * SECTOR) as usize, 0);
    core[CORE_BLOCKLIST_START..CORE_BLOCKLIST_START + 8].copy_from_slice(&(lba + 1).to_le_bytes());
    core[CORE_BLOCKLIST_LEN..CORE_BLOCKLIST_LEN + 2].copy_from_slice(&rest.to_le_bytes());

    let mut code = boot_img[..MBR_CODE_LEN].to_vec();
    code[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&lba.to_le_bytes());

    let disk_err = |source| HostError::Io {
        path: "disk image".into(),
        source,
    };
    disk.write_all_at(&core, lba * SECTOR).map_err(disk_err)?;
    disk.write_all_at(&code, 0).map_err(disk_err)?;
    Ok(())
}

/// Reads a file the builder needs, naming it on failure.
pub fn read(path: &Path) -> Result<Vec<u8>, GrubError> {
    std::fs::read(path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bios_install_patches_blocklist_and_kernel_sector() {
        let dir = std::env::temp_dir().join(format!("berth-grub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk");
        let disk = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        disk.set_len(4 << 20).unwrap();
        let mut boot = vec![0xb0u8; 512];
        boot[510] = 0x55;
        boot[511] = 0xaa;
        let core = vec![0xc0u8; 3 * 512 + 7];
        install_bios(&disk, &boot, &core, 2048, 1 << 20).unwrap();
        let raw = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(&raw[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(raw[439], 0xb0);
        // The partition table area stays untouched.
        assert_eq!(raw[440], 0);
        let core_at = 2048 * 512;
        assert_eq!(
            &raw[core_at + 0x1f4..core_at + 0x1fc],
            &2049u64.to_le_bytes()
        );
        assert_eq!(&raw[core_at + 0x1fc..core_at + 0x1fe], &3u16.to_le_bytes());
        assert_eq!(raw[core_at + 512], 0xc0);
        assert!(install_bios(&File::open("/dev/null").unwrap(), &boot, &core, 2048, 512).is_err());
    }
}
