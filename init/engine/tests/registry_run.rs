//! From a real registry to a running container: an image with several layers, a whiteout and
//! an opaque directory is pushed to Debian's docker-registry on loopback, pulled with
//! `berth-runtime image pull`, and run with `berth-runtime run` from an OCI bundle whose root
//! is the overlay of the pulled layers plus the container's own upper directory (as the
//! supervisor mounts it). The container reports the tree it sees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The runtime's host test fixtures, shared: these tests run its binary.
#[path = "../../../runtime/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;

use berth_engine::builder::{build_spec, ContainerSettings, ImageDefaults, NetworkMode};
use berth_store::Store;
use support::{berth_runtime, multilayer_image, push, run, write_file, Registry, TempDir};

/// Unmounts the container's root when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// What the container prints: its working directory and environment from the image config,
/// then the files each layer left.
const SCRIPT: &str = "echo cwd=$(pwd) greeting=$GREETING; \
    cat /etc/config; \
    ls /opaque; \
    test -e /data/gone.txt && echo gone-present || echo gone-absent; \
    cat /data/keep.txt /usr/share/doc/a.txt /usr/share/doc/sl; \
    stat -c %h /usr/share/doc/a-link; \
    echo mine > /written";

#[test]
fn a_pulled_image_runs_with_its_layers_merged() {
    let reg = Registry::start();
    let work = TempDir::new("pull-run");
    let layout = work.join("layout");
    multilayer_image(&layout, "multi");
    push(&layout, "multi", &reg.addr, "berth/run:v1", &[]);

    let reference = format!("{}/berth/run:v1", reg.addr);
    let store_dir = work.join("images");
    let machine = write_file(
        &work,
        "machine.toml",
        &format!("[registries]\ninsecure = [\"{}\"]\n", reg.addr),
    );
    run(berth_runtime()
        .arg("image")
        .arg("--store")
        .arg(&store_dir)
        .arg("--config")
        .arg(&machine)
        .args(["pull", &reference]));
    let image = Store::open(&store_dir)
        .unwrap()
        .resolve(&reference)
        .unwrap();
    assert!(image.layers.len() >= 3, "{:?}", image.layers);

    let bundle = work.join("bundle");
    let upper = work.join("upper");
    let rootfs = bundle.join("rootfs");
    // The root as the supervisor mounts it: the layers under the container's upper directory.
    image
        .mount_root(&upper, &work.join("work"), &rootfs)
        .unwrap();
    let _root = Mounted(rootfs.clone());
    let cfg = &image.config.config;
    let settings = ContainerSettings {
        hostname: "pulled".into(),
        // Replaces the image's cmd; its entrypoint (/bin/sh) stays.
        command: vec!["-c".into(), SCRIPT.into()],
        network: NetworkMode::None,
        image: ImageDefaults {
            entrypoint: cfg.entrypoint.clone().unwrap_or_default(),
            cmd: cfg.cmd.clone().unwrap_or_default(),
            env: cfg.env.clone().unwrap_or_default(),
            user: Some(cfg.user.clone()),
            workdir: Some(cfg.working_dir.clone()),
        },
        ..ContainerSettings::default()
    };
    let spec = build_spec(&settings, &rootfs).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();

    let id = format!("pulled-{}", std::process::id());
    let state = work.join("state");
    let out = berth_runtime()
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stdout}{stderr}");
    assert_eq!(
        stdout,
        "cwd=/data greeting=hello\n\
         v2\n\
         new.txt\n\
         gone-absent\n\
         keep\ndoc\ndoc\n\
         2\n",
        "the container's view (stderr: {stderr})"
    );
    // The container wrote into its own upper directory; the shared layers are untouched.
    assert_eq!(
        std::fs::read_to_string(upper.join("written")).unwrap(),
        "mine\n"
    );
    assert!(image.layers.iter().all(|l| !l.join("written").exists()));
    assert!(!state.join(&id).exists(), "run deletes the container");
}
