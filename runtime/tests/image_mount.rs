//! Container roots mounted from the store's layers: overlays of more layers than mount(2)'s
//! one page of options holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;

use berth_store::{Digest, Image};
use support::TempDir;

#[test]
fn mounts_an_image_of_sixty_layers() {
    let t = TempDir::new("mount-layers");
    let layers: Vec<_> = (0..60)
        .map(|i| {
            // Named like the store's layers/<diff id hex>.
            let dir = t.join(format!("layers/{:064x}", i + 1));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(format!("f{i}")), format!("layer {i}")).unwrap();
            fs::write(dir.join("shadowed"), format!("layer {i}")).unwrap();
            dir
        })
        .collect();
    let image = Image {
        reference: "localhost/many:1".into(),
        manifest_digest: Digest::of_bytes(b"manifest"),
        manifest: serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of_bytes(b"config").to_string(),
                "size": 6
            },
            "layers": []
        }))
        .unwrap(),
        config_digest: Digest::of_bytes(b"config"),
        config: Default::default(),
        layers,
    };
    let (upper, work, root) = (t.join("c/upper"), t.join("c/work"), t.join("c/rootfs"));
    let legacy = format!(
        "lowerdir={},upperdir={},workdir={}",
        image.lowerdir(),
        upper.display(),
        work.display()
    );
    assert!(legacy.len() > 4096, "the options must not fit in a page");

    image.mount_root(&upper, &work, &root).unwrap();
    let seen = (
        fs::read_to_string(root.join("f0")).ok(),
        fs::read_to_string(root.join("f59")).ok(),
        fs::read_to_string(root.join("shadowed")).ok(),
        fs::write(root.join("new"), "written").is_ok(),
    );
    nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(
        seen,
        (
            Some("layer 0".to_string()),
            Some("layer 59".to_string()),
            Some("layer 59".to_string()),
            true
        ),
        "bottom and top layer visible, the top one wins, writes go to the upper dir"
    );
    assert_eq!(fs::read_to_string(upper.join("new")).unwrap(), "written");
}
