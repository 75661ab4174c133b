//! The state partition: ext4 built as a file from a directory tree (`mke2fs -d`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::{self, HostError};

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{0}: a name debugfs cannot quote (\" or a newline)")]
    Unquotable(String),
}

/// Builds an ext4 filesystem of `size` bytes labelled `label` holding `tree` into `out`.
///
/// Reproducible: `uuid` is the filesystem UUID and directory-hash seed, E2FSPROGS_FAKE_TIME
/// stands in for the clock, and every inode's times are set to `epoch` afterwards (mke2fs
/// copies the build tree's times, and a ctime cannot be set on the build host). mke2fs reads
/// each directory in name order, so inode numbers do not depend on the build tree's
/// filesystem.
pub fn mkfs_from_tree(
    tree: &Path,
    out: &Path,
    size: u64,
    label: &str,
    uuid: &str,
    epoch: u64,
    work: &Path,
) -> Result<(), Ext4Error> {
    let _ = std::fs::remove_file(out);
    let fake_time = epoch.to_string();
    host::run(
        Command::new("mke2fs")
            // Newer e2fsprogs take SOURCE_DATE_EPOCH too: make both say the same.
            .env("E2FSPROGS_FAKE_TIME", &fake_time)
            .env("SOURCE_DATE_EPOCH", &fake_time)
            .arg("-q")
            .arg("-F")
            .args(["-t", "ext4", "-b", "4096"])
            .arg("-E")
            .arg(format!("root_owner=0:0,hash_seed={uuid}"))
            .arg("-U")
            .arg(uuid)
            .arg("-L")
            .arg(label)
            .arg("-d")
            .arg(tree)
            .arg(out)
            .arg(format!("{}k", size / 1024)),
    )?;

    let mut paths = vec![String::from("/")];
    walk(tree, tree, &mut paths)?;
    let mut script = String::new();
    for p in &paths {
        if p.contains(['"', '\n']) {
            return Err(Ext4Error::Unquotable(p.clone()));
        }
        for field in ["atime", "mtime", "ctime", "crtime"] {
            script.push_str(&format!("sif \"{p}\" {field} {epoch}\n"));
        }
    }
    let script_path = work.join(format!(
        "{}.times",
        out.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&script_path, script).map_err(HostError::io(&script_path))?;
    let run = host::run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", &fake_time)
            .env("SOURCE_DATE_EPOCH", &fake_time)
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(out),
    )?;
    // debugfs reports a failed command on stderr and still exits 0.
    let stderr = String::from_utf8_lossy(&run.stderr);
    if let Some(line) = stderr
        .lines()
        .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
    {
        return Err(Ext4Error::Host(HostError::Failed {
            command: format!("debugfs -w -f {}", script_path.display()),
            status: "exit 0".into(),
            stderr: line.to_string(),
        }));
    }
    Ok(())
}

/// Every path below `dir`, as `/relative/path`, sorted.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), Ext4Error> {
    let io = HostError::io(dir);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(root).unwrap_or(&p);
        out.push(format!("/{}", rel.display()));
        let meta = std::fs::symlink_metadata(&p).map_err(HostError::io(&p))?;
        if meta.is_dir() {
            walk(root, &p, out)?;
        }
    }
    Ok(())
}
