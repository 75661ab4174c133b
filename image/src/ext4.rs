//! The state partition: ext4 built as a file from a directory tree (`mke2fs -d`).

use std::path::Path;
use std::process::Command;

use crate::tool::{self, ToolError};

/// Builds an ext4 filesystem of `size` bytes labelled `label` holding `tree` into `out`.
pub fn mkfs_from_tree(tree: &Path, out: &Path, size: u64, label: &str) -> Result<(), ToolError> {
    let _ = std::fs::remove_file(out);
    tool::run(
        Command::new("mke2fs")
            .arg("-q")
            .arg("-F")
            .args(["-t", "ext4", "-b", "4096"])
            .args(["-E", "root_owner=0:0"])
            .arg("-L")
            .arg(label)
            .arg("-d")
            .arg(tree)
            .arg(out)
            .arg(format!("{}k", size / 1024)),
    )?;
    Ok(())
}
