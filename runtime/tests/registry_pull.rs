//! Pulls from a real registry (Debian's docker-registry on loopback) of images built with umoci
//! from busybox-static and pushed with skopeo: several layers with a whiteout and an opaque
//! directory, Docker schema 2, zstd layers, a multi-platform index, digests, resume.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use std::sync::Mutex;

use berth_store::pull::{self, PullOptions};
use berth_store::registry::{Client, Reference, RegistriesConfig};
use berth_store::{Error, Store};
use support::{multilayer_image, push, run_in_overlay, ImageBuilder, Registry, TempDir};

fn client_for(registry: &str) -> Client {
    Client::new(RegistriesConfig {
        insecure: vec![registry.to_string()],
        ..Default::default()
    })
}

/// Pulls and returns the image plus the progress lines.
fn pull_lines(
    store: &Store,
    client: &Client,
    reference: &str,
) -> (berth_store::Result<berth_store::Image>, Vec<String>) {
    let lines = Mutex::new(Vec::new());
    let progress = |l: &str| lines.lock().unwrap().push(l.to_string());
    let r = pull::pull(
        store,
        client,
        &Reference::parse(reference).unwrap(),
        &PullOptions::default(),
        &progress,
    );
    (r, lines.into_inner().unwrap())
}

#[test]
fn pulls_multilayer_image_with_whiteout_and_opaque_dir() {
    let reg = Registry::start();
    let work = TempDir::new("pull-multi");
    let layout = work.join("layout");
    multilayer_image(&layout, "multi");
    push(&layout, "multi", &reg.addr, "berth/multi:v1", &[]);

    let store = Store::open(work.join("images")).unwrap();
    let client = client_for(&reg.addr);
    let reference = format!("{}/berth/multi:v1", reg.addr);
    let (image, lines) = pull_lines(&store, &client, &reference);
    let image = image.unwrap();
    assert!(lines.iter().any(|l| l.contains("resolving")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("downloaded")), "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with(&format!("pull {reference}:"))),
        "{lines:?}"
    );

    // Config as the launcher sees it.
    assert_eq!(image.reference, reference);
    assert!(image.layers.len() >= 3, "{:?}", image.layers);
    let cfg = &image.config.config;
    assert_eq!(
        cfg.entrypoint.as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    assert_eq!(
        cfg.cmd.as_deref(),
        Some(&["-c".to_string(), "echo hi".to_string()][..])
    );
    assert!(cfg
        .env
        .as_ref()
        .unwrap()
        .contains(&"GREETING=hello".to_string()));
    assert_eq!(cfg.working_dir, "/data");
    assert!(cfg.exposed_ports.contains_key("8080/tcp"));
    assert_eq!(cfg.user, "0:0");

    // The store is an OCI layout with the reference in index.json.
    let root = store.root();
    assert!(root.join("oci-layout").is_file());
    let index = fs::read_to_string(root.join("index.json")).unwrap();
    assert!(index.contains(&reference), "{index}");
    assert!(store.has_blob(&image.manifest_digest));
    for layer in &image.manifest.layers {
        assert!(store.has_blob(&layer.digest));
    }

    // Layers on disk: the whiteout is an overlay whiteout, the opaque dir carries its xattr.
    let n = image.layers.len();
    let layer2 = &image.layers[n - 2];
    let wh = fs::symlink_metadata(layer2.join("data/gone.txt")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout {wh:?}"
    );
    let top = &image.layers[n - 1];
    let mut value = [0u8; 8];
    let path = std::ffi::CString::new(top.join("opaque").to_str().unwrap()).unwrap();
    let len = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert_eq!(len, 1, "opaque xattr missing");
    assert_eq!(value[0], b'y');
    let a = fs::metadata(layer2.join("usr/share/doc/a.txt")).unwrap();
    let link = fs::metadata(layer2.join("usr/share/doc/a-link")).unwrap();
    assert_eq!(a.ino(), link.ino(), "hard link kept");
    assert_eq!(
        fs::read_link(layer2.join("usr/share/doc/sl")).unwrap(),
        Path::new("a.txt")
    );

    // The tree a container sees: overlay of the layers, busybox inside.
    let out = run_in_overlay(
        &image.lowerdir(),
        "cat /etc/config; ls /opaque; test -e /data/gone.txt && echo gone-present || echo gone-absent; \
         cat /data/keep.txt; cat /usr/share/doc/sl; stat -c %h /usr/share/doc/a.txt",
    );
    assert_eq!(
        out, "v2\nnew.txt\ngone-absent\nkeep\ndoc\n2\n",
        "container view"
    );
}

#[test]
fn pulls_docker_schema2_and_zstd_layers_sharing_unpacked_layers() {
    let reg = Registry::start();
    let work = TempDir::new("pull-formats");
    let layout = work.join("layout");
    let b = ImageBuilder::new(&layout, "small");
    b.add_busybox();
    b.write("hello.txt", "hello\n");
    b.repack();
    // zstd first: once the registry holds the gzip layer, skopeo would reuse it.
    push(
        &layout,
        "small",
        &reg.addr,
        "fmt/zstd:1",
        &["--dest-compress-format", "zstd"],
    );
    push(
        &layout,
        "small",
        &reg.addr,
        "fmt/docker:1",
        &["--format", "v2s2"],
    );

    let store = Store::open(work.join("images")).unwrap();
    let client = client_for(&reg.addr);
    let docker = pull_lines(&store, &client, &format!("{}/fmt/docker:1", reg.addr))
        .0
        .unwrap();
    assert_eq!(
        docker.manifest.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let zstd = pull_lines(&store, &client, &format!("{}/fmt/zstd:1", reg.addr))
        .0
        .unwrap();
    assert_eq!(
        zstd.manifest.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(docker.config.rootfs.diff_ids, zstd.config.rootfs.diff_ids);
    // Same diff ids: one unpacked copy serves both images.
    assert_eq!(docker.layers, zstd.layers);
    assert_eq!(
        fs::read_dir(store.root().join("layers")).unwrap().count(),
        1
    );
    assert_eq!(
        fs::read_to_string(zstd.layers[0].join("hello.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(store.list().unwrap().len(), 2);
}

/// Writes an OCI index over `manifests` (descriptor JSON values) as tag `tag` of `layout`.
fn add_index(layout: &Path, tag: &str, manifests: Vec<serde_json::Value>) {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = support::digest(&bytes);
    fs::write(layout.join("blobs/sha256").join(&digest[7..]), &bytes).unwrap();
    let path = layout.join("index.json");
    let mut top: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    fs::write(&path, serde_json::to_vec(&top).unwrap()).unwrap();
}

/// The manifest descriptor of `tag` in `layout`, with a platform added.
fn platform_descriptor(layout: &Path, tag: &str, arch: &str) -> serde_json::Value {
    let top: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let d = top["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    serde_json::json!({
        "mediaType": d["mediaType"],
        "digest": d["digest"],
        "size": d["size"],
        "platform": {"os": "linux", "architecture": arch},
    })
}

#[test]
fn pulls_linux_amd64_from_a_multi_platform_index() {
    let reg = Registry::start();
    let work = TempDir::new("pull-index");
    let layout = work.join("layout");
    for arch in ["arm64", "amd64"] {
        let b = ImageBuilder::new(&layout, arch);
        b.add_busybox();
        b.write("arch", &format!("{arch}\n"));
        b.repack();
        b.config(&["--architecture", arch]);
    }
    let arm = platform_descriptor(&layout, "arm64", "arm64");
    let amd = platform_descriptor(&layout, "amd64", "amd64");
    add_index(&layout, "multi", vec![arm.clone(), amd.clone()]);
    add_index(&layout, "armonly", vec![arm]);
    push(&layout, "multi", &reg.addr, "idx/app:multi", &["--all"]);
    push(&layout, "armonly", &reg.addr, "idx/app:armonly", &["--all"]);

    let store = Store::open(work.join("images")).unwrap();
    let client = client_for(&reg.addr);
    let (image, lines) = pull_lines(&store, &client, &format!("{}/idx/app:multi", reg.addr));
    let image = image.unwrap();
    assert_eq!(
        image.manifest_digest.to_string(),
        amd["digest"].as_str().unwrap()
    );
    assert_eq!(image.config.architecture, "amd64");
    assert!(
        lines.iter().any(|l| l.contains("linux/amd64 manifest")),
        "{lines:?}"
    );
    let out = run_in_overlay(&image.lowerdir(), "cat /arch");
    assert_eq!(out, "amd64\n");

    let (err, _) = pull_lines(&store, &client, &format!("{}/idx/app:armonly", reg.addr));
    match err {
        Err(Error::NoPlatform { available, .. }) => assert_eq!(available, "linux/arm64"),
        other => panic!("expected NoPlatform, got {other:?}"),
    }
    assert_eq!(store.list().unwrap().len(), 1, "failed pull left an image");
}

#[test]
fn second_pull_skips_present_blobs_and_digest_references_work() {
    let reg = Registry::start();
    let work = TempDir::new("pull-again");
    let layout = work.join("layout");
    multilayer_image(&layout, "t");
    push(&layout, "t", &reg.addr, "again/app:1", &[]);
    let store = Store::open(work.join("images")).unwrap();
    let client = client_for(&reg.addr);
    let name = format!("{}/again/app:1", reg.addr);
    let first = pull_lines(&store, &client, &name).0.unwrap();
    let (second, lines) = pull_lines(&store, &client, &name);
    let second = second.unwrap();
    assert_eq!(first.manifest_digest, second.manifest_digest);
    let present = lines
        .iter()
        .filter(|l| l.contains("already present"))
        .count();
    assert_eq!(present, first.layers.len(), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("downloading")),
        "{lines:?}"
    );

    let by_digest = format!("{}/again/app@{}", reg.addr, first.manifest_digest);
    let pinned = pull_lines(&store, &client, &by_digest).0.unwrap();
    assert_eq!(pinned.manifest_digest, first.manifest_digest);
    assert_eq!(
        store.resolve(&by_digest).unwrap().manifest_digest,
        first.manifest_digest
    );
    assert_eq!(
        store.resolve(&first.id().hex()[..12]).unwrap().id(),
        first.id()
    );

    // What berth-init looks up before it decides to pull: the unit's typed reference,
    // found without the registry.
    drop(reg);
    let again = store
        .resolve_reference(&Reference::parse(&name).unwrap())
        .unwrap();
    assert_eq!(again.manifest_digest, first.manifest_digest);
}

#[test]
fn interrupted_download_resumes_and_a_corrupt_partial_restarts_cleanly() {
    let reg = Registry::start();
    let work = TempDir::new("pull-resume");
    let layout = work.join("layout");
    let b = ImageBuilder::new(&layout, "r");
    b.add_busybox();
    b.repack();
    push(&layout, "r", &reg.addr, "resume/app:1", &[]);
    let name = format!("{}/resume/app:1", reg.addr);
    let client = client_for(&reg.addr);

    let reference_store = Store::open(work.join("ref")).unwrap();
    let full = pull_lines(&reference_store, &client, &name).0.unwrap();
    let layer = &full.manifest.layers[0];
    let blob = fs::read(reference_store.blob_path(&layer.digest)).unwrap();

    // Half a download left behind by an interrupted pull: the next pull continues it.
    let store = Store::open(work.join("images")).unwrap();
    let partial = store
        .root()
        .join("tmp")
        .join(format!("{}.partial", layer.digest.hex()));
    fs::write(&partial, &blob[..blob.len() / 2]).unwrap();
    let (image, lines) = pull_lines(&store, &client, &name);
    image.unwrap();
    assert!(lines.iter().any(|l| l.contains("resuming at")), "{lines:?}");
    assert!(!partial.exists());

    // A partial file with wrong bytes: digest mismatch, nothing kept; the next pull restarts.
    let store = Store::open(work.join("images2")).unwrap();
    let partial = store
        .root()
        .join("tmp")
        .join(format!("{}.partial", layer.digest.hex()));
    fs::write(&partial, vec![0u8; blob.len() / 2]).unwrap();
    let (err, _) = pull_lines(&store, &client, &name);
    assert!(matches!(err, Err(Error::DigestMismatch { .. })), "{err:?}");
    assert!(!partial.exists(), "corrupt partial kept");
    assert!(store.list().unwrap().is_empty());
    assert!(!store.has_blob(&layer.digest));
    pull_lines(&store, &client, &name).0.unwrap();
    assert!(store.has_blob(&layer.digest));
}

#[test]
fn mirrors_are_tried_first_and_the_registry_after_them() {
    let reg = Registry::start();
    let work = TempDir::new("pull-mirror");
    let layout = work.join("layout");
    support::busybox_image(&layout, "m", &[("mirrored", "yes\n")]);
    push(&layout, "m", &reg.addr, "team/app:1", &[]);
    let dead = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // The image's own registry is down (a closed loopback port, so nothing ever leaves the
    // machine); its first mirror is down too; the second mirror serves it.
    let (origin, dead_mirror) = (dead(), dead());
    let mut config = RegistriesConfig {
        insecure: vec![reg.addr.clone(), dead_mirror.clone(), origin.clone()],
        ..Default::default()
    };
    config
        .mirrors
        .insert(origin.clone(), vec![dead_mirror, reg.addr.clone()]);
    let store = Store::open(work.join("images")).unwrap();
    let name = format!("{origin}/team/app:1");
    let (image, _) = pull_lines(&store, &Client::new(config.clone()), &name);
    let image = image.unwrap();
    assert_eq!(image.reference, name);
    assert_eq!(
        fs::read_to_string(image.layers[1].join("mirrored")).unwrap(),
        "yes\n"
    );

    // No working mirror: the error is the registry's own.
    config.mirrors.clear();
    let (err, _) = pull_lines(
        &Store::open(work.join("other")).unwrap(),
        &Client::new(config),
        &name,
    );
    assert!(err.unwrap_err().to_string().contains(&origin));
}

#[test]
fn concurrent_pulls_of_images_sharing_a_layer() {
    let reg = Registry::start();
    let work = TempDir::new("pull-concurrent");
    let layout = work.join("layout");
    let base = ImageBuilder::new(&layout, "base");
    base.add_busybox();
    base.repack();
    let names: Vec<String> = (0..4)
        .map(|i| {
            let tag = format!("t{i}");
            let img = ImageBuilder::derive(&layout, "base", &tag);
            img.write("which", &format!("{i}\n"));
            img.repack();
            push(&layout, &tag, &reg.addr, &format!("conc/app:{i}"), &[]);
            format!("{}/conc/app:{i}", reg.addr)
        })
        .collect();
    let store = Store::open(work.join("images")).unwrap();
    let client = client_for(&reg.addr);
    let images: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| s.spawn(|| pull_lines(&store, &client, n).0.unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, image) in images.iter().enumerate() {
        assert_eq!(image.layers[0], images[0].layers[0]);
        assert_eq!(
            fs::read_to_string(image.layers[1].join("which")).unwrap(),
            format!("{i}\n")
        );
    }
    // One shared base plus one layer per image; no leftovers.
    assert_eq!(
        fs::read_dir(store.root().join("layers")).unwrap().count(),
        5
    );
    assert_eq!(store.list().unwrap().len(), 4);
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
}
