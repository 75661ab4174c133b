//! What an unprivileged host user can reach of the runtime's files: nothing under the image
//! store (layers carry setuid files and device nodes with their modes) and nothing of the
//! runtime's state (each container's config, environment included).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use berth_store::Store;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

const NOBODY: u32 = 65534;

/// Whether uid/gid 65534 (no supplementary groups) can enter `path` when it is a directory,
/// or open it for reading otherwise.
fn nobody_reaches(path: &Path) -> bool {
    let script =
        r#"test -e "$1" || exit 1; test -d "$1" && { cd "$1"; exit; }; exec cat "$1" > /dev/null"#;
    let st = Command::new("/bin/sh")
        .args(["-c", script, "sh"])
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    st.success()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_image_store_is_root_only_and_an_existing_one_is_tightened() {
    let base = std::env::temp_dir().join(unique("berth-store-access"));
    // A run that failed before may have left this name behind (pids are reused).
    let _ = std::fs::remove_dir_all(&base);
    // An existing store of an earlier version, world-traversable.
    let root = base.join("images");
    std::fs::create_dir_all(root.join("layers")).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::open(&root).unwrap();
    assert_eq!(mode(store.root()), 0o700);
    // What an unpacked layer may carry: a device node open to everyone.
    let dev = root.join("layers/0123/dev");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::set_permissions(
        root.join("layers/0123"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let null = dev.join("null");
    nix::sys::stat::mknod(
        &null,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    std::fs::set_permissions(&null, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(
        nobody_reaches(&base),
        "the test's own directory must be reachable"
    );
    for p in [
        root.clone(),
        root.join("layers"),
        null.clone(),
        root.join("index.json"),
    ] {
        assert!(!nobody_reaches(&p), "uid {NOBODY} reaches {}", p.display());
    }
    // A new store is created so.
    let fresh = base.join("fresh/images");
    Store::open(&fresh).unwrap();
    assert_eq!(mode(&fresh), 0o700);
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn runtime_state_is_root_only() {
    let mut f = Fixture::new();
    f.args(&["sleep", "60"]);
    f.config["process"]["env"] = serde_json::json!(["PATH=/bin", "API_TOKEN=s3cret"]);
    let id = unique("state-access");
    f.create(&id);
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(nobody_reaches(&f.dir));
    assert_eq!(mode(&f.root), 0o700);
    for p in [
        f.root.clone(),
        f.root.join(&id),
        f.root.join(&id).join("state.json"),
    ] {
        assert!(!nobody_reaches(&p), "uid {NOBODY} reaches {}", p.display());
    }
    // A state root of an earlier version is tightened by the next create.
    std::fs::set_permissions(&f.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    f.create(&unique("state-access"));
    assert_eq!(mode(&f.root), 0o700);
    assert!(!nobody_reaches(&f.root.join(&id).join("state.json")));
}
