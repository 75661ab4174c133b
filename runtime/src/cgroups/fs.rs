//! The seam between cgroup logic and the kernel: every file access, the one signal the
//! kill fallback sends and the device program go through [`CgroupFs`], so the logic is
//! unit-tested on a temp dir.

use super::devices::PROGRAM_NAME;
use crate::bpf::{self, BpfError, Insn};
use nix::errno::Errno;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// File operations on a cgroup v2 hierarchy.
pub trait CgroupFs {
    /// Reads a whole interface file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Writes a value with one write(2), without creating the file: a missing interface file
    /// means the controller is absent and must surface as `NotFound`.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Creates one directory level (a new cgroup).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty cgroup directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Child directories (child cgroups) of a directory.
    fn child_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
    /// Sends a signal to a process: used by the kill fallback on kernels without `cgroup.kill`.
    fn signal(&self, pid: i32, signal: i32) -> io::Result<()>;
    /// Makes `program` the only device program (`BPF_CGROUP_DEVICE`) attached to the cgroup
    /// at `path`, replacing any attached before.
    fn set_device_program(&self, path: &Path, program: &[Insn]) -> Result<(), BpfError>;
}

/// The real cgroup filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFs;

impl CgroupFs for HostFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
        // cgroupfs takes each value in a single write; write_all could split it.
        let n = f.write(value.as_bytes())?;
        if n != value.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to cgroup file",
            ));
        }
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn child_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        Ok(dirs)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn signal(&self, pid: i32, signal: i32) -> io::Result<()> {
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn set_device_program(&self, path: &Path, program: &[Insn]) -> Result<(), BpfError> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| BpfError::Sys {
                op: "open cgroup",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
        bpf::replace_cgroup_program(
            &bpf::Kernel,
            std::os::fd::AsFd::as_fd(&dir),
            bpf::PROG_TYPE_CGROUP_DEVICE,
            bpf::ATTACH_CGROUP_DEVICE,
            PROGRAM_NAME,
            program,
        )
    }
}
