//! The seam between container setup logic and the kernel. [`LinuxSyscall`] makes the real
//! calls; tests use a recorder so mount plans, namespace entry, identity, capabilities and
//! rlimits are checked without root.

use crate::rootfs::copyup::CopyError;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use seccompiler::BpfProgram;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

pub type SysResult<T> = Result<T, Errno>;

/// Capability sets as bit masks (bit n = capability number n).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

/// The kernel calls that the container's init makes while it sets itself up: mounts and
/// devices, namespaces, identity, capabilities, rlimits and seccomp.
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
    /// A descriptor of a directory, to come back to it with [`Syscall::fchdir`].
    fn open_dir(&self, path: &Path) -> SysResult<OwnedFd>;
    fn fchdir(&self, fd: BorrowedFd<'_>) -> SysResult<()>;
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
    /// mount_setattr(2) on the mount at `path` and every mount below it: sets the
    /// `MOUNT_ATTR_*` bits of `attr_set`, clears those of `attr_clr`.
    fn mount_setattr_recursive(&self, path: &Path, attr_set: u64, attr_clr: u64) -> SysResult<()>;
    /// Copies the content of directory `from` into directory `to` (`tmpcopyup`); with
    /// `root_attrs`, `to` also takes the owner and mode of `from`.
    fn copy_tree(
        &self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        root_attrs: bool,
    ) -> Result<(), CopyError>;

    /// Opens a namespace file (`/proc/<pid>/ns/<type>` or a bind mount of one) for `setns`.
    fn open_namespace(&self, path: &Path) -> SysResult<OwnedFd>;
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> SysResult<()>;
    fn unshare(&self, flags: CloneFlags) -> SysResult<()>;
    /// Supplementary groups.
    fn setgroups(&self, gids: &[u32]) -> SysResult<()>;
    /// Real, effective and saved group id at once.
    fn setresgid(&self, gid: u32) -> SysResult<()>;
    /// Real, effective and saved user id at once.
    fn setresuid(&self, uid: u32) -> SysResult<()>;
    /// `resource` is a `libc::RLIMIT_*` number.
    fn setrlimit(&self, resource: i32, soft: u64, hard: u64) -> SysResult<()>;
    /// The highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`).
    fn cap_last_cap(&self) -> SysResult<u64>;
    /// Drops capability `cap` from the bounding set (EINVAL past the kernel's last one).
    fn capbset_drop(&self, cap: u64) -> SysResult<()>;
    /// PR_SET_KEEPCAPS: keep permitted capabilities across the switch away from uid 0.
    fn set_keepcaps(&self, keep: bool) -> SysResult<()>;
    fn capset(&self, sets: CapSets) -> SysResult<()>;
    fn ambient_raise(&self, cap: u64) -> SysResult<()>;
    fn set_no_new_privs(&self) -> SysResult<()>;
    /// Installs one seccomp filter on the calling thread.
    fn seccomp_filter(&self, filter: &BpfProgram) -> SysResult<()>;
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// prctl(2) with integer arguments.
fn prctl(op: i32, a: u64, b: u64) -> SysResult<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(op, a, b, 0, 0) };
    Errno::result(r).map(drop)
}

