//! System extensions: erofs images after the root erofs in the booted slot, inside the data
//! the root's dm-verity tree covers (format: `berth_formats::extension`). Each one is mapped
//! as a read-only device-mapper linear device and mounted on `/run/berth/extensions/<name>`;
//! its `units` directory, if any, is loaded like the built-in units.
//!
//! The linear devices cannot sit on the root's verity device itself: the mounted root holds
//! it exclusively, and device-mapper claims what it maps over (EBUSY). They sit on
//! `berth-extensions`, a second verity device with the root's own table (read back from the
//! kernel): device-mapper devices may share the device below them, and every read of an
//! extension is checked against the same root hash as the root's.

use std::fs::File;
use std::path::{Path, PathBuf};

use berth_formats::extension::{self, ChainError, Extension};
use log::{error, info};
use nix::errno::Errno;
use nix::mount::MsFlags;
use serde::Serialize;

use super::{Boot, BootError};
use crate::platform::devmapper::{self, ControlDevice, DevNum, DmControl, DmError, Target};

/// Where extensions are mounted, one directory each.
pub const EXTENSIONS_DIR: &str = "/run/berth/extensions";
/// The device-mapper name of an extension's device is this plus its name.
pub const DM_PREFIX: &str = "berth-ext-";
/// The verity device the extensions' linear devices map over (no extension name can make
/// `berth-ext-` + name equal to it).
pub const VERIFIED_VIEW: &str = "berth-extensions";

#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error("{path}: {source}")]
    Sysfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no DEVNAME")]
    NoDevName { path: PathBuf },
    #[error("{path}: size {text:?} is not a number")]
    Size { path: PathBuf, text: String },
    #[error("cannot open the root device {path}: {source}")]
    OpenRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("root device {path}: {source}")]
    Chain {
        path: PathBuf,
        #[source]
        source: ChainError,
    },
    #[error("cannot map the root's verity table again as {VERIFIED_VIEW}: {source}")]
    View {
        #[source]
        source: DmError,
    },
    #[error("extension {name} at offset {offset}: not mounted, {VERIFIED_VIEW} is missing")]
    NoView { name: String, offset: u64 },
    #[error("extension {name} at offset {offset}: {source}")]
    Map {
        name: String,
        offset: u64,
        #[source]
        source: DmError,
    },
    #[error("extension {name} at offset {offset}: cannot find the node of {dev}: {source}")]
    Node {
        name: String,
        offset: u64,
        dev: DevNum,
        #[source]
        source: Box<ExtensionError>,
    },
    #[error("extension {name} at offset {offset}: cannot create {path}: {source}")]
    Mkdir {
        name: String,
        offset: u64,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("extension {name} at offset {offset}: cannot mount {node} on {target}: {errno}")]
    Mount {
        name: String,
        offset: u64,
        node: PathBuf,
        target: PathBuf,
        errno: Errno,
    },
}

/// An extension mounted at boot (listed by `GET /v1/system`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountedExtension {
    pub name: String,
    /// The erofs image's size in bytes.
    pub size: u64,
    pub path: PathBuf,
    /// The device-mapper device it is mounted from (`/dev/dm-1`).
    pub device: PathBuf,
}

/// `/sys/dev/block` and `/dev`, rooted elsewhere in tests.
#[derive(Debug, Clone)]
pub struct Sys {
    sys_dev_block: PathBuf,
    dev: PathBuf,
}

/// The device-mapper device the root is mounted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDm {
    pub dev: DevNum,
    pub node: PathBuf,
    /// In bytes: the verity device's data, the root erofs and every extension.
    pub size: u64,
}

impl Sys {
    pub fn system() -> Sys {
        Sys::at(Path::new("/sys/dev/block"), Path::new("/dev"))
    }

    pub fn at(sys_dev_block: &Path, dev: &Path) -> Sys {
        Sys {
            sys_dev_block: sys_dev_block.into(),
            dev: dev.into(),
        }
    }

    fn dir(&self, dev: DevNum) -> PathBuf {
        self.sys_dev_block.join(dev.to_string())
    }

