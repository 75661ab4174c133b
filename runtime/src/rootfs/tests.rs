//! Mount plans checked with the recording syscall seam (no root needed).

use super::*;
use crate::syscall::test::{Call, RecordingSyscall};

struct Root(PathBuf);
impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn root(name: &str) -> Root {
    let dir = std::env::temp_dir().join(format!("berth-rootfs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
    Root(dir)
}

fn spec(json: &str) -> Spec {
    serde_json::from_str(json).unwrap()
}

#[test]
fn options_split_into_flags_propagation_and_data() {
    let o = MountOptions::parse(&[
        "nosuid".into(),
        "noexec".into(),
        "rprivate".into(),
        "mode=755".into(),
        "size=1m".into(),
        "ro".into(),
        "rw".into(),
    ])
    .unwrap();
    assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
    assert!(o.cleared.contains(MsFlags::MS_RDONLY));
    assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
    assert_eq!(o.data, vec!["mode=755", "size=1m"]);
    assert!(!o.bind);
    let b = MountOptions::parse(&["rbind".into()]).unwrap();
    assert!(b.bind && b.flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
    assert!(MountOptions::parse(&["idmap".into()]).is_err());
}

#[test]
fn symlinks_cannot_escape_the_root() {
    let r = root("escape");
    let rootfs = r.0.join("rootfs");
    std::os::unix::fs::symlink("/etc", rootfs.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../etc", rootfs.join("rel")).unwrap();
    std::os::unix::fs::symlink("loop", rootfs.join("loop")).unwrap();
    assert_eq!(
        resolve_in_root(&rootfs, Path::new("/abs/passwd")).unwrap(),
        rootfs.join("etc/passwd")
    );
    assert_eq!(
        resolve_in_root(&rootfs, Path::new("/rel/x")).unwrap(),
        rootfs.join("etc/x")
    );
    assert_eq!(
        resolve_in_root(&rootfs, Path::new("/../../x")).unwrap(),
        rootfs.join("x")
    );
    assert!(matches!(
        resolve_in_root(&rootfs, Path::new("/loop")),
        Err(RootfsError::Loop { .. })
    ));
}

fn setup<'a>(rootfs: &'a Path, bundle: &'a Path, spec: &'a Spec, user_ns: bool) -> RootfsSetup<'a> {
    RootfsSetup {
        rootfs,
        bundle,
        spec,
        user_ns,
    }
}

#[test]
fn prepare_mounts_in_spec_order_and_creates_devices() {
    let r = root("prepare");
    let rootfs = r.0.join("rootfs");
    let host_dir = r.0.join("data");
    std::fs::create_dir_all(&host_dir).unwrap();
    let s = spec(&format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"mounts":[
            {{"destination":"/proc","type":"proc","source":"proc"}},
            {{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]}},
            {{"destination":"/data","type":"bind","source":"{}","options":["rbind","ro","nodev"]}}],
          "linux":{{"rootfsPropagation":"private","devices":[{{"path":"/dev/fuse","type":"c","major":10,"minor":229,"uid":0,"gid":0}}]}}}}"#,
        host_dir.display()
    ));
    let sys = RecordingSyscall::default();
    setup(&rootfs, &r.0, &s, false).prepare(&sys).unwrap();
    let mut mounts = sys.mounts();
    assert_eq!(
        mounts[0],
        (None, PathBuf::from("/"), None, MsFlags::MS_PRIVATE)
    );
    // The rootfs's mount made private first (tested with a shared root below).
    assert_eq!(mounts.remove(1).1, rootfs);
    assert_eq!(
        mounts[1],
        (
            Some(rootfs.clone()),
            rootfs.clone(),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC
        )
    );
    assert_eq!(
        mounts[2],
        (
            Some(PathBuf::from("proc")),
            rootfs.join("proc"),
            Some("proc".into()),
            MsFlags::empty()
        )
    );
    assert_eq!(mounts[3].1, rootfs.join("dev"));
    assert_eq!(mounts[3].3, MsFlags::MS_NOSUID);
    assert_eq!(
        mounts[4],
        (
            Some(host_dir.clone()),
            rootfs.join("data"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC
        )
    );
    // The read-only bind is a remount that keeps the locked nosuid.
    let remount = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_REC
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOSUID;
    assert_eq!(mounts[5], (None, rootfs.join("data"), None, remount));
    let calls = sys.calls();
    let nodes: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Mknod { path, dev, .. } => Some((
                path.file_name().unwrap().to_str().unwrap().to_string(),
                *dev,
            )),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["null", "zero", "full", "random", "urandom", "tty", "fuse"]
    );
    assert_eq!(nodes[0].1, nix::sys::stat::makedev(1, 3));
    assert!(calls.contains(&Call::Chown(rootfs.join("dev/fuse"), Some(0), Some(0))));
    assert!(calls.contains(&Call::Symlink {
        target: "/proc/self/fd".into(),
        link: rootfs.join("dev/fd")
    }));
    assert!(calls.contains(&Call::Symlink {
        target: "pts/ptmx".into(),
        link: rootfs.join("dev/ptmx")
    }));
}

