//! The build manifest (`out/manifest.json`): what was built, how big, and the root hash.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::convert::Format;
use crate::extensions::ExtensionEntry;
use crate::verity::Verity;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: String,
    pub kernel_release: String,
    /// The time every file and filesystem carries (the source commit's).
    pub epoch: u64,
    pub source_commit: Option<String>,
    /// SHA-256 of each input the build records (kernel config, busybox config, Cargo.lock...).
    pub inputs: BTreeMap<String, String>,
    pub disk_guid: String,
    pub disk_size: u64,
    /// SHA-256 of slot A's content: erofs, extensions and hash tree, as written to the partition.
    pub root_image_sha256: String,
    /// The root's verity data: the root erofs and the extensions after it.
    pub root: Verity,
    /// The system extensions in slot A after the root erofs (absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<ExtensionEntry>,
    pub kernel_args: String,
    pub dm_create: String,
    pub partitions: Vec<PartitionEntry>,
    pub outputs: Vec<OutputEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionEntry {
    pub number: u32,
    pub name: String,
    pub partuuid: String,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputEntry {
    pub file: String,
    pub format: Format,
    /// Apparent size.
    pub size: u64,
    /// Bytes actually allocated (the raw image is sparse; depends on the filesystem).
    pub allocated: u64,
    pub sha256: String,
}

impl OutputEntry {
    pub fn of(path: &Path, format: Format, sha256: String) -> std::io::Result<OutputEntry> {
        let meta = std::fs::metadata(path)?;
        Ok(OutputEntry {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            format,
            size: meta.len(),
            allocated: meta.blocks() * 512,
            sha256,
        })
    }
}

impl Manifest {
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}
