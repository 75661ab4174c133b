//! The seam between container setup logic and the kernel. [`LinuxSyscall`] makes the real
//! calls; tests use a recorder so mount plans are checked without root.

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

pub type SysResult<T> = Result<T, Errno>;

/// The kernel calls that mount and device setup make.
pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> SysResult<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()>;
    fn chdir(&self, path: &Path) -> SysResult<()>;
    fn chroot(&self, path: &Path) -> SysResult<()>;
    /// Creates a directory and its parents.
    fn mkdir_all(&self, path: &Path, mode: u32) -> SysResult<()>;
    /// Creates an empty regular file if missing (a bind-mount target).
    fn touch(&self, path: &Path) -> SysResult<()>;
    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, dev: u64) -> SysResult<()>;
    fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> SysResult<()>;
    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()>;
    fn sethostname(&self, name: &str) -> SysResult<()>;
    fn setdomainname(&self, name: &str) -> SysResult<()>;
    /// Mount flags of the filesystem at `path` that a bind remount must keep (nosuid, nodev,
    /// noexec, ...: locked in a user namespace).
    fn locked_flags(&self, path: &Path) -> SysResult<MsFlags>;
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }
    fn umount2(&self, target: &Path, flags: MntFlags) -> SysResult<()> {
        nix::mount::umount2(target, flags)
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }
    fn chdir(&self, path: &Path) -> SysResult<()> {
        nix::unistd::chdir(path)
    }
    fn chroot(&self, path: &Path) -> SysResult<()> {
        nix::unistd::chroot(path)
    }
    fn mkdir_all(&self, path: &Path, mode: u32) -> SysResult<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(io_errno)
    }
    fn touch(&self, path: &Path) -> SysResult<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map(drop)
            .map_err(io_errno)
    }
    fn mknod(&self, path: &Path, kind: SFlag, mode: u32, dev: u64) -> SysResult<()> {
        nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(mode), dev)
    }
    fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> SysResult<()> {
        nix::unistd::chown(
            path,
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
        )
    }
    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()> {
        std::os::unix::fs::symlink(target, link).map_err(io_errno)
    }
    fn sethostname(&self, name: &str) -> SysResult<()> {
        nix::unistd::sethostname(name)
    }
    fn setdomainname(&self, name: &str) -> SysResult<()> {
        // SAFETY: the pointer and length describe a live byte slice.
        let r = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        Errno::result(r).map(drop)
    }
    fn locked_flags(&self, path: &Path) -> SysResult<MsFlags> {
        use nix::sys::statvfs::{statvfs, FsFlags};
        let f = statvfs(path)?.flags();
        let mut out = MsFlags::empty();
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        ] {
            if f.contains(fs) {
                out |= ms;
            }
        }
        Ok(out)
    }
}

/// dup2(2) on raw descriptors (stdio wiring in a freshly cloned child).
pub fn dup2(from: std::os::fd::RawFd, to: std::os::fd::RawFd) -> SysResult<()> {
    // SAFETY: dup2 only manipulates the descriptor table.
    Errno::result(unsafe { libc::dup2(from, to) }).map(drop)
}

#[cfg(test)]
pub mod test {
    //! A recorder that performs nothing and remembers every call.
    use super::*;
    use std::cell::RefCell;
    use std::path::PathBuf;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Mount {
            source: Option<PathBuf>,
            target: PathBuf,
            fstype: Option<String>,
            flags: MsFlags,
            data: Option<String>,
        },
        Umount(PathBuf),
        PivotRoot(PathBuf),
        Chdir(PathBuf),
        Chroot(PathBuf),
        Mkdir(PathBuf),
        Touch(PathBuf),
        Mknod {
            path: PathBuf,
            kind: SFlag,
            mode: u32,
            dev: u64,
        },
        Chown(PathBuf, Option<u32>, Option<u32>),
        Symlink {
            target: PathBuf,
            link: PathBuf,
        },
        Hostname(String),
        Domainname(String),
    }

    #[derive(Default)]
    pub struct RecordingSyscall {
        pub calls: RefCell<Vec<Call>>,
        /// Mount targets that fail with this errno (to test fallbacks).
        pub fail_mount: RefCell<Vec<(PathBuf, Errno)>>,
    }

    impl RecordingSyscall {
        pub fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }
        pub fn mounts(&self) -> Vec<(Option<PathBuf>, PathBuf, Option<String>, MsFlags)> {
            self.calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::Mount {
                        source,
                        target,
                        fstype,
                        flags,
                        ..
                    } => Some((source, target, fstype, flags)),
                    _ => None,
                })
                .collect()
        }
        fn push(&self, c: Call) -> SysResult<()> {
            self.calls.borrow_mut().push(c);
            Ok(())
        }
    }

    impl Syscall for RecordingSyscall {
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> SysResult<()> {
            if let Some((_, e)) = self.fail_mount.borrow().iter().find(|(t, _)| t == target) {
                return Err(*e);
            }
            self.push(Call::Mount {
                source: source.map(Path::to_path_buf),
                target: target.to_path_buf(),
                fstype: fstype.map(String::from),
                flags,
                data: data.map(String::from),
            })
        }
        fn umount2(&self, target: &Path, _flags: MntFlags) -> SysResult<()> {
            self.push(Call::Umount(target.to_path_buf()))
        }
        fn pivot_root(&self, new_root: &Path, _put_old: &Path) -> SysResult<()> {
            self.push(Call::PivotRoot(new_root.to_path_buf()))
        }
        fn chdir(&self, path: &Path) -> SysResult<()> {
            self.push(Call::Chdir(path.to_path_buf()))
        }
        fn chroot(&self, path: &Path) -> SysResult<()> {
            self.push(Call::Chroot(path.to_path_buf()))
        }
        fn mkdir_all(&self, path: &Path, _mode: u32) -> SysResult<()> {
            self.push(Call::Mkdir(path.to_path_buf()))
        }
        fn touch(&self, path: &Path) -> SysResult<()> {
            self.push(Call::Touch(path.to_path_buf()))
        }
        fn mknod(&self, path: &Path, kind: SFlag, mode: u32, dev: u64) -> SysResult<()> {
            self.push(Call::Mknod {
                path: path.to_path_buf(),
                kind,
                mode,
                dev,
            })
        }
        fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> SysResult<()> {
            self.push(Call::Chown(path.to_path_buf(), uid, gid))
        }
        fn symlink(&self, target: &Path, link: &Path) -> SysResult<()> {
            self.push(Call::Symlink {
                target: target.to_path_buf(),
                link: link.to_path_buf(),
            })
        }
        fn sethostname(&self, name: &str) -> SysResult<()> {
            self.push(Call::Hostname(name.to_string()))
        }
        fn setdomainname(&self, name: &str) -> SysResult<()> {
            self.push(Call::Domainname(name.to_string()))
        }
        fn locked_flags(&self, _path: &Path) -> SysResult<MsFlags> {
            Ok(MsFlags::MS_NOSUID)
        }
    }
}
