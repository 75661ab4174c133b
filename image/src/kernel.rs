//! What the image builder reads from a kernel image: its release, from the bzImage header
//! (Buildroot's post-image has the bzImage, not the build tree's `kernelrelease`).

use std::path::Path;

use crate::host::HostError;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{0}: not a bzImage with a version string (boot protocol 2.00 or later)")]
    NoVersion(String),
}

/// Setup header: the "HdrS" magic and the 16-bit pointer to the version string, which is
/// relative to the start of the setup code (offset 0x200).
const HDR_MAGIC_AT: usize = 0x202;
const VERSION_PTR_AT: usize = 0x20e;

/// The release (`uname -r`) of a bzImage: the first word of its version string,
/// e.g. `6.12.57-berth` from `6.12.57-berth (berth@berth) #1 SMP ...`.
pub fn release(bzimage: &Path) -> Result<String, KernelError> {
    let data = std::fs::read(bzimage).map_err(HostError::io(bzimage))?;
    release_of(&data).ok_or_else(|| KernelError::NoVersion(bzimage.display().to_string()))
}

fn release_of(data: &[u8]) -> Option<String> {
    if data.get(HDR_MAGIC_AT..HDR_MAGIC_AT + 4)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*data.get(VERSION_PTR_AT)?, *data.get(VERSION_PTR_AT + 1)?]);
    let start = 0x200 + usize::from(ptr);
    let text = data.get(start..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let release = std::str::from_utf8(&text[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_comes_from_the_setup_header() {
        let mut img = vec![0u8; 0x800];
        img[HDR_MAGIC_AT..HDR_MAGIC_AT + 4].copy_from_slice(b"HdrS");
        img[VERSION_PTR_AT..VERSION_PTR_AT + 2].copy_from_slice(&0x400u16.to_le_bytes());
        let v = b"6.12.57-berth (berth@berth) #1 SMP\0";
        img[0x600..0x600 + v.len()].copy_from_slice(v);
        assert_eq!(release_of(&img).as_deref(), Some("6.12.57-berth"));
        img[HDR_MAGIC_AT] = b'X';
        assert_eq!(release_of(&img), None);
        assert_eq!(release_of(b"short"), None);
    }
}
