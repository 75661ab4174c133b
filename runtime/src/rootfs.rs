//! The container's root filesystem: mounts from the spec, /dev, pivot_root, masked and
//! read-only paths. Every kernel call goes through [`Syscall`].

use crate::syscall::{SysResult, Syscall};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::SFlag;
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{what} {path}: {errno}")]
    Sys {
        what: String,
        path: PathBuf,
        errno: Errno,
    },
    #[error("mounts[{index}] ({dest}): unknown mount option `{option}`")]
    Option {
        index: usize,
        dest: PathBuf,
        option: String,
    },
    #[error(
        "mounts[{index}] ({dest}): option `{option}` acts on the filesystem, not on a bind \
         mount; it cannot be applied"
    )]
    NotForBind {
        index: usize,
        dest: PathBuf,
        option: String,
    },
    #[error(
        "mounts[{index}] ({dest}): recursive options ({options}) need mount_setattr(2) \
         (Linux 5.12), which this kernel lacks"
    )]
    NoMountSetattr {
        index: usize,
        dest: PathBuf,
        options: String,
    },
    #[error("mounts[{index}] ({dest}): mount_setattr ({options}): {errno}")]
    MountSetattr {
        index: usize,
        dest: PathBuf,
        options: String,
        errno: Errno,
    },
    #[error("mounts[{index}] ({dest}): `tmpcopyup` applies to tmpfs mounts only")]
    CopyUpNotTmpfs { index: usize, dest: PathBuf },
    #[error("mounts[{index}] ({dest}): tmpcopyup: {source}")]
    CopyUp {
        index: usize,
        dest: PathBuf,
        #[source]
        source: copyup::CopyError,
    },
    #[error("{path}: too many levels of symbolic links inside the root")]
    Loop { path: PathBuf },
}

fn fail(what: impl Into<String>, path: &Path) -> impl FnOnce(Errno) -> RootfsError {
    let (what, path) = (what.into(), path.to_path_buf());
    move |errno| RootfsError::Sys { what, path, errno }
}

/// Every mount option [`MountOptions::parse`] acts on (the `features` document lists them);
/// any other option is filesystem data, which only a filesystem mount passes on.
pub const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "tmpcopyup",
    "unbindable",
];

/// A mount's options split into what mount(2) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Flags the options explicitly clear (`rw`, `suid`, `dev`, `exec`, ...).
    pub cleared: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
    pub bind: bool,
    /// `MOUNT_ATTR_*` bits the recursive options (`rro`, `rnosuid`, ...) set and clear on the
    /// mount and every mount below it.
    pub rec_set: u64,
    pub rec_clr: u64,
    /// The recursive options as given, for errors.
    pub recursive: Vec<String>,
    /// Flag options that act on the filesystem, not on the mount (`sync`, `mand`, ...): a
    /// bind mount cannot apply them.
    pub fs_flags: Vec<String>,
    /// A tmpfs starts with a copy of the directory it covers.
    pub tmpcopyup: bool,
}

/// Flags a bind remount applies to the mount itself; the others belong to the filesystem.
const MOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME)
    .union(MsFlags::MS_BIND)
    .union(MsFlags::MS_REC)
    .union(MsFlags::MS_REMOUNT);

