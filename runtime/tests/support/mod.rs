//! Shared fixtures of the image and registry tests: temp dirs, a real `docker-registry` on
//! loopback, images built with umoci from busybox-static and pushed with skopeo, crafted tar
//! layers, and a tiny HTTP server for token, proxy and misbehaving-registry tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod http;
mod registry;

pub use registry::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Tar building for crafted layers: entries with arbitrary (even malicious) names.
pub struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }
}

impl TarBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(path: &[u8], kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Written raw so that "../x" and "/x" can be expressed (set_path refuses them).
        let name = &mut h.as_old_mut().name;
        assert!(path.len() < name.len());
        name[..path.len()].copy_from_slice(path);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn link_name(h: &mut tar::Header, target: &[u8]) {
        let field = &mut h.as_old_mut().linkname;
        assert!(target.len() < field.len());
        field[..target.len()].copy_from_slice(target);
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.dir_with(path, 0o755, 0, 0)
    }

    pub fn dir_with(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = Self::header(path.as_bytes(), tar::EntryType::Directory, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_cksum();
        self.builder.append(&h, &[][..]).unwrap();
        self
    }

    pub fn file(&mut self, path: &str, content: &str) -> &mut Self {
        self.file_with(path, content, 0o644, 0, 0, 1_700_000_000)
    }

    pub fn file_with(
        &mut self,
        path: &str,
        content: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = Self::header(
            path.as_bytes(),
            tar::EntryType::Regular,
            mode,
            content.len() as u64,
        );
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_cksum();
        self.builder.append(&h, content.as_bytes()).unwrap();
        self
    }

    /// A file with PAX xattrs.
    pub fn file_with_xattr(
        &mut self,
        path: &str,
        content: &str,
        key: &str,
        value: &str,
    ) -> &mut Self {
        let pax_key = format!("SCHILY.xattr.{key}");
        self.builder
            .append_pax_extensions([(pax_key.as_str(), value.as_bytes())])
            .unwrap();
        self.file(path, content)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(path.as_bytes(), tar::EntryType::Symlink, 0o777, 0);
        Self::link_name(&mut h, target.as_bytes());
        h.set_cksum();
        self.builder.append(&h, &[][..]).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(path.as_bytes(), tar::EntryType::Link, 0o644, 0);
        Self::link_name(&mut h, target.as_bytes());
        h.set_cksum();
        self.builder.append(&h, &[][..]).unwrap();
        self
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        let mut h = Self::header(path.as_bytes(), tar::EntryType::Fifo, 0o600, 0);
        h.set_cksum();
        self.builder.append(&h, &[][..]).unwrap();
        self
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(path.as_bytes(), tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.builder.append(&h, &[][..]).unwrap();
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// sha256 digest string of `data`.
pub fn digest(data: &[u8]) -> String {
    berth_store::Digest::of_bytes(data).to_string()
}

/// Runs `script` with busybox sh inside the overlay of `lowerdir`, in a private mount
/// namespace (the mount disappears with the namespace). Returns stdout.
pub fn run_in_overlay(lowerdir: &str, script: &str) -> String {
    let dir = TempDir::new("overlay");
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir(dir.join(d)).unwrap();
    }
    let mount = format!(
        "mount -t overlay overlay -o lowerdir={lowerdir},upperdir={},workdir={} {} && exec chroot {} /bin/sh -c \"$1\"",
        dir.join("upper").display(),
        dir.join("work").display(),
        dir.join("merged").display(),
        dir.join("merged").display(),
    );
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(mount)
        .arg("sh")
        .arg(script))
}

/// The berth-runtime binary: built for this test run in its own package.
pub fn berth_runtime() -> Command {
    // For berth-engine's tests, which share this module: the binary `cargo build -p
    // berth-runtime` left in the workspace's target directory.
    Command::new(match option_env!("CARGO_BIN_EXE_berth-runtime") {
        Some(bin) => bin,
        None => concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/debug/berth-runtime"
        ),
    })
}

/// Writes `text` to a fresh file in `dir` and returns its path.
pub fn write_file(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p
}

/// A two-layer image: busybox, then `files` (path, content).
pub fn busybox_image(layout: &Path, tag: &str, files: &[(&str, &str)]) -> ImageBuilder {
    let b = ImageBuilder::new(layout, tag);
    b.add_busybox();
    b.repack();
    for (path, content) in files {
        b.write(path, content);
    }
    b.repack();
    b
}

/// Three layers: busybox and files; a deletion (whiteout), a change, links; an opaque dir.
pub fn multilayer_image(layout: &Path, tag: &str) -> ImageBuilder {
    let b = ImageBuilder::new(layout, tag);
    b.add_busybox();
    b.write("etc/config", "v1\n");
    b.write("data/keep.txt", "keep\n");
    b.write("data/gone.txt", "gone\n");
    b.write("opaque/old.txt", "old\n");
    b.write("opaque/sub/older.txt", "older\n");
    b.repack();
    std::fs::remove_file(b.rootfs().join("data/gone.txt")).unwrap();
    b.write("etc/config", "v2\n");
    b.write("usr/share/doc/a.txt", "doc\n");
    std::fs::hard_link(
        b.rootfs().join("usr/share/doc/a.txt"),
        b.rootfs().join("usr/share/doc/a-link"),
    )
    .unwrap();
    std::os::unix::fs::symlink("a.txt", b.rootfs().join("usr/share/doc/sl")).unwrap();
    b.repack();
    let layer3 = TarBuilder::new()
        .dir("opaque/")
        .file("opaque/.wh..wh..opq", "")
        .file("opaque/new.txt", "new\n")
        .finish();
    b.add_raw_layer(&layer3);
    b.config(&[
        "--config.entrypoint",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hi",
        "--config.env",
        "GREETING=hello",
        "--config.workingdir",
        "/data",
        "--config.exposedports",
        "8080/tcp",
        "--config.user",
        "0:0",
    ]);
    b
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (ca.crt, server.crt, server.key).
pub fn make_certs(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "2", "-subj", "/CN=Berth Test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")));
    run(Command::new("openssl")
        .arg("req")
        .args(ec)
        .args(["-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.crt")));
    (p("ca.crt"), p("server.crt"), p("server.key"))
}