/// Whether capability `cap` is in this process's bounding set (PR_CAPBSET_READ); EINVAL
/// past the kernel's last capability.
pub fn capbset_read(cap: u64) -> SysResult<bool> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
    Errno::result(r).map(|held| held == 1)
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
    fn open_dir(&self, path: &Path) -> SysResult<OwnedFd> {
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
    }
    fn fchdir(&self, fd: BorrowedFd<'_>) -> SysResult<()> {
        nix::unistd::fchdir(fd)
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
    fn mount_setattr_recursive(&self, path: &Path, attr_set: u64, attr_clr: u64) -> SysResult<()> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        let attr = libc::mount_attr {
            attr_set,
            attr_clr,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: a live C string and a live mount_attr whose size is passed along; the
        // kernel only reads them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c.as_ptr(),
                (libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW) as libc::c_uint,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        Errno::result(r).map(drop)
    }
    fn copy_tree(
        &self,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        root_attrs: bool,
    ) -> Result<(), CopyError> {
        crate::rootfs::copyup::copy_tree(from, to, root_attrs)
    }
    fn open_namespace(&self, path: &Path) -> SysResult<OwnedFd> {
        std::fs::File::open(path)
            .map(OwnedFd::from)
            .map_err(io_errno)
    }
    fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> SysResult<()> {
        nix::sched::setns(fd, nstype)
    }
    fn unshare(&self, flags: CloneFlags) -> SysResult<()> {
        nix::sched::unshare(flags)
    }
    fn setgroups(&self, gids: &[u32]) -> SysResult<()> {
        let gids: Vec<nix::unistd::Gid> = gids
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&gids)
    }
    fn setresgid(&self, gid: u32) -> SysResult<()> {
        let gid = nix::unistd::Gid::from_raw(gid);
        nix::unistd::setresgid(gid, gid, gid)
    }
    fn setresuid(&self, uid: u32) -> SysResult<()> {
        let uid = nix::unistd::Uid::from_raw(uid);
        nix::unistd::setresuid(uid, uid, uid)
    }
    fn setrlimit(&self, resource: i32, soft: u64, hard: u64) -> SysResult<()> {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: a resource number and a pointer to a live rlimit; the kernel checks the
        // number.
        Errno::result(unsafe { libc::setrlimit(resource as _, &lim) }).map(drop)
    }
    fn cap_last_cap(&self) -> SysResult<u64> {
        // Asked of the kernel, not of /proc: the container's /proc may not be mounted yet.
        // PR_CAPBSET_READ answers EINVAL for a number past the last capability.
        for cap in (0..64u64).rev() {
            match capbset_read(cap) {
                Ok(_) => return Ok(cap),
                Err(Errno::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EINVAL)
    }
    fn capbset_drop(&self, cap: u64) -> SysResult<()> {
        prctl(libc::PR_CAPBSET_DROP, cap, 0)
    }
    fn set_keepcaps(&self, keep: bool) -> SysResult<()> {
        prctl(libc::PR_SET_KEEPCAPS, u64::from(keep), 0)
    }
    fn capset(&self, sets: CapSets) -> SysResult<()> {
        let hdr = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let CapSets {
            effective,
            permitted,
            inheritable,
        } = sets;
        let data = [
            CapData {
                effective: effective as u32,
                permitted: permitted as u32,
                inheritable: inheritable as u32,
            },
            CapData {
                effective: (effective >> 32) as u32,
                permitted: (permitted >> 32) as u32,
                inheritable: (inheritable >> 32) as u32,
            },
        ];
        // SAFETY: header and two data structs of the v3 ABI, both live for the call.
        let r = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) };
        Errno::result(r).map(drop)
    }
    fn ambient_raise(&self, cap: u64) -> SysResult<()> {
        prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as u64, cap)
    }
    fn set_no_new_privs(&self) -> SysResult<()> {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)
    }
    fn seccomp_filter(&self, filter: &BpfProgram) -> SysResult<()> {
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at a live, correctly sized instruction array (seccompiler's
        // sock_filter has libc's layout); the kernel copies it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        Errno::result(rc).map(drop)
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
        /// fchdir to the directory opened at this path.
        Fchdir(PathBuf),
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
        MountSetattr {
            target: PathBuf,
            attr_set: u64,
            attr_clr: u64,
        },
        /// tmpcopyup between the directories opened at these paths.
        CopyTree {
            from: PathBuf,
            to: PathBuf,
            root_attrs: bool,
        },
        Hostname(String),
        Domainname(String),
        /// setns on the namespace file opened at this path.
        Setns(PathBuf, CloneFlags),
        Unshare(CloneFlags),
        Setgroups(Vec<u32>),
        Setresgid(u32),
        Setresuid(u32),
        Setrlimit {
            resource: i32,
            soft: u64,
            hard: u64,
        },
        CapbsetDrop(u64),
        Keepcaps(bool),
        Capset(CapSets),
        AmbientRaise(u64),
        NoNewPrivs,
        /// A seccomp filter of this many instructions.
        Seccomp(usize),
    }

    #[derive(Default)]
    pub struct RecordingSyscall {
        pub calls: RefCell<Vec<Call>>,
        /// Mount targets that fail with this errno (to test fallbacks).
        pub fail_mount: RefCell<Vec<(PathBuf, Errno)>>,
        /// Calls (other than mounts) that fail with this errno instead of being recorded.
        pub fail: RefCell<Vec<(Call, Errno)>>,
        /// Descriptors handed out by `open_namespace` and `open_dir`, with the path they
        /// stand for.
        namespaces: RefCell<Vec<(std::os::fd::RawFd, PathBuf)>>,
        /// The last capability of the simulated kernel (`None`: 63).
        pub last_cap: std::cell::Cell<Option<u64>>,
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
        /// The path a descriptor of `open_namespace` or `open_dir` stands for (the latest
        /// for its number: descriptors are reused once closed).
        fn path_of(&self, fd: BorrowedFd<'_>) -> PathBuf {
            use std::os::fd::AsRawFd;
            self.namespaces
                .borrow()
                .iter()
                .rev()
                .find(|(n, _)| *n == fd.as_raw_fd())
                .map(|(_, p)| p.clone())
                .unwrap_or_default()
        }
        /// Makes `call` fail with `errno`.
        pub fn fail_on(&self, call: Call, errno: Errno) {
            self.fail.borrow_mut().push((call, errno));
        }
        fn push(&self, c: Call) -> SysResult<()> {
            if let Some((_, e)) = self.fail.borrow().iter().find(|(f, _)| *f == c) {
                return Err(*e);
            }
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
        fn mount_setattr_recursive(
            &self,
            path: &Path,
            attr_set: u64,
            attr_clr: u64,
        ) -> SysResult<()> {
            self.push(Call::MountSetattr {
                target: path.to_path_buf(),
                attr_set,
                attr_clr,
            })
        }
        fn copy_tree(
            &self,
            from: BorrowedFd<'_>,
            to: BorrowedFd<'_>,
            root_attrs: bool,
        ) -> Result<(), CopyError> {
            let (from, to) = (self.path_of(from), self.path_of(to));
            self.push(Call::CopyTree {
                from,
                to: to.clone(),
                root_attrs,
            })
            .map_err(|errno| CopyError {
                what: "copy",
                path: to,
                errno,
            })
        }
        fn open_namespace(&self, path: &Path) -> SysResult<OwnedFd> {
            // A real descriptor (of /dev/null) that `setns` maps back to the path.
            let fd = OwnedFd::from(std::fs::File::open("/dev/null").map_err(io_errno)?);
            use std::os::fd::AsRawFd;
            self.namespaces
                .borrow_mut()
                .push((fd.as_raw_fd(), path.to_path_buf()));
            Ok(fd)
        }
        fn setns(&self, fd: BorrowedFd<'_>, nstype: CloneFlags) -> SysResult<()> {
            self.push(Call::Setns(self.path_of(fd), nstype))
        }
        fn open_dir(&self, path: &Path) -> SysResult<OwnedFd> {
            self.open_namespace(path)
        }
        fn fchdir(&self, fd: BorrowedFd<'_>) -> SysResult<()> {
            self.push(Call::Fchdir(self.path_of(fd)))
        }
        fn unshare(&self, flags: CloneFlags) -> SysResult<()> {
            self.push(Call::Unshare(flags))
        }
        fn setgroups(&self, gids: &[u32]) -> SysResult<()> {
            self.push(Call::Setgroups(gids.to_vec()))
        }
        fn setresgid(&self, gid: u32) -> SysResult<()> {
            self.push(Call::Setresgid(gid))
        }
        fn setresuid(&self, uid: u32) -> SysResult<()> {
            self.push(Call::Setresuid(uid))
        }
        fn setrlimit(&self, resource: i32, soft: u64, hard: u64) -> SysResult<()> {
            self.push(Call::Setrlimit {
                resource,
                soft,
                hard,
            })
        }
        fn cap_last_cap(&self) -> SysResult<u64> {
            Ok(self.last_cap.get().unwrap_or(63))
        }
        fn capbset_drop(&self, cap: u64) -> SysResult<()> {
            if self.last_cap.get().is_some_and(|last| cap > last) {
                return Err(Errno::EINVAL);
            }
            self.push(Call::CapbsetDrop(cap))
        }
        fn set_keepcaps(&self, keep: bool) -> SysResult<()> {
            self.push(Call::Keepcaps(keep))
        }
        fn capset(&self, sets: CapSets) -> SysResult<()> {
            self.push(Call::Capset(sets))
        }
        fn ambient_raise(&self, cap: u64) -> SysResult<()> {
            self.push(Call::AmbientRaise(cap))
        }
        fn set_no_new_privs(&self) -> SysResult<()> {
            self.push(Call::NoNewPrivs)
        }
        fn seccomp_filter(&self, filter: &BpfProgram) -> SysResult<()> {
            self.push(Call::Seccomp(filter.len()))
        }
    }
}