    fn read(&self, path: PathBuf) -> Result<String, ExtensionError> {
        std::fs::read_to_string(&path).map_err(|source| ExtensionError::Sysfs { path, source })
    }

    /// The /dev node of `dev`, from its uevent's DEVNAME.
    pub fn node(&self, dev: DevNum) -> Result<PathBuf, ExtensionError> {
        let path = self.dir(dev).join("uevent");
        let uevent = self.read(path.clone())?;
        uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .filter(|n| !n.is_empty() && !n.contains(".."))
            .map(|n| self.dev.join(n))
            .ok_or(ExtensionError::NoDevName { path })
    }

    /// `dev` as a device-mapper device; `None` when it is not one.
    pub fn root_dm(&self, dev: DevNum) -> Result<Option<RootDm>, ExtensionError> {
        if !self.dir(dev).join("dm").is_dir() {
            return Ok(None);
        }
        let path = self.dir(dev).join("size");
        let text = self.read(path.clone())?;
        let sectors: u64 = text
            .trim()
            .parse()
            .map_err(|_| ExtensionError::Size { path, text })?;
        Ok(Some(RootDm {
            dev,
            node: self.node(dev)?,
            size: sectors.saturating_mul(512),
        }))
    }
}

/// What activating an extension does to the machine: device-mapper and mount, or a recorder.
pub trait Activator {
    /// The live table of device-mapper device `dev`.
    fn table(&mut self, dev: DevNum) -> Result<Vec<Target>, DmError>;
    /// Creates the read-only device `name` with `targets`; returns its device number.
    fn map(&mut self, name: &str, targets: &[Target]) -> Result<DevNum, DmError>;
    /// The /dev node of a device just created.
    fn node(&mut self, dev: DevNum) -> Result<PathBuf, ExtensionError>;
    fn mkdir(&mut self, path: &Path) -> std::io::Result<()>;
    fn mount_erofs(&mut self, node: &Path, target: &Path) -> Result<(), Errno>;
}

/// The real machine: `/dev/mapper/control` (opened at the first extension), sysfs, mount(2).
pub struct SysActivator {
    sys: Sys,
    control: Option<ControlDevice>,
}

impl SysActivator {
    pub fn new(sys: Sys) -> SysActivator {
        SysActivator { sys, control: None }
    }
}

impl SysActivator {
    fn control(&mut self) -> Result<&mut dyn DmControl, DmError> {
        let ctl = match self.control.take() {
            Some(c) => c,
            None => ControlDevice::open()?,
        };
        Ok(self.control.insert(ctl))
    }
}

impl Activator for SysActivator {
    fn table(&mut self, dev: DevNum) -> Result<Vec<Target>, DmError> {
        devmapper::table_of(self.control()?, dev)
    }

    fn map(&mut self, name: &str, targets: &[Target]) -> Result<DevNum, DmError> {
        devmapper::create(self.control()?, name, targets)
    }

    fn node(&mut self, dev: DevNum) -> Result<PathBuf, ExtensionError> {
        self.sys.node(dev)
    }