#[test]
fn an_image_whose_dev_is_a_symlink_gets_its_devices_inside_the_root() {
    let r = root("dev-link");
    let rootfs = r.0.join("rootfs");
    // The host directory the link names, outside the root.
    let victim = r.0.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::os::unix::fs::symlink(&victim, rootfs.join("dev")).unwrap();
    let s = spec(r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#);
    let sys = RecordingSyscall::default();
    setup(&rootfs, &r.0, &s, false).prepare(&sys).unwrap();
    let inside = rootfs.join(victim.strip_prefix("/").unwrap());
    for call in sys.calls() {
        let path = match &call {
            Call::Symlink { link, .. } => link,
            Call::Mknod { path, .. } => path,
            _ => continue,
        };
        assert!(
            path.starts_with(&inside),
            "{call:?} outside {}",
            inside.display()
        );
    }
    assert!(sys.calls().contains(&Call::Symlink {
        target: "/proc/self/fd".into(),
        link: inside.join("fd")
    }));
}

#[test]
fn user_namespace_binds_devices_and_falls_back_for_sysfs() {
    let r = root("userns");
    let rootfs = r.0.join("rootfs");
    let s = spec(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"mounts":[{"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid"]}]}"#,
    );
    let sys = RecordingSyscall::default();
    sys.fail_mount
        .borrow_mut()
        .push((rootfs.join("sys"), Errno::EPERM));
    // The recorder fails every mount at that target, so the fallback bind fails too: the
    // error names the bind of /sys, which proves the fallback ran.
    let err = setup(&rootfs, &r.0, &s, true).prepare(&sys).unwrap_err();
    assert!(err.to_string().contains("bind /sys"), "{err}");
    let sys = RecordingSyscall::default();
    let s = spec(r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#);
    setup(&rootfs, &r.0, &s, true).prepare(&sys).unwrap();
    let calls = sys.calls();
    assert!(!calls.iter().any(|c| matches!(c, Call::Mknod { .. })));
    assert!(calls.contains(&Call::Touch(rootfs.join("dev/null"))));
    assert!(sys.mounts().contains(&(
        Some(PathBuf::from("/dev/null")),
        rootfs.join("dev/null"),
        None,
        MsFlags::MS_BIND
    )));
}

#[test]
fn a_shared_root_keeps_its_peers_and_makes_the_rootfs_mount_private() {
    let r = root("shared");
    let rootfs = r.0.join("rootfs");
    let s = spec(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"linux":{"rootfsPropagation":"rshared"}}"#,
    );
    let sys = RecordingSyscall::default();
    setup(&rootfs, &r.0, &s, false).prepare(&sys).unwrap();
    let mounts = sys.mounts();
    assert_eq!(
        mounts[..3],
        [
            (
                None,
                PathBuf::from("/"),
                None,
                MsFlags::MS_SHARED | MsFlags::MS_REC
            ),
            (None, rootfs.clone(), None, MsFlags::MS_PRIVATE),
            (
                Some(rootfs.clone()),
                rootfs.clone(),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC
            ),
        ]
    );
}

#[test]
fn pivot_detaches_the_old_root() {
    let sys = RecordingSyscall::default();
    pivot(&sys, Path::new("/b/rootfs"), false).unwrap();
    assert_eq!(
        sys.calls(),
        vec![
            Call::Chdir("/b/rootfs".into()),
            Call::PivotRoot(".".into()),
            Call::Fchdir("/".into()),
            Call::Mount {
                source: None,
                target: ".".into(),
                fstype: None,
                flags: MsFlags::MS_SLAVE | MsFlags::MS_REC,
                data: None
            },
            Call::Umount(".".into()),
            Call::Chdir("/".into()),
        ]
    );
    let sys = RecordingSyscall::default();
    pivot(&sys, Path::new("/b/rootfs"), true).unwrap();
    assert!(sys.calls().contains(&Call::Chroot(".".into())));
}

