//! The early mounts of PID 1 (kernel filesystems and cgroup2), behind a small trait so the
//! list and its handling are tested without root.

use std::io;

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::BootError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

/// DESIGN duty 1, in order: parents before children.
pub fn early_mounts() -> Vec<MountSpec> {
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let m = |source, target, fstype, flags, data| MountSpec {
        source,
        target,
        fstype,
        flags,
        data,
    };
    vec![
        m("proc", "/proc", "proc", secure, None),
        m("sysfs", "/sys", "sysfs", secure, None),
        m(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        m(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        m(
            "shm",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        m(
            "run",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        m(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            secure,
            Some("nsdelegate"),
        ),
    ]
}

pub trait Mounter {
    fn mkdir(&mut self, path: &str) -> io::Result<()>;
    fn mount(&mut self, spec: &MountSpec) -> Result<(), Errno>;
}

/// The real syscalls.
pub struct SysMounter;

impl Mounter for SysMounter {
    fn mkdir(&mut self, path: &str) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount(&mut self, s: &MountSpec) -> Result<(), Errno> {
        nix::mount::mount(Some(s.source), s.target, Some(s.fstype), s.flags, s.data)
    }
}

/// Mounts every spec; a filesystem the kernel already mounted (devtmpfs with
/// CONFIG_DEVTMPFS_MOUNT) is fine. A mount point that cannot be created on a read-only root
/// must exist in the image, so only the mount's result counts.
pub fn mount_all(m: &mut dyn Mounter, specs: &[MountSpec]) -> Result<(), BootError> {
    for spec in specs {
        let _ = m.mkdir(spec.target);
        match m.mount(spec) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => {
                return Err(BootError::Mount {
                    target: spec.target.to_string(),
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail: Option<(&'static str, Errno)>,
    }

    impl Mounter for Recorder {
        fn mkdir(&mut self, path: &str) -> io::Result<()> {
            self.calls.push(format!("mkdir {path}"));
            Err(io::Error::from_raw_os_error(libc::EROFS))
        }
        fn mount(&mut self, s: &MountSpec) -> Result<(), Errno> {
            self.calls.push(format!("mount {} {}", s.fstype, s.target));
            match self.fail {
                Some((t, e)) if t == s.target => Err(e),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn mounts_in_order_and_tolerates_already_mounted() {
        let mut r = Recorder {
            fail: Some(("/dev", Errno::EBUSY)),
            ..Default::default()
        };
        mount_all(&mut r, &early_mounts()).unwrap();
        let mounts: Vec<&str> = r
            .calls
            .iter()
            .filter(|c| c.starts_with("mount"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            mounts,
            [
                "mount proc /proc",
                "mount sysfs /sys",
                "mount devtmpfs /dev",
                "mount devpts /dev/pts",
                "mount tmpfs /dev/shm",
                "mount tmpfs /run",
                "mount cgroup2 /sys/fs/cgroup"
            ]
        );
    }

    #[test]
    fn a_failed_mount_names_its_target() {
        let mut r = Recorder {
            fail: Some(("/sys", Errno::ENODEV)),
            ..Default::default()
        };
        let err = mount_all(&mut r, &early_mounts()).unwrap_err();
        assert_eq!(err.to_string(), "cannot mount /sys: ENODEV: No such device");
    }
}
