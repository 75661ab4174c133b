//! Conversions of the raw disk into the formats clouds and hypervisors take.

use std::path::Path;
use std::process::Command;

use crate::tool::{self, ToolError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// Converts the raw disk `raw` into `out`.
pub fn convert(raw: &Path, out: &Path, format: Format) -> Result<(), ToolError> {
    let _ = std::fs::remove_file(out);
    tool::run(
        Command::new("qemu-img")
            .arg("convert")
            .args(["-f", "raw"])
            .args(format.qemu_img_args())
            .arg(raw)
            .arg(out),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name_or_extension() {
        assert_eq!(Format::parse("raw"), Some(Format::Raw));
        assert_eq!(Format::parse("img"), Some(Format::Raw));
        assert_eq!(Format::parse("vhd"), Some(Format::Vhd));
        assert_eq!(Format::parse("iso"), None);
    }
}