#[test]
fn finish_masks_and_makes_read_only() {
    let r = root("finish");
    let base = r.0.join("rootfs");
    std::fs::create_dir_all(base.join("proc/acpi")).unwrap();
    std::fs::write(base.join("proc/kcore"), "").unwrap();
    std::fs::create_dir_all(base.join("proc/sys")).unwrap();
    let s = spec(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
        "linux":{"maskedPaths":["/proc/acpi","/proc/kcore","/proc/missing"],"readonlyPaths":["/proc/sys","/proc/nope"]}}"#,
    );
    let sys = RecordingSyscall::default();
    finish(&sys, &base, &s).unwrap();
    let m = sys.mounts();
    assert_eq!(
        m[0],
        (
            Some(PathBuf::from("tmpfs")),
            base.join("proc/acpi"),
            Some("tmpfs".into()),
            MsFlags::MS_RDONLY
        )
    );
    assert_eq!(
        m[1],
        (
            Some(base.join("dev/null")),
            base.join("proc/kcore"),
            None,
            MsFlags::MS_BIND
        )
    );
    assert_eq!(
        m[2],
        (
            Some(base.join("proc/sys")),
            base.join("proc/sys"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC
        )
    );
    assert!(m[3].3.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY));
    assert_eq!(m[4].1, base);
    assert!(m[4]
        .3
        .contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
    assert_eq!(m.len(), 5);
}

#[test]
fn recursive_options_become_mount_attributes() {
    let parse = |opts: &[&str]| {
        MountOptions::parse(&opts.iter().map(|o| o.to_string()).collect::<Vec<_>>()).unwrap()
    };
    let o = parse(&["rbind", "rro", "rnosuid", "rnoexec", "rnosymfollow"]);
    assert_eq!(
        o.rec_set,
        libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NOEXEC
            | libc::MOUNT_ATTR_NOSYMFOLLOW
    );
    assert_eq!(o.rec_clr, 0);
    assert!(o.data.is_empty() && o.fs_flags.is_empty(), "{o:?}");
    assert_eq!(o.recursive, ["rro", "rnosuid", "rnoexec", "rnosymfollow"]);
    // A later option wins; an access-time mode always clears the whole field, as the kernel
    // requires.
    let o = parse(&["rro", "rrw", "rdev", "rnoatime"]);
    assert_eq!(o.rec_set, libc::MOUNT_ATTR_NOATIME);
    assert_eq!(
        o.rec_clr,
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR__ATIME
    );
    let o = parse(&["rnoatime", "rrelatime", "rnodiratime"]);
    assert_eq!(o.rec_set, libc::MOUNT_ATTR_NODIRATIME);
    assert_eq!(o.rec_clr, libc::MOUNT_ATTR__ATIME);
    let o = parse(&["rstrictatime"]);
    assert_eq!(
        (o.rec_set, o.rec_clr),
        (libc::MOUNT_ATTR_STRICTATIME, libc::MOUNT_ATTR__ATIME)
    );
    // Filesystem flags and data are told apart from what a bind remount applies.
    let o = parse(&["rbind", "ro", "nosuid", "relatime", "sync", "mode=755"]);
    assert_eq!(o.fs_flags, ["sync"]);
    assert_eq!(o.data, ["mode=755"]);
}

fn bind_spec(host: &Path, options: &str) -> Spec {
    spec(&format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"mounts":[
            {{"destination":"/data","type":"bind","source":"{}","options":{options}}}]}}"#,
        host.display()
    ))
}