    fn mkdir(&mut self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount_erofs(&mut self, node: &Path, target: &Path) -> Result<(), Errno> {
        nix::mount::mount(
            Some(node),
            target,
            Some("erofs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
    }
}

/// [`VERIFIED_VIEW`]: the root's table once more, for the extensions to map over.
pub fn verified_view(act: &mut dyn Activator, root: &RootDm) -> Result<DevNum, ExtensionError> {
    let table = act
        .table(root.dev)
        .map_err(|source| ExtensionError::View { source })?;
    act.map(VERIFIED_VIEW, &table)
        .map_err(|source| ExtensionError::View { source })
}

/// Maps one extension from `view` (the verified slot data) and mounts it under `base`.
pub fn activate(
    act: &mut dyn Activator,
    view: DevNum,
    ext: &Extension,
    base: &Path,
) -> Result<MountedExtension, ExtensionError> {
    let (name, offset) = (ext.name.clone(), ext.header_offset);
    let target = Target::linear(view, ext.data_offset() / 512, ext.size / 512);
    let dev = act
        .map(&format!("{DM_PREFIX}{name}"), &[target])
        .map_err(|source| ExtensionError::Map {
            name: name.clone(),
            offset,
            source,
        })?;
    let node = act.node(dev).map_err(|source| ExtensionError::Node {
        name: name.clone(),
        offset,
        dev,
        source: Box::new(source),
    })?;
    let path = base.join(&name);
    if let Err(source) = act.mkdir(&path) {
        return Err(ExtensionError::Mkdir {
            name,
            offset,
            path,
            source,
        });
    }
    if let Err(errno) = act.mount_erofs(&node, &path) {
        return Err(ExtensionError::Mount {
            name,
            offset,
            node,
            target: path,
            errno,
        });
    }
    Ok(MountedExtension {
        name,
        size: ext.size,
        path,
        device: node,
    })
}

/// Activates every extension the chain walk found; logs one line for each, mounted or not.
pub fn activate_all(
    act: &mut dyn Activator,
    root: &RootDm,
    entries: Vec<Result<Extension, ChainError>>,
    base: &Path,
) -> Vec<MountedExtension> {
    let mut mounted = Vec::new();
    // Mapped once, when there is an extension to mount.
    let view = match entries.iter().any(|e| e.is_ok()) {
        true => Some(verified_view(act, root).map_err(|e| e.to_string())),
        false => None,
    };
    if let Some(Err(e)) = &view {
        error!("{e}");
    }
    for entry in entries {
        let result = entry
            .map_err(|source| ExtensionError::Chain {
                path: root.node.clone(),
                source,
            })
            .and_then(|ext| match &view {
                Some(Ok(dev)) => activate(act, *dev, &ext, base),
                _ => Err(ExtensionError::NoView {
                    name: ext.name,
                    offset: ext.header_offset,
                }),
            });
        match result {
            Ok(m) => {
                info!(
                    "extension {}: {:.1} MiB mounted on {}",
                    m.name,
                    m.size as f64 / 1048576.0,
                    m.path.display()
                );
                mounted.push(m);
            }
            Err(e) => error!("{e}"),
        }
    }
    mounted
}

/// Puts the `units` directories of `mounted` into `unit_dirs` before its last entry (the
/// state partition's user units, which stay last: the API writes there), after the built-in
/// ones, in chain order.
pub fn add_unit_dirs(unit_dirs: &mut Vec<PathBuf>, mounted: &[MountedExtension]) {
    let at = unit_dirs.len().saturating_sub(1);
    let dirs = mounted
        .iter()
        .map(|m| m.path.join("units"))
        .filter(|d| d.is_dir());
    unit_dirs.splice(at..at, dirs);
}

/// The boot phase: only when `/` is on a device-mapper device holding an erofs root.
pub fn mount_extensions(boot: &mut Boot) -> Result<(), BootError> {
    let st = nix::sys::stat::stat("/").map_err(|source| BootError::Sys {
        what: "stat /",
        source,
    })?;
    let dev = DevNum {
        major: nix::sys::stat::major(st.st_dev) as u32,
        minor: nix::sys::stat::minor(st.st_dev) as u32,
    };
    let sys = Sys::system();
    let Some(root) = sys.root_dm(dev)? else {
        return Ok(());
    };
    let file = File::open(&root.node).map_err(|source| ExtensionError::OpenRoot {
        path: root.node.clone(),
        source,
    })?;
    let chain = match extension::walk(&file, root.size) {
        Ok(chain) => chain,
        // A device-mapper root that is not Berth's erofs (PID 1 in a test on such a host).
        Err(ChainError::NotErofs(_)) => return Ok(()),
        Err(source) => {
            return Err(ExtensionError::Chain {
                path: root.node.clone(),
                source,
            }
            .into())
        }
    };
    drop(file);
    if chain.entries.is_empty() {
        info!("no system extensions");
        return Ok(());
    }
    let mut act = SysActivator::new(sys);
    let mounted = activate_all(&mut act, &root, chain.entries, Path::new(EXTENSIONS_DIR));
    add_unit_dirs(&mut boot.paths.unit_dirs, &mounted);
    boot.extensions = mounted;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_formats::extension::HEADER_SIZE;

    fn scratch(tag: &str) -> PathBuf {
        crate::testutil::scratch_dir(&format!("ext-{tag}"))
    }

    fn fake_sys(dir: &Path) -> Sys {
        let block = dir.join("sys/dev/block");
        let dm0 = block.join("252:0");
        std::fs::create_dir_all(dm0.join("dm")).unwrap();
        std::fs::write(
            dm0.join("uevent"),
            "MAJOR=252\nMINOR=0\nDEVNAME=dm-0\nDEVTYPE=disk\n",
        )
        .unwrap();
        std::fs::write(dm0.join("size"), "20488\n").unwrap();
        let vda = block.join("253:1");
        std::fs::create_dir_all(&vda).unwrap();
        std::fs::write(vda.join("uevent"), "MAJOR=253\nMINOR=1\nDEVNAME=vda1\n").unwrap();
        std::fs::write(vda.join("size"), "100\n").unwrap();
        Sys::at(&block, &dir.join("dev"))
    }

    #[test]
    fn root_on_device_mapper_is_found_from_sysfs() {
        let dir = scratch("sysfs");
        let sys = fake_sys(&dir);
        let root = sys
            .root_dm(DevNum {
                major: 252,
                minor: 0,
            })
            .unwrap()
            .unwrap();
        assert_eq!(root.node, dir.join("dev/dm-0"));
        assert_eq!(root.size, 20488 * 512);
        // A partition (no dm directory) is not device-mapper: nothing to do.
        let vda1 = DevNum {
            major: 253,
            minor: 1,
        };
        assert_eq!(sys.root_dm(vda1).unwrap(), None);
        assert_eq!(sys.node(vda1).unwrap(), dir.join("dev/vda1"));
        let gone = DevNum { major: 1, minor: 1 };
        assert!(sys
            .node(gone)
            .unwrap_err()
            .to_string()
            .contains("1:1/uevent"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail_map: Option<&'static str>,
        fail_mount: Option<&'static str>,
        next_minor: u32,
    }

    impl Activator for Recorder {
        fn table(&mut self, dev: DevNum) -> Result<Vec<Target>, DmError> {
            self.calls.push(format!("table {dev}"));
            if self.fail_map == Some("table") {
                return Err(DmError::Ioctl {
                    op: "DM_TABLE_STATUS",
                    name: dev.to_string(),
                    errno: Errno::ENXIO,
                });
            }
            Ok(vec![Target {
                start: 0,
                length: 32528,
                kind: "verity".into(),
                params: "1 253:2 253:2 4096 4096 4066 4067 blake2b-512 ab cd".into(),
            }])
        }
        fn map(&mut self, name: &str, targets: &[Target]) -> Result<DevNum, DmError> {
            for t in targets {
                self.calls.push(format!(
                    "map {name} {} {} {} {}",
                    t.start, t.length, t.kind, t.params
                ));
            }
            if self.fail_map == Some(name) {
                return Err(DmError::Ioctl {
                    op: "DM_DEV_CREATE",
                    name: name.into(),
                    errno: Errno::EBUSY,
                });
            }
            self.next_minor += 1;
            Ok(DevNum {
                major: 252,
                minor: self.next_minor,
            })
        }
        fn node(&mut self, dev: DevNum) -> Result<PathBuf, ExtensionError> {
            Ok(PathBuf::from(format!("/dev/dm-{}", dev.minor)))
        }
        fn mkdir(&mut self, path: &Path) -> std::io::Result<()> {
            self.calls.push(format!("mkdir {}", path.display()));
            std::fs::create_dir_all(path)
        }
        fn mount_erofs(&mut self, node: &Path, target: &Path) -> Result<(), Errno> {
            self.calls
                .push(format!("mount {} {}", node.display(), target.display()));
            match self.fail_mount {
                Some(n) if target.ends_with(n) => Err(Errno::EINVAL),
                _ => Ok(()),
            }
        }
    }

    fn ext(name: &str, header_offset: u64, size: u64) -> Extension {
        Extension {
            name: name.into(),
            header_offset,
            size,
        }
    }

    fn root() -> RootDm {
        RootDm {
            dev: DevNum {
                major: 252,
                minor: 0,
            },
            node: "/dev/dm-0".into(),
            size: 1 << 30,
        }
    }

    #[test]
    fn each_extension_is_mapped_at_its_sectors_and_mounted() {
        let dir = scratch("activate");
        let mut r = Recorder {
            fail_map: Some("berth-ext-bad"),
            fail_mount: Some("notfs"),
            ..Default::default()
        };
        let entries = vec![
            Ok(ext("hello", 1 << 20, 8192)),
            Ok(ext("bad", (1 << 20) + HEADER_SIZE + 8192, 4096)),
            Err(ChainError::Duplicate {
                name: "hello".into(),
                offset: 5 << 20,
            }),
            Ok(ext("notfs", 6 << 20, 4096)),
            Ok(ext("containerd", 7 << 20, 61_145_088)),
        ];
        let mounted = activate_all(&mut r, &root(), entries, &dir);
        let hello = dir.join("hello");
        assert_eq!(
            r.calls[..5],
            [
                // The root's table, mapped again once (as 252:1) for the extensions.
                "table 252:0".to_string(),
                "map berth-extensions 0 32528 verity 1 253:2 253:2 4096 4096 4066 4067 blake2b-512 ab cd".into(),
                // Over it: (1 MiB + 4096) / 512 = 2056; 8192 / 512 = 16 sectors.
                "map berth-ext-hello 0 16 linear 252:1 2056".into(),
                format!("mkdir {}", hello.display()),
                format!("mount /dev/dm-2 {}", hello.display()),
            ]
        );
        assert_eq!(r.calls[5], "map berth-ext-bad 0 8 linear 252:1 2080");
        assert_eq!(r.calls.iter().filter(|c| c.starts_with("table")).count(), 1);
        let names: Vec<&str> = mounted.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["hello", "containerd"]);
        assert_eq!(mounted[1].device, PathBuf::from("/dev/dm-4"));
        assert_eq!(mounted[1].path, dir.join("containerd"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_extension_and_offset() {
        let mut r = Recorder {
            fail_mount: Some("x"),
            ..Default::default()
        };
        let dir = scratch("errors");
        let view = DevNum {
            major: 252,
            minor: 1,
        };
        let err = activate(&mut r, view, &ext("x", 40960, 4096), &dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "extension x at offset 40960: cannot mount /dev/dm-1 on {}: EINVAL: Invalid argument",
                dir.join("x").display()
            )
        );
        // Without the verified view nothing is mapped, and each extension says so.
        let mut r = Recorder {
            fail_map: Some("table"),
            ..Default::default()
        };
        let entries = vec![Ok(ext("a", 4096, 4096)), Ok(ext("b", 12288, 4096))];
        assert!(activate_all(&mut r, &root(), entries, &dir).is_empty());
        assert_eq!(r.calls, ["table 252:0"]);
        let err = ExtensionError::NoView {
            name: "a".into(),
            offset: 4096,
        };
        assert_eq!(
            err.to_string(),
            "extension a at offset 4096: not mounted, berth-extensions is missing"
        );
        // No extension: no device-mapper at all.
        assert!(activate_all(&mut r, &root(), Vec::new(), &dir).is_empty());
        assert_eq!(r.calls.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unit_dirs_go_before_the_user_units() {
        let dir = scratch("units");
        std::fs::create_dir_all(dir.join("a/units")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::create_dir_all(dir.join("c/units")).unwrap();
        let m = |n: &str| MountedExtension {
            name: n.into(),
            size: 4096,
            path: dir.join(n),
            device: "/dev/dm-1".into(),
        };
        let mut dirs = vec![
            PathBuf::from("/usr/lib/berth/units"),
            PathBuf::from("/var/lib/berth/units"),
        ];
        add_unit_dirs(&mut dirs, &[m("a"), m("b"), m("c")]);
        assert_eq!(
            dirs,
            [
                PathBuf::from("/usr/lib/berth/units"),
                dir.join("a/units"),
                dir.join("c/units"),
                PathBuf::from("/var/lib/berth/units"),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
