//! Import and export of `docker save` and OCI archives, checked against skopeo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs::File;
use std::process::Command;

use berth_store::archive::{export, import, ArchiveFormat};
use berth_store::registry::Reference;
use berth_store::{Error, Store};
use support::{busybox_image, run, run_in_overlay, TarBuilder, TempDir};

fn skopeo_copy(from: &str, to: &str) {
    run(Command::new("skopeo").args(["--insecure-policy", "copy", "-q", from, to]));
}

#[test]
fn imports_archives_written_by_skopeo() {
    let work = TempDir::new("archive-import");
    let layout = work.join("layout");
    busybox_image(&layout, "t", &[("etc/motd", "imported\n")]);
    let docker_tar = work.join("docker.tar");
    let oci_tar = work.join("oci.tar");
    skopeo_copy(
        &format!("oci:{}:t", layout.display()),
        &format!(
            "docker-archive:{}:example.com/arch/app:v1",
            docker_tar.display()
        ),
    );
    skopeo_copy(
        &format!("oci:{}:t", layout.display()),
        &format!("oci-archive:{}:v1", oci_tar.display()),
    );

    let store = Store::open(work.join("images")).unwrap();
    let images = import(&store, File::open(&docker_tar).unwrap(), None).unwrap();
    assert_eq!(images.len(), 1);
    let docker = &images[0];
    assert_eq!(docker.reference, "example.com/arch/app:v1");
    assert_eq!(docker.layers.len(), 2);
    assert_eq!(
        run_in_overlay(&docker.lowerdir(), "cat /etc/motd"),
        "imported\n"
    );

    // skopeo's OCI archive names the image only by tag: the import needs a name.
    let err = import(&store, File::open(&oci_tar).unwrap(), None).unwrap_err();
    assert!(err.to_string().contains("--tag"), "{err}");
    assert_eq!(store.list().unwrap().len(), 1);
    let tag = Reference::parse("local/oci:v1").unwrap();
    let images = import(&store, File::open(&oci_tar).unwrap(), Some(&tag)).unwrap();
    let oci = &images[0];
    assert_eq!(oci.reference, "docker.io/local/oci:v1");
    // Same content, same diff ids: the unpacked layers are shared.
    assert_eq!(oci.layers, docker.layers);
    assert_eq!(oci.id(), docker.id());
}

#[test]
fn exports_archives_that_skopeo_and_berth_read_back() {
    let work = TempDir::new("archive-export");
    let layout = work.join("layout");
    busybox_image(&layout, "t", &[("srv/index.html", "<h1>berth</h1>\n")]);
    let src = work.join("src.tar");
    skopeo_copy(
        &format!("oci:{}:t", layout.display()),
        &format!("docker-archive:{}:berth/web:1", src.display()),
    );
    let store = Store::open(work.join("images")).unwrap();
    let image = import(&store, File::open(&src).unwrap(), None)
        .unwrap()
        .remove(0);

    for (format, transport) in [
        (ArchiveFormat::Oci, "oci-archive"),
        (ArchiveFormat::Docker, "docker-archive"),
    ] {
        let out = work.join(format!("{transport}.tar"));
        export(&store, &image, format, File::create(&out).unwrap()).unwrap();
        // skopeo reads it and finds the same layers.
        let inspect = run(
            Command::new("skopeo").args(["inspect", &format!("{transport}:{}", out.display())])
        );
        let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(
            inspect["Layers"].as_array().unwrap().len(),
            2,
            "{transport}: {inspect}"
        );
        let copy = work.join(format!("copy-{transport}"));
        skopeo_copy(
            &format!("{transport}:{}", out.display()),
            &format!("oci:{}:x", copy.display()),
        );

        // And berth imports its own export into a fresh store as the same image.
        let fresh = Store::open(work.join(format!("fresh-{transport}"))).unwrap();
        let again = import(&fresh, File::open(&out).unwrap(), None)
            .unwrap()
            .remove(0);
        assert_eq!(again.reference, "docker.io/berth/web:1");
        assert_eq!(again.id(), image.id());
        assert_eq!(again.config.rootfs.diff_ids, image.config.rootfs.diff_ids);
        assert_eq!(
            std::fs::read_to_string(again.layers[1].join("srv/index.html")).unwrap(),
            "<h1>berth</h1>\n"
        );
    }
}

#[test]
fn rejects_archives_with_lying_blob_names_or_missing_parts() {
    let work = TempDir::new("archive-bad");
    let store = Store::open(work.join("images")).unwrap();
    let wrong = format!("blobs/sha256/{}", "0".repeat(64));
    let tar = TarBuilder::new()
        .file("oci-layout", "{}")
        .file(&wrong, "not that")
        .finish();
    let err = import(&store, &tar[..], None).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");

    let tar = TarBuilder::new().file("README", "hello").finish();
    let err = import(&store, &tar[..], None).unwrap_err();
    assert!(err.to_string().contains("manifest.json"), "{err}");

    let manifest = r#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#;
    let tar = TarBuilder::new().file("manifest.json", manifest).finish();
    let err = import(&store, &tar[..], None).unwrap_err();
    assert!(err.to_string().contains("missing file c.json"), "{err}");

    let truncated = {
        let full = TarBuilder::new()
            .file("manifest.json", manifest)
            .file("c.json", &"{}".repeat(400))
            .finish();
        full[..700].to_vec()
    };
    assert!(import(&store, &truncated[..], None).is_err());
    assert!(store.list().unwrap().is_empty());
    assert!(std::fs::read_dir(store.root().join("layers"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn export_of_a_damaged_blob_fails() {
    let work = TempDir::new("archive-damaged");
    let layout = work.join("layout");
    busybox_image(&layout, "t", &[("f", "f\n")]);
    let src = work.join("src.tar");
    skopeo_copy(
        &format!("oci:{}:t", layout.display()),
        &format!("docker-archive:{}:berth/damaged:1", src.display()),
    );
    let store = Store::open(work.join("images")).unwrap();
    let image = import(&store, File::open(&src).unwrap(), None)
        .unwrap()
        .remove(0);
    let blob = store.blob_path(&image.manifest.layers[1].digest);
    let mut data = std::fs::read(&blob).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x55;
    std::fs::write(&blob, data).unwrap();
    let err = export(&store, &image, ArchiveFormat::Oci, std::io::sink()).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
}

#[test]
fn refuses_an_archive_with_a_huge_long_name_header() {
    let work = TempDir::new("archive-huge-header");
    let store = Store::open(work.join("images")).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(64 << 20);
    h.set_cksum();
    // Only the header: a reader that buffered the claimed body would fail on its end
    // ("unexpected EOF") after allocating it, not on its size.
    let err = import(&store, &h.as_bytes()[..], None).unwrap_err();
    assert!(err.to_string().contains("claims 67108864 bytes"), "{err}");
}