#[test]
fn recursive_options_are_set_after_the_bind() {
    let r = root("recattr");
    let rootfs = r.0.join("rootfs");
    let host = r.0.join("data");
    std::fs::create_dir_all(&host).unwrap();
    let s = bind_spec(&host, r#"["rbind","rro","rnodev","rprivate"]"#);
    let sys = RecordingSyscall::default();
    setup(&rootfs, &r.0, &s, false).prepare(&sys).unwrap();
    let calls = sys.calls();
    let bind = calls
        .iter()
        .position(|c| matches!(c, Call::Mount { source: Some(s), .. } if *s == host))
        .unwrap();
    assert_eq!(
        calls[bind + 1],
        Call::MountSetattr {
            target: rootfs.join("data"),
            attr_set: libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NODEV,
            attr_clr: 0,
        }
    );
    // Propagation last, as before.
    assert!(matches!(
        &calls[bind + 2],
        Call::Mount { flags, .. } if *flags == MsFlags::MS_PRIVATE | MsFlags::MS_REC
    ));
}

#[test]
fn a_kernel_without_mount_setattr_refuses_recursive_options() {
    let r = root("nosetattr");
    let rootfs = r.0.join("rootfs");
    let host = r.0.join("data");
    std::fs::create_dir_all(&host).unwrap();
    let s = bind_spec(&host, r#"["rbind","rro"]"#);
    let sys = RecordingSyscall::default();
    sys.fail_on(
        Call::MountSetattr {
            target: rootfs.join("data"),
            attr_set: libc::MOUNT_ATTR_RDONLY,
            attr_clr: 0,
        },
        Errno::ENOSYS,
    );
    let err = setup(&rootfs, &r.0, &s, false).prepare(&sys).unwrap_err();
    assert!(
        matches!(err, RootfsError::NoMountSetattr { index: 0, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("mounts[0] (/data)")
            && text.contains("rro")
            && text.contains("mount_setattr"),
        "{text}"
    );
}

#[test]
fn bind_mounts_refuse_what_they_cannot_apply() {
    let r = root("bindrefuse");
    let rootfs = r.0.join("rootfs");
    let host = r.0.join("data");
    std::fs::create_dir_all(&host).unwrap();
    for (options, bad) in [
        (r#"["rbind","mode=755"]"#, "mode=755"),
        (r#"["bind","ro","sync"]"#, "sync"),
        (r#"["rbind","dirsync"]"#, "dirsync"),
    ] {
        let s = bind_spec(&host, options);
        let sys = RecordingSyscall::default();
        let err = setup(&rootfs, &r.0, &s, false).prepare(&sys).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("mounts[0] (/data)") && text.contains(&format!("`{bad}`")),
            "{options}: {text}"
        );
        // Refused before anything is mounted at the destination.
        assert!(
            !sys.mounts().iter().any(|m| m.1 == rootfs.join("data")),
            "{options}"
        );
    }
    // The same data on a filesystem mount is its data.
    let s = spec(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"mounts":[
            {"destination":"/data","type":"tmpfs","source":"tmpfs","options":["mode=755","sync"]}]}"#,
    );
    let sys = RecordingSyscall::default();
    setup(&rootfs, &r.0, &s, false).prepare(&sys).unwrap();
    assert!(sys.calls().iter().any(|c| matches!(
        c,
        Call::Mount { data: Some(d), flags, .. } if d == "mode=755" && flags.contains(MsFlags::MS_SYNCHRONOUS)
    )));
}

#[test]
fn every_listed_option_is_understood() {
    assert!(
        MOUNT_OPTIONS.windows(2).all(|w| w[0] < w[1]),
        "sorted, once each"
    );
    for opt in MOUNT_OPTIONS {
        let o = MountOptions::parse(&[opt.to_string()]).unwrap();
        assert!(o.data.is_empty(), "`{opt}` taken for filesystem data");
    }
    assert_eq!(
        MountOptions::parse(&["size=1m".into()]).unwrap().data,
        ["size=1m"]
    );
}

#[test]
fn tmpcopyup_fills_the_tmpfs_from_the_directory_it_covers() {
    let r = root("copyup");
    let rootfs = r.0.join("rootfs");
    let s = spec(
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"mounts":[
            {"destination":"/etc","type":"tmpfs","source":"tmpfs","options":["nosuid","tmpcopyup","ro"]},
            {"destination":"/new","type":"tmpfs","source":"tmpfs","options":["tmpcopyup"]},
            {"destination":"/var","type":"tmpfs","source":"tmpfs","options":["tmpcopyup","mode=755"]}]}"#,
    );
    std::fs::create_dir_all(rootfs.join("var")).unwrap();
    let sys = RecordingSyscall::default();
    setup(&rootfs, &r.0, &s, false).prepare(&sys).unwrap();
    let calls = sys.calls();
    let etc = rootfs.join("etc");
    let mount = calls
        .iter()
        .position(|c| matches!(c, Call::Mount { target, fstype: Some(_), .. } if *target == etc))
        .unwrap();
    // Mounted writable, filled, then made read-only.
    assert!(matches!(&calls[mount], Call::Mount { flags, .. } if *flags == MsFlags::MS_NOSUID));
    assert_eq!(
        calls[mount + 1],
        Call::CopyTree {
            from: etc.clone(),
            to: etc.clone(),
            root_attrs: true
        }
    );
    assert!(matches!(
        &calls[mount + 2],
        Call::Mount { target, flags, .. } if *target == etc
            && flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY)
    ));
    // A directory made for the mount, or a mode in the options, keeps the tmpfs's own.
    for (dir, existed) in [("new", false), ("var", false)] {
        let d = rootfs.join(dir);
        assert!(
            calls.contains(&Call::CopyTree {
                from: d.clone(),
                to: d,
                root_attrs: existed
            }),
            "{dir}: {calls:?}"
        );
    }
    // Only a tmpfs can be copied up.
    let host = r.0.join("data");
    std::fs::create_dir_all(&host).unwrap();
    let s = bind_spec(&host, r#"["rbind","tmpcopyup"]"#);
    let err = setup(&rootfs, &r.0, &s, false)
        .prepare(&RecordingSyscall::default())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("mounts[0] (/data): `tmpcopyup` applies to tmpfs mounts only"),
        "{err}"
    );
}
