//! Mount options as runc applies them: recursive attributes on every mount below a bind,
//! options a bind mount cannot apply refused by name, tmpfs copy-up (root, busybox bundle).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;

/// Whether the container can write at the top of /data and in the mount below it.
const PROBE: &str = "for d in /data /data/sub; do \
    if touch $d/probe 2>/dev/null; then echo $d rw; else echo $d ro; fi; done";

/// A host directory with a tmpfs mounted below it (unmounted by the scratch's drop).
fn nested_host_dir() -> Scratch {
    let s = Scratch::new("berth-nested");
    std::fs::create_dir_all(s.path("sub")).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &s.path("sub"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=8m"),
    )
    .unwrap();
    s
}

fn bind_with(f: &mut Fixture, host: &Scratch, options: &[&str]) {
    f.config["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/data", "type": "bind", "source": host.0, "options": options}),
    );
}

#[test]
fn rro_makes_every_mount_below_a_bind_read_only() {
    let host = nested_host_dir();
    let mut f = Fixture::new();
    f.sh(PROBE);
    bind_with(&mut f, &host, &["rbind", "rro"]);
    let out = f.run(&unique("rro"));
    assert_eq!(ok(&out), "/data ro\n/data/sub ro\n");
    // `ro` alone is the top mount only, as with runc.
    let mut f = Fixture::new();
    f.sh(PROBE);
    bind_with(&mut f, &host, &["rbind", "ro"]);
    let out = f.run(&unique("ro"));
    assert_eq!(ok(&out), "/data ro\n/data/sub rw\n");
    // A later `rrw` takes it back.
    let mut f = Fixture::new();
    f.sh(PROBE);
    bind_with(&mut f, &host, &["rbind", "rro", "rrw"]);
    let out = f.run(&unique("rrw"));
    assert_eq!(ok(&out), "/data rw\n/data/sub rw\n");
}

#[test]
fn rnoexec_reaches_the_mounts_below_a_bind() {
    let host = nested_host_dir();
    std::fs::copy("/bin/busybox", host.path("sub/busybox")).unwrap();
    let mut f = Fixture::new();
    f.sh("/data/sub/busybox true && echo ran || echo refused");
    bind_with(&mut f, &host, &["rbind", "rnoexec"]);
    let out = f.run(&unique("rnoexec"));
    assert_eq!(ok(&out), "refused\n");
}

#[test]
fn options_a_bind_cannot_apply_are_refused_by_name() {
    let host = Scratch::new("berth-bindopt");
    for (options, bad) in [
        (&["rbind", "mode=755"][..], "mode=755"),
        (&["bind", "sync"][..], "sync"),
    ] {
        let mut f = Fixture::new();
        f.args(&["true"]);
        bind_with(&mut f, &host, options);
        let out = f.run(&unique("bindopt"));
        assert!(!out.status.success(), "{options:?} was accepted");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("`{bad}`")) && err.contains("/data"),
            "{options:?}: {err}"
        );
    }
}

#[test]
fn features_lists_the_recursive_options() {
    let f = Fixture::new();
    let v: serde_json::Value = serde_json::from_str(&ok(&f.cli(&["features"]))).unwrap();
    let listed = v["mountOptions"].as_array().unwrap();
    for opt in [
        "rro",
        "rrw",
        "rnosuid",
        "rnodev",
        "rnoexec",
        "rnoatime",
        "rnosymfollow",
    ] {
        assert!(listed.contains(&json!(opt)), "{opt} missing");
    }
}

/// Podman's `--tmpfs /etc` (it adds `tmpcopyup`): the tmpfs starts with what the image had
/// there, owners, modes and links included, and writes stay in the tmpfs.
#[test]
fn tmpcopyup_starts_the_tmpfs_with_the_directory_it_covers() {
    use std::os::unix::fs::PermissionsExt;
    let outside = Scratch::new("berth-copyup-outside");
    let mut f = Fixture::new();
    for tool in ["cut", "tr", "head"] {
        std::os::unix::fs::symlink("busybox", f.rootfs().join("bin").join(tool)).unwrap();
    }
    let etc = f.rootfs().join("etc");
    std::fs::create_dir_all(etc.join("conf.d")).unwrap();
    std::fs::write(etc.join("conf.d/app.conf"), "key=1\n").unwrap();
    std::fs::write(etc.join("shadow"), "secret\n").unwrap();
    std::fs::set_permissions(etc.join("shadow"), PermissionsExt::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(etc.join("shadow"), Some(1000), Some(42)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", etc.join("link")).unwrap();
    // An absolute link out of the root is copied as a link, never followed.
    std::os::unix::fs::symlink(&outside.0, etc.join("escape")).unwrap();
    std::fs::set_permissions(&etc, PermissionsExt::from_mode(0o751)).unwrap();
    f.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc", "type": "tmpfs", "source": "tmpfs",
        "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]
    }));
    f.sh(
        "grep -c user /etc/passwd; cat /etc/conf.d/app.conf; ls -ln /etc/shadow | \
         cut -c1-10; ls -ln /etc/shadow | tr -s ' ' | cut -d' ' -f3,4; readlink /etc/link; \
         ls -ldn /etc | cut -c1-10; grep ' /etc ' /proc/self/mountinfo | grep -c tmpfs; \
         touch /etc/new && echo written",
    );
    let out = f.run(&unique("copyup"));
    assert_eq!(
        ok(&out),
        "1\nkey=1\n-rw-r-----\n1000 42\n/etc/passwd\ndrwxr-x--x\n1\nwritten\n"
    );
    assert!(!etc.join("new").exists(), "the write went to the tmpfs");
    assert!(std::fs::read_dir(&outside.0).unwrap().next().is_none());
    // Read-only: filled, then read-only.
    f.config["mounts"].as_array_mut().unwrap().pop();
    f.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc", "type": "tmpfs", "source": "tmpfs",
        "options": ["ro", "tmpcopyup"]
    }));
    f.sh("cat /etc/conf.d/app.conf; touch /etc/new 2>/dev/null || echo read-only");
    let out = f.run(&unique("copyup-ro"));
    assert_eq!(ok(&out), "key=1\nread-only\n");
}
