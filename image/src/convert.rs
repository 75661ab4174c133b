//! Conversions of the raw disk into the formats clouds and hypervisors take.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use crate::derive::Seed;
use crate::host::{self, HostError};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{path}: {problem}")]
    Malformed { path: String, problem: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    /// Compressed qcow2 (QEMU, OpenStack); writes after boot are stored uncompressed.
    Qcow2,
    /// Fixed-size VHD (Azure needs fixed and a whole number of MiB).
    Vhd,
    /// VMware.
    Vmdk,
}

impl Format {
    pub const CONVERTED: [Format; 3] = [Format::Qcow2, Format::Vhd, Format::Vmdk];

    pub fn extension(self) -> &'static str {
        match self {
            Format::Raw => "img",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::Vmdk => "vmdk",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        [Format::Raw, Format::Qcow2, Format::Vhd, Format::Vmdk]
            .into_iter()
            .find(|f| f.extension() == s || (s == "raw" && *f == Format::Raw))
    }

    fn qemu_img_args(self) -> &'static [&'static str] {
        match self {
            Format::Raw => &["-O", "raw"],
            Format::Qcow2 => &["-O", "qcow2", "-c"],
            Format::Vhd => &["-O", "vpc", "-o", "subformat=fixed,force_size=on"],
            Format::Vmdk => &["-O", "vmdk"],
        }
    }
}

/// Converts the raw disk `raw` into `out`. qemu-img writes a random identifier and the clock's
/// time into VHD and VMDK files; those are replaced by values from `seed` (qcow2 and raw carry
/// neither).
pub fn convert(raw: &Path, out: &Path, format: Format, seed: &Seed) -> Result<(), ConvertError> {
    let _ = std::fs::remove_file(out);
    host::run(
        Command::new("qemu-img")
            .arg("convert")
            .args(["-f", "raw"])
            .args(format.qemu_img_args())
            .arg(raw)
            .arg(out),
    )?;
    let io = HostError::io(out);
    match format {
        Format::Vhd => {
            let mut f = File::options()
                .read(true)
                .write(true)
                .open(out)
                .map_err(io)?;
            let at = f.seek(SeekFrom::End(-512)).map_err(io)?;
            let mut footer = [0u8; 512];
            f.read_exact(&mut footer).map_err(io)?;
            let guid = seed.guid("vhd unique id").to_string().replace('-', "");
            patch_vhd_footer(&mut footer, &guid).ok_or(ConvertError::Malformed {
                path: out.display().to_string(),
                problem: "no VHD footer (conectix) at the end",
            })?;
            f.seek(SeekFrom::Start(at)).map_err(io)?;
            f.write_all(&footer).map_err(io)?;
        }
        Format::Vmdk => {
            // The embedded descriptor sits in the first sectors; CID is 8 hex digits.
            let mut f = File::options()
                .read(true)
                .write(true)
                .open(out)
                .map_err(io)?;
            let mut head = vec![0u8; 64 * 1024];
            let n = f.read(&mut head).map_err(io)?;
            head.truncate(n);
            let cid = format!("{:08x}", seed.u32("vmdk cid"));
            patch_vmdk_cid(&mut head, &cid).ok_or(ConvertError::Malformed {
                path: out.display().to_string(),
                problem: "no CID= line with room to rewrite it in the VMDK descriptor",
            })?;
            f.seek(SeekFrom::Start(0)).map_err(io)?;
            f.write_all(&head).map_err(io)?;
        }
        Format::Raw | Format::Qcow2 => {}
    }
    Ok(())
}

