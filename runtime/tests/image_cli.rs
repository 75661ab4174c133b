//! `berth-runtime image …` end to end against a real registry, and garbage collection with
//! shared layers and leases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use berth_store::{gc, Store};
use support::{berth_runtime, busybox_image, push, write_file, ImageBuilder, Registry, TempDir};

fn image_cmd(store: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    berth_runtime()
        .arg("image")
        .arg("--store")
        .arg(store)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn ok(store: &Path, config: &Path, args: &[&str]) -> String {
    let out = image_cmd(store, config, args);
    assert!(
        out.status.success(),
        "image {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cli_pull_ls_inspect_export_rm_import_prune() {
    let reg = Registry::start();
    let work = TempDir::new("cli");
    let layout = work.join("layout");
    let b = busybox_image(&layout, "t", &[("www/index.html", "hello\n")]);
    b.config(&["--config.cmd", "/bin/sh", "--config.exposedports", "80/tcp"]);
    push(&layout, "t", &reg.addr, "cli/web:1", &[]);
    let config = write_file(
        &work,
        "machine.toml",
        &format!("[registries]\ninsecure = [\"{}\"]\n", reg.addr),
    );
    let store = work.join("images");
    let name = format!("{}/cli/web:1", reg.addr);

    let progress = ok(&store, &config, &["pull", &name]);
    assert!(
        progress
            .lines()
            .all(|l| l.starts_with(&format!("pull {name}: "))),
        "{progress}"
    );
    assert!(progress.contains("done"), "{progress}");

    let ls: serde_json::Value =
        serde_json::from_str(&ok(&store, &config, &["ls", "--json"])).unwrap();
    assert_eq!(ls[0]["reference"], name.as_str());
    assert_eq!(ok(&store, &config, &["ls", "-q"]).trim(), name);
    let table = ok(&store, &config, &["ls"]);
    assert!(
        table.starts_with("REFERENCE") && table.contains(&name),
        "{table}"
    );

    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&store, &config, &["inspect", &name])).unwrap();
    assert_eq!(inspect["cmd"][0], "/bin/sh");
    assert_eq!(inspect["exposed_ports"][0], "80/tcp");
    assert_eq!(inspect["config"]["architecture"], "amd64");
    assert_eq!(inspect["layers"].as_array().unwrap().len(), 2);
    let id = inspect["id"].as_str().unwrap().to_string();

    let archive = work.join("web.tar");
    ok(
        &store,
        &config,
        &[
            "export",
            &name,
            archive.to_str().unwrap(),
            "--format",
            "docker",
        ],
    );
    let rm: serde_json::Value =
        serde_json::from_str(&ok(&store, &config, &["rm", "--json", &name])).unwrap();
    assert_eq!(rm["removed"][0], name.as_str());
    assert!(rm["prune"]["layers_removed"].as_u64().unwrap() >= 2, "{rm}");
    assert_eq!(ok(&store, &config, &["ls", "-q"]).trim(), "");
    assert_eq!(
        std::fs::read_dir(store.join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );

    let imported = ok(&store, &config, &["import", archive.to_str().unwrap()]);
    assert!(
        imported.contains(&name) && imported.contains(&id),
        "{imported}"
    );
    assert_eq!(ok(&store, &config, &["ls", "-q"]).trim(), name);

    // Errors: clear message, non-zero exit, nothing changed.
    let out = image_cmd(&store, &config, &["rm", "nosuch/image"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("docker.io/nosuch/image:latest"));
    let out = image_cmd(&store, &config, &["pull", "UPPER/case"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid image reference"));
    let out = image_cmd(&store, &config, &["frobnicate"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown command")
    );
    let prune: serde_json::Value =
        serde_json::from_str(&ok(&store, &config, &["prune", "--json"])).unwrap();
    assert_eq!(prune["layers_removed"], 0);
    assert_eq!(ok(&store, &config, &["ls", "-q"]).trim(), name);
}

#[test]
fn gc_keeps_shared_and_leased_layers() {
    let reg = Registry::start();
    let work = TempDir::new("gc");
    let layout = work.join("layout");
    // Two images on the same busybox base layer.
    let base = ImageBuilder::new(&layout, "base");
    base.add_busybox();
    base.repack();
    for name in ["a", "b"] {
        let img = ImageBuilder::derive(&layout, "base", name);
        img.write(name, name);
        img.repack();
    }
    push(&layout, "a", &reg.addr, "gc/a:1", &[]);
    push(&layout, "b", &reg.addr, "gc/b:1", &[]);
    let config = write_file(
        &work,
        "machine.toml",
        &format!("[registries]\ninsecure = [\"{}\"]\n", reg.addr),
    );
    let store_dir = work.join("images");
    ok(
        &store_dir,
        &config,
        &["pull", &format!("{}/gc/a:1", reg.addr)],
    );
    ok(
        &store_dir,
        &config,
        &["pull", &format!("{}/gc/b:1", reg.addr)],
    );
    let store = Store::open(&store_dir).unwrap();
    let a = store.resolve(&format!("{}/gc/a:1", reg.addr)).unwrap();
    let b = store.resolve(&format!("{}/gc/b:1", reg.addr)).unwrap();
    assert_eq!(a.layers[0], b.layers[0], "base layer stored once");
    assert_eq!(
        std::fs::read_dir(store_dir.join("layers")).unwrap().count(),
        3
    );

    // Nothing to collect while both are tagged.
    assert_eq!(gc::prune(&store).unwrap(), gc::PruneReport::default());

    // A container uses b: removing its tag keeps its data; `rm` refuses without --force.
    store.lease("web-1", &b).unwrap();
    let out = image_cmd(&store_dir, &config, &["rm", &b.reference]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by container(s): web-1"));
    ok(&store_dir, &config, &["rm", "--force", &b.reference]);
    assert!(
        b.layers.iter().all(|l| l.is_dir()),
        "leased layers collected"
    );
    assert!(store.has_blob(&b.manifest_digest));

    // Lease released: b's own layer goes, the shared base stays for a.
    store.release("web-1").unwrap();
    let report = gc::prune(&store).unwrap();
    assert_eq!(report.layers_removed, 1);
    assert!(!b.layers[1].exists());
    assert!(a.layers.iter().all(|l| l.is_dir()));
    assert_eq!(store.resolve(&a.reference).unwrap().id(), a.id());

    // Leftovers of interrupted pulls are swept too.
    std::fs::write(store_dir.join("tmp/deadbeef.partial"), b"half").unwrap();
    assert_eq!(gc::prune(&store).unwrap().temp_removed, 1);
    assert!(store.lease("../evil", &a).is_err());

    // A lease recorded from the command line (an image build's preloaded unit) holds too.
    ok(&store_dir, &config, &["lease", "web-2", &a.reference]);
    let out = image_cmd(&store_dir, &config, &["rm", &a.reference]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by container(s): web-2"));
    let bad = image_cmd(&store_dir, &config, &["lease", "../web", &a.reference]);
    assert!(!bad.status.success());
    // A start that finds its lease as it would write it leaves the file alone.
    let lease = store_dir.join("leases/web-2");
    let before = std::fs::metadata(&lease).unwrap();
    store.lease("web-2", &a).unwrap();
    let after = std::fs::metadata(&lease).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );
    // A FIFO where a lease belongs is replaced, never opened (an open would block).
    let fifo = store_dir.join("leases/web-3");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    store.lease("web-3", &a).unwrap();
    assert!(std::fs::symlink_metadata(&fifo).unwrap().is_file());
    // One for another image is replaced.
    store.lease("web-2", &b).unwrap();
    assert_eq!(
        std::fs::read_to_string(&lease).unwrap(),
        b.manifest_digest.to_string()
    );
}

#[test]
fn global_flags_before_image_are_honoured_or_refused() {
    let work = TempDir::new("cli-global");
    let store = work.join("images");
    let state = work.join("state");
    // `--root` is the runtime's state directory: refused rather than silently ignored.
    let out = berth_runtime()
        .arg("--root")
        .arg(&state)
        .args(["image", "--store"])
        .arg(&store)
        .arg("ls")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--root") && err.contains("--store"), "{err}");
    assert!(!store.exists() && !state.exists(), "nothing created");

    // `--log` and `--log-format` apply: the error lands in the log as JSON.
    let log = work.join("runtime.log");
    let out = berth_runtime()
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "image", "--store"])
        .arg(&store)
        .args(["inspect", "nosuch/image"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(
        line["msg"]
            .as_str()
            .unwrap()
            .contains("docker.io/nosuch/image:latest"),
        "{line}"
    );
    // Without global flags the image command works as before.
    let out = berth_runtime()
        .args(["image", "--store"])
        .arg(&store)
        .args(["ls", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty());
}

#[test]
fn a_damaged_lease_blocks_no_removal_and_lets_gc_delete_nothing() {
    let reg = Registry::start();
    let work = TempDir::new("gc-damaged-lease");
    let layout = work.join("layout");
    for name in ["a", "b"] {
        let img = busybox_image(&layout, name, &[(name, name)]);
        push(&layout, name, &reg.addr, &format!("lease/{name}:1"), &[]);
        drop(img);
    }
    let config = write_file(
        &work,
        "machine.toml",
        &format!("[registries]\ninsecure = [\"{}\"]\n", reg.addr),
    );
    let store_dir = work.join("images");
    for name in ["a", "b"] {
        ok(
            &store_dir,
            &config,
            &["pull", &format!("{}/lease/{name}:1", reg.addr)],
        );
    }
    let store = Store::open(&store_dir).unwrap();
    let a = store.resolve(&format!("{}/lease/a:1", reg.addr)).unwrap();
    let b = store.resolve(&format!("{}/lease/b:1", reg.addr)).unwrap();
    store.lease("web-1", &b).unwrap();
    // web-2's lease, emptied by a power loss: it may have held a.
    std::fs::write(store_dir.join("leases/web-2"), b"").unwrap();

    let leases = store.leases().unwrap();
    assert!(leases.contains(&("web-2".to_string(), None)), "{leases:?}");
    assert!(leases.contains(&("web-1".to_string(), Some(b.manifest_digest.clone()))));
    // The readable lease still protects b; a can go, and nothing of it is deleted.
    let out = image_cmd(&store_dir, &config, &["rm", &b.reference]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by container(s): web-1"));
    let rm = ok(&store_dir, &config, &["rm", "--json", &a.reference]);
    let rm: serde_json::Value = serde_json::from_str(&rm).unwrap();
    assert_eq!(rm["prune"]["unreadable_leases"][0], "web-2", "{rm}");
    assert_eq!(rm["prune"]["layers_removed"], 0, "{rm}");
    assert!(a.layers.iter().all(|l| l.is_dir()));
    assert!(store.has_blob(&a.manifest_digest));

    // Once the lease is written again (the container's next start), a is collected.
    store.lease("web-2", &b).unwrap();
    let report = gc::prune(&store).unwrap();
    assert!(report.unreadable_leases.is_empty());
    assert!(report.layers_removed >= 1, "{report:?}");
    assert!(!store.has_blob(&a.manifest_digest));
    assert!(b.layers.iter().all(|l| l.is_dir()));
}