/// The `MOUNT_ATTR_*` bits (set, clear) of a recursive option, as mount_setattr(2) takes
/// them. The access-time modes are one field, so each of those clears the whole field and
/// sets its mode: `ratime` and `rnostrictatime` return to the kernel's default (relatime),
/// `rnorelatime` is strictatime.
pub fn recursive_attr(name: &str) -> Option<(u64, u64)> {
    const ATIME: u64 = libc::MOUNT_ATTR__ATIME;
    Some(match name {
        "rro" => (libc::MOUNT_ATTR_RDONLY, 0),
        "rrw" => (0, libc::MOUNT_ATTR_RDONLY),
        "rnosuid" => (libc::MOUNT_ATTR_NOSUID, 0),
        "rsuid" => (0, libc::MOUNT_ATTR_NOSUID),
        "rnodev" => (libc::MOUNT_ATTR_NODEV, 0),
        "rdev" => (0, libc::MOUNT_ATTR_NODEV),
        "rnoexec" => (libc::MOUNT_ATTR_NOEXEC, 0),
        "rexec" => (0, libc::MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (libc::MOUNT_ATTR_NODIRATIME, 0),
        "rdiratime" => (0, libc::MOUNT_ATTR_NODIRATIME),
        "rnoatime" => (libc::MOUNT_ATTR_NOATIME, ATIME),
        "rstrictatime" | "rnorelatime" => (libc::MOUNT_ATTR_STRICTATIME, ATIME),
        "rrelatime" | "ratime" | "rnostrictatime" => (libc::MOUNT_ATTR_RELATIME, ATIME),
        "rnosymfollow" => (libc::MOUNT_ATTR_NOSYMFOLLOW, 0),
        "rsymfollow" => (0, libc::MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

impl MountOptions {
    pub fn parse(options: &[String]) -> Result<MountOptions, String> {
        let mut o = MountOptions {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
            bind: false,
            rec_set: 0,
            rec_clr: 0,
            recursive: Vec::new(),
            fs_flags: Vec::new(),
            tmpcopyup: false,
        };
        for opt in options {
            if let Some((set, clear)) = recursive_attr(opt) {
                // A later option wins over an earlier one, as with the flags. The atime
                // field is always cleared whole, so it is never taken back out of `rec_clr`.
                o.rec_set = (o.rec_set & !clear) | set;
                o.rec_clr = (o.rec_clr & !set) | clear;
                o.recursive.push(opt.clone());
                continue;
            }
            let (set, clear) = match opt.as_str() {
                "defaults" => (MsFlags::empty(), MsFlags::empty()),
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
                "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
                "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
                "bind" => {
                    o.bind = true;
                    (MsFlags::MS_BIND, MsFlags::empty())
                }
                "rbind" => {
                    o.bind = true;
                    (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
                }
                "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
                | "unbindable" | "runbindable" => {
                    o.propagation
                        .push(propagation(opt).unwrap_or(MsFlags::MS_PRIVATE));
                    continue;
                }
                "tmpcopyup" => {
                    o.tmpcopyup = true;
                    continue;
                }
                other if other.starts_with("idmap") || other.starts_with("ridmap") => {
                    return Err(other.to_string())
                }
                other => {
                    if other.is_empty() || other.contains(',') {
                        return Err(other.to_string());
                    }
                    o.data.push(other.to_string());
                    continue;
                }
            };
            if !MOUNT_FLAGS.contains(set | clear) {
                o.fs_flags.push(opt.clone());
            }
            o.flags = (o.flags | set) - clear;
            o.cleared = (o.cleared | clear) - set;
        }
        Ok(o)
    }
}

/// `linux.rootfsPropagation` as mount(2) flags; rslave by default, so that nothing mounted in
/// the container propagates back to the host.
fn root_propagation(spec: &Spec) -> MsFlags {
    spec.linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .and_then(propagation)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC)
}

/// The mount(2) flags of a propagation name (`rslave`, `private`, ...).
pub fn propagation(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Resolves `path` inside `root` the way the kernel would after chroot(root): symlinks are
/// followed but can never lead outside the root (an absolute link restarts at the root, `..`
/// stops at it). Missing components are kept as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, RootfsError> {
    let mut todo: VecDeque<OsString> = components(path);
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            done.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&name);
        match std::fs::read_link(&candidate) {
            Ok(target) => {
                links += 1;
                if links > 40 {
                    return Err(RootfsError::Loop {
                        path: path.to_path_buf(),
                    });
                }
                if target.is_absolute() {
                    done.clear();
                }
                for c in components(&target).into_iter().rev() {
                    todo.push_front(c);
                }
            }
            Err(_) => done.push(name),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Everything of the spec the rootfs setup needs.
pub struct RootfsSetup<'a> {
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    pub spec: &'a Spec,
    /// In a new user namespace devices cannot be created, only bind-mounted from the host.
    pub user_ns: bool,
}

/// The devices every container gets: (name, major, minor).
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

impl RootfsSetup<'_> {
    /// Before pivot_root: propagation, the rootfs as a mount point, the spec's mounts, /dev.
    pub fn prepare(&self, sys: &dyn Syscall) -> Result<(), RootfsError> {
        let root_prop = root_propagation(self.spec);
        // As asked, as runc does: with rshared, this namespace's copies of the host's shared
        // mounts stay their peers, so a volume mounted rshared propagates both ways.
        sys.mount(None, Path::new("/"), None, root_prop, None)
            .map_err(fail("make / ", Path::new("/")))?;
        // The mount that holds the rootfs made private (here only), as runc does: otherwise,
        // where it is a peer of a shared host mount (the root propagation is not recursive
        // or is shared), the rootfs's bind and every mount made in it would appear on the
        // host too; and pivot_root refuses a shared parent of the new root. A shared root is
        // made shared again after pivot_root (`finish`).
        self.make_rootfs_mount_private(sys)?;
        sys.mount(
            Some(self.rootfs),
            self.rootfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(fail("bind rootfs", self.rootfs))?;
        let mut dev_is_bind = false;
        for (index, m) in self.spec.mounts().iter().flatten().enumerate() {
            let opts = MountOptions::parse(m.options().as_deref().unwrap_or_default()).map_err(
                |option| RootfsError::Option {
                    index,
                    dest: m.destination().clone(),
                    option,
                },
            )?;
            if m.destination() == Path::new("/dev")
                && (opts.bind || m.typ().as_deref() == Some("bind"))
            {
                dev_is_bind = true;
            }
            self.mount_one(sys, index, m, &opts)?;
        }
        if !dev_is_bind {
            self.create_devices(sys)?;
        }
        Ok(())
    }

    /// The rootfs's own mount, or the nearest one above it, made private.
    fn make_rootfs_mount_private(&self, sys: &dyn Syscall) -> Result<(), RootfsError> {
        let mut at = self.rootfs;
        loop {
            let Err(e) = sys.mount(None, at, None, MsFlags::MS_PRIVATE, None) else {
                return Ok(());
            };
            match (e, at.parent()) {
                // Not a mount point: its parent directory may be.
                (Errno::EINVAL, Some(parent)) => at = parent,
                _ => return Err(fail("make private", at)(e)),
            }
        }
    }

    fn mount_one(
        &self,
        sys: &dyn Syscall,
        index: usize,
        m: &Mount,
        o: &MountOptions,
    ) -> Result<(), RootfsError> {
        let dest = resolve_in_root(self.rootfs, m.destination())?;
        let typ = m.typ().as_deref().unwrap_or("none");
        let bind = o.bind || typ == "bind";
        if o.tmpcopyup && (bind || typ != "tmpfs") {
            return Err(RootfsError::CopyUpNotTmpfs {
                index,
                dest: m.destination().clone(),
            });
        }
        // A bind mount takes no filesystem data and no filesystem flags: refused rather than
        // dropped, so the container never runs with less than it asked for.
        if let Some(option) = bind
            .then(|| o.fs_flags.iter().chain(&o.data).next())
            .flatten()
        {
            return Err(RootfsError::NotForBind {
                index,
                dest: m.destination().clone(),
                option: option.clone(),
            });
        }
        let data = (!o.data.is_empty()).then(|| o.data.join(","));
        let source = m.source().as_ref().map(|s| {
            if s.is_absolute() || !bind {
                s.clone()
            } else {
                self.bundle.join(s)
            }
        });
        if bind {
            let src = source.clone().unwrap_or_default();
            if src.is_dir() {
                sys.mkdir_all(&dest, 0o755).map_err(fail("mkdir", &dest))?;
            } else {
                if let Some(parent) = dest.parent() {
                    sys.mkdir_all(parent, 0o755)
                        .map_err(fail("mkdir", parent))?;
                }
                sys.touch(&dest).map_err(fail("create", &dest))?;
            }
            let rec = o.flags & MsFlags::MS_REC;
            sys.mount(Some(&src), &dest, None, MsFlags::MS_BIND | rec, None)
                .map_err(fail(format!("bind {}", src.display()), &dest))?;
            let extra = o.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
            if !extra.is_empty() {
                self.remount_bind(sys, &dest, extra, o.cleared, rec)?;
            }
        } else {
            // A directory of the image lends its owner and mode to the tmpfs copied over it;
            // one made here leaves the tmpfs its own, as with runc.
            let existed = o.tmpcopyup && dest.is_dir();
            sys.mkdir_all(&dest, 0o755).map_err(fail("mkdir", &dest))?;
            // Berth is cgroup v2 only: a `cgroup` mount is the v2 hierarchy (scoped to the
            // container by its cgroup namespace).
            let typ = if typ == "cgroup" { "cgroup2" } else { typ };
            // The directory the tmpfs will cover, still reachable through this descriptor
            // once it is covered.
            let under = match o.tmpcopyup {
                true => Some(sys.open_dir(&dest).map_err(fail("open", &dest))?),
                false => None,
            };
            // A read-only tmpfs is filled first and made read-only after.
            let flags = match under {
                Some(_) => o.flags - MsFlags::MS_RDONLY,
                None => o.flags,
            };
            let r = sys.mount(source.as_deref(), &dest, Some(typ), flags, data.as_deref());
            match r {
                Ok(()) => {
                    if let Some(under) = under {
                        self.copy_up(sys, index, m, o, under.as_fd(), &dest, existed)?;
                    }
                }
                // sysfs needs a network namespace owned by the user namespace; like runc,
                // fall back to the host's /sys, read-only.
                Err(Errno::EPERM) if typ == "sysfs" && self.user_ns => {
                    sys.mount(
                        Some(Path::new("/sys")),
                        &dest,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                    )
                    .map_err(fail("bind /sys", &dest))?;
                    self.remount_bind(
                        sys,
                        &dest,
                        o.flags | MsFlags::MS_RDONLY,
                        o.cleared,
                        MsFlags::MS_REC,
                    )?;
                }
                Err(e) => return Err(fail(format!("mount {typ}"), &dest)(e)),
            }
        }
        if o.rec_set != 0 || o.rec_clr != 0 {
            let options = o.recursive.join(",");
            sys.mount_setattr_recursive(&dest, o.rec_set, o.rec_clr)
                .map_err(|errno| match errno {
                    Errno::ENOSYS => RootfsError::NoMountSetattr {
                        index,
                        dest: m.destination().clone(),
                        options,
                    },
                    errno => RootfsError::MountSetattr {
                        index,
                        dest: m.destination().clone(),
                        options,
                        errno,
                    },
                })?;
        }
        for p in &o.propagation {
            sys.mount(None, &dest, None, *p, None)
                .map_err(fail("set propagation of", &dest))?;
        }
        Ok(())
    }

    /// Fills the tmpfs just mounted at `dest` with what `under` (the directory it covers)
    /// holds; the tmpfs's root takes the owner and mode of a directory that `existed` in the
    /// image unless the options set them.
    #[allow(clippy::too_many_arguments)]
    fn copy_up(
        &self,
        sys: &dyn Syscall,
        index: usize,
        m: &Mount,
        o: &MountOptions,
        under: std::os::fd::BorrowedFd<'_>,
        dest: &Path,
        existed: bool,
    ) -> Result<(), RootfsError> {
        let over = sys.open_dir(dest).map_err(fail("open", dest))?;
        let root_attrs = existed
            && !o
                .data
                .iter()
                .any(|d| d.starts_with("mode=") || d.starts_with("uid=") || d.starts_with("gid="));
        sys.copy_tree(under, over.as_fd(), root_attrs)
            .map_err(|source| RootfsError::CopyUp {
                index,
                dest: m.destination().clone(),
                source,
            })?;
        if o.flags.contains(MsFlags::MS_RDONLY) {
            let flags = o.flags & (MOUNT_FLAGS - MsFlags::MS_BIND - MsFlags::MS_REMOUNT);
            self.remount_bind(sys, dest, flags, o.cleared, MsFlags::empty())?;
        }
        Ok(())
    }

    /// A bind mount takes flags only on a remount, which must keep the flags the kernel locked.
    fn remount_bind(
        &self,
        sys: &dyn Syscall,
        dest: &Path,
        flags: MsFlags,
        cleared: MsFlags,
        rec: MsFlags,
    ) -> Result<(), RootfsError> {
        let locked =
            sys.locked_flags(dest).unwrap_or(MsFlags::empty()) - MsFlags::MS_RDONLY - cleared;
        sys.mount(
            None,
            dest,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rec | flags | locked,
            None,
        )
        .map_err(fail("remount", dest))
    }

    fn create_devices(&self, sys: &dyn Syscall) -> Result<(), RootfsError> {
        // Inside the root: an image's `/dev` may be a symlink, which the host would follow.
        let dev = resolve_in_root(self.rootfs, Path::new("/dev"))?;
        sys.mkdir_all(&dev, 0o755).map_err(fail("mkdir", &dev))?;
        let linux = self.spec.linux().as_ref();
        let extra = linux.and_then(|l| l.devices().as_ref());
        for (name, major, minor) in DEFAULT_DEVICES {
            if extra
                .into_iter()
                .flatten()
                .any(|d| d.path() == &Path::new("/dev").join(name))
            {
                continue;
            }
            self.device(
                sys,
                &Path::new("/dev").join(name),
                SFlag::S_IFCHR,
                major,
                minor,
                0o666,
                None,
                None,
            )?;
        }
        for d in extra.into_iter().flatten() {
            let kind = match d.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
                LinuxDeviceType::B => SFlag::S_IFBLK,
                LinuxDeviceType::P => SFlag::S_IFIFO,
                LinuxDeviceType::A => continue,
            };
            let (major, minor) = (d.major() as u64, d.minor() as u64);
            self.device(
                sys,
                d.path(),
                kind,
                major,
                minor,
                d.file_mode().unwrap_or(0o666),
                d.uid(),
                d.gid(),
            )?;
        }
        for (target, link) in [
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
            ("pts/ptmx", "ptmx"),
        ] {
            let link = dev.join(link);
            match sys.symlink(Path::new(target), &link) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(fail("symlink", &link)(e)),
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn device(
        &self,
        sys: &dyn Syscall,
        path: &Path,
        kind: SFlag,
        major: u64,
        minor: u64,
        mode: u32,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), RootfsError> {
        let dest = resolve_in_root(self.rootfs, path)?;
        if let Some(parent) = dest.parent() {
            sys.mkdir_all(parent, 0o755)
                .map_err(fail("mkdir", parent))?;
        }
        if self.user_ns {
            // mknod is not allowed in a user namespace: bind the host's node instead.
            sys.touch(&dest).map_err(fail("create", &dest))?;
            sys.mount(Some(path), &dest, None, MsFlags::MS_BIND, None)
                .map_err(fail(format!("bind {}", path.display()), &dest))?;
            return Ok(());
        }
        let dev = nix::sys::stat::makedev(major, minor);
        match sys.mknod(&dest, kind, mode, dev) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Ok(()),
            Err(e) => return Err(fail("mknod", &dest)(e)),
        }
        if uid.is_some() || gid.is_some() {
            sys.chown(&dest, uid, gid).map_err(fail("chown", &dest))?;
        }
        Ok(())
    }
}

/// Makes `rootfs` the root: pivot_root(".", ".") then detach the old root stacked on top,
/// or, with `no_pivot`, move the mount over / and chroot (for ramfs roots).
pub fn pivot(sys: &dyn Syscall, rootfs: &Path, no_pivot: bool) -> Result<(), RootfsError> {
    let dot = Path::new(".");
    sys.chdir(rootfs).map_err(fail("chdir", rootfs))?;
    if no_pivot {
        sys.mount(Some(rootfs), Path::new("/"), None, MsFlags::MS_MOVE, None)
            .map_err(fail("move mount", rootfs))?;
        sys.chroot(dot).map_err(fail("chroot", rootfs))?;
    } else {
        let old_root = sys
            .open_dir(Path::new("/"))
            .map_err(fail("open", Path::new("/")))?;
        sys.pivot_root(dot, dot)
            .map_err(fail("pivot_root", rootfs))?;
        // The old root is now stacked on the new one, but "." is still the new root: a
        // mount(2) of "." does not cross the mount on top. Through its descriptor, "." is
        // the old root.
        sys.fchdir(old_root.as_fd())
            .map_err(fail("fchdir to the old root", Path::new("/")))?;
        // The old root must not propagate its unmount to the host (its mounts are peers of
        // the host's when the root propagation is shared).
        sys.mount(None, dot, None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
            .map_err(fail("make old root rslave", rootfs))?;
        sys.umount2(dot, MntFlags::MNT_DETACH)
            .map_err(fail("detach old root", rootfs))?;
    }
    sys.chdir(Path::new("/"))
        .map_err(fail("chdir", Path::new("/")))
}

/// After pivot_root: masked and read-only paths, read-only root. `root` is "/" for real and a
/// temp dir in tests (it is where existence is checked).
pub fn finish(sys: &dyn Syscall, root: &Path, spec: &Spec) -> Result<(), RootfsError> {
    let root_prop = root_propagation(spec);
    if root_prop.contains(MsFlags::MS_SHARED) {
        sys.mount(None, root, None, root_prop, None)
            .map_err(fail("make / shared", root))?;
    }
    let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = at(Path::new(p));
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let r = if meta.is_dir() {
            sys.mount(
                Some(Path::new("tmpfs")),
                &path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )
        } else {
            sys.mount(
                Some(&at(Path::new("/dev/null"))),
                &path,
                None,
                MsFlags::MS_BIND,
                None,
            )
        };
        ignore_missing(r).map_err(fail("mask", &path))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = at(Path::new(p));
        if !path.exists() {
            continue;
        }
        let r = sys
            .mount(
                Some(&path),
                &path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .and_then(|()| {
                let locked = sys.locked_flags(&path).unwrap_or(MsFlags::empty());
                let flags = MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_REC
                    | MsFlags::MS_RDONLY
                    | locked;
                sys.mount(None, &path, None, flags, None)
            });
        ignore_missing(r).map_err(fail("make read-only", &path))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let locked = sys.locked_flags(root).unwrap_or(MsFlags::empty());
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked;
        sys.mount(None, root, None, flags, None)
            .map_err(fail("remount read-only", root))?;
    }
    Ok(())
}

fn ignore_missing(r: SysResult<()>) -> SysResult<()> {
    match r {
        Err(Errno::ENOENT) => Ok(()),
        other => other,
    }
}

pub mod copyup;
#[cfg(test)]
mod tests;