/// Sets the `CID=` value of the VMDK descriptor in `head` (the file's first bytes) to `cid`.
/// qemu-img prints its random CID without leading zeros, and rewrites it on its first write
/// in place: when the second value is shorter, the old text's last bytes stay behind the new
/// text's NUL. So the descriptor is rewritten whole, its text then zeros to the end of its
/// sectors. None without a sparse header, a descriptor with a CID line, or room for the text.
fn patch_vmdk_cid(head: &mut [u8], cid: &str) -> Option<()> {
    if head.get(0..4)? != b"KDMV" {
        return None;
    }
    // The sparse extent header names the descriptor's sectors: offset at byte 28, count at 36.
    let bytes_at = |at: usize| -> Option<usize> {
        let raw: [u8; 8] = head.get(at..at + 8)?.try_into().ok()?;
        usize::try_from(u64::from_le_bytes(raw))
            .ok()?
            .checked_mul(512)
    };
    let area_start = bytes_at(28)?;
    let area_end = area_start.checked_add(bytes_at(36)?)?;
    let area = head.get_mut(area_start..area_end)?;
    let text = &area[..area.iter().position(|&b| b == 0)?];
    let start = find(text, b"\nCID=")? + 5;
    let end = start + text[start..].iter().position(|&b| b == b'\n')?;
    let text = [&text[..start], cid.as_bytes(), &text[end..]].concat();
    // The text keeps at least one NUL after it.
    if text.len() >= area.len() {
        return None;
    }
    area[..text.len()].copy_from_slice(&text);
    area[text.len()..].fill(0);
    Some(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sets a VHD footer's timestamp to 0 (2000-01-01) and its unique ID to `guid_hex` (32 hex
/// digits), then recomputes its checksum. None if it is not a VHD footer.
fn patch_vhd_footer(footer: &mut [u8; 512], guid_hex: &str) -> Option<()> {
    if &footer[0..8] != b"conectix" || guid_hex.len() != 32 {
        return None;
    }
    footer[24..28].copy_from_slice(&[0; 4]);
    for i in 0..16 {
        footer[68 + i] = u8::from_str_radix(guid_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    footer[64..68].copy_from_slice(&[0; 4]);
    let sum = footer
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmdk_cid_of_any_width_becomes_the_same_descriptor() {
        // A sparse header whose descriptor is sector 1, one sector long, as qemu-img lays it
        // out: text, a NUL, what its CID rewrite left behind (nothing, or the old text's last
        // bytes), zeros.
        let vmdk = |cid: &str, left: &str| {
            let mut head = vec![0u8; 1024];
            head[0..4].copy_from_slice(b"KDMV");
            head[28..36].copy_from_slice(&1u64.to_le_bytes());
            head[36..44].copy_from_slice(&1u64.to_le_bytes());
            let text = format!(
                "# Disk DescriptorFile\nversion=1\nCID={cid}\nparentCID=ffffffff\n\
                 createType=\"monolithicSparse\"\n\0{left}"
            );
            head[512..512 + text.len()].copy_from_slice(text.as_bytes());
            head
        };
        let want = vmdk("0badc0de", "");
        for old in ["6bce8195", "bce8195", "9c1712", "5", "0badc0de"] {
            for left in ["", "\n", "\"\n", "e\"\n"] {
                let mut head = vmdk(old, left);
                assert_eq!(patch_vmdk_cid(&mut head, "0badc0de"), Some(()), "{old}");
                assert_eq!(head, want, "from CID={old} with {left:?} left behind");
            }
        }
        // No room left in the descriptor's sectors for the text and its NUL, no NUL at all, or
        // no sparse header: refused, unchanged.
        let mut full = vmdk("5", "");
        let text_end = 512 + full[512..].iter().position(|&b| b == 0).unwrap();
        full[text_end..1017].fill(b'#');
        let before = full.clone();
        assert_eq!(patch_vmdk_cid(&mut full, "0badc0de"), None);
        assert_eq!(full, before);
        let mut unterminated = vmdk("5", "");
        unterminated[text_end..].fill(b'#');
        let before = unterminated.clone();
        assert_eq!(patch_vmdk_cid(&mut unterminated, "0badc0de"), None);
        assert_eq!(unterminated, before);
        assert_eq!(patch_vmdk_cid(&mut [0u8; 64], "0badc0de"), None);
    }

    #[test]
    fn formats_parse_by_name_or_extension() {
        assert_eq!(Format::parse("raw"), Some(Format::Raw));
        assert_eq!(Format::parse("img"), Some(Format::Raw));
        assert_eq!(Format::parse("vhd"), Some(Format::Vhd));
        assert_eq!(Format::parse("iso"), None);
    }

    #[test]
    fn vhd_footer_gets_a_fixed_id_and_a_valid_checksum() {
        let mut f = [0u8; 512];
        f[0..8].copy_from_slice(b"conectix");
        f[24..28].copy_from_slice(&[1, 2, 3, 4]);
        patch_vhd_footer(&mut f, "00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(&f[24..28], &[0; 4]);
        assert_eq!(f[68], 0x00);
        assert_eq!(f[83], 0xff);
        let stored = u32::from_be_bytes([f[64], f[65], f[66], f[67]]);
        let mut g = f;
        g[64..68].copy_from_slice(&[0; 4]);
        let sum = g.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
        assert_eq!(stored, !sum);
        assert!(patch_vhd_footer(&mut [0u8; 512], "00").is_none());
    }
}
