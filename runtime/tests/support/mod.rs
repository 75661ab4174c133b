//! Shared fixtures of the image and registry tests: temp dirs, a real `docker-registry` on
//! loopback, images built with umoci from busybox-static and pushed with skopeo, crafted tar
//! layers, and a tiny HTTP server for token, proxy and misbehaving-registry tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod http;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// A directory removed (with everything below) when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "berth-test-{prefix}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's `docker-registry` on 127.0.0.1 with a kernel-chosen port and storage in a temp
/// dir; killed when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with_tls(None)
    }

    /// With `Some((cert, key))` the registry speaks HTTPS only.
    pub fn start_with_tls(tls: Option<(&Path, &Path)>) -> Registry {
        let dir = TempDir::new("registry");
        let tls_section = tls.map_or(String::new(), |(cert, key)| {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            )
        });
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  secret: berth-test\n{tls_section}",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker-registry (scripts/install-deps.sh installs it)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("listening on ") {
                    let rest = &line[i + "listening on ".len()..];
                    let addr: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
                        .collect();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("docker-registry did not report its address");
            }
        };
        assert!(addr.starts_with("127.0.0.1:"), "registry listens on {addr}");
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI layout built with umoci, one tag at a time.
pub struct ImageBuilder {
    pub layout: PathBuf,
    pub tag: String,
    bundle: TempDir,
}

impl ImageBuilder {
    /// A new image `tag` in `layout` (created if needed), unpacked for editing.
    pub fn new(layout: &Path, tag: &str) -> ImageBuilder {
        if !layout.join("index.json").exists() {
            run(Command::new("umoci")
                .arg("init")
                .arg("--layout")
                .arg(layout));
        }
        let image = format!("{}:{tag}", layout.display());
        run(Command::new("umoci").args(["new", "--image", &image]));
        Self::unpacked(layout, tag)
    }

    /// A new tag `tag` starting from the layers of `base` (so they are shared byte for byte).
    pub fn derive(layout: &Path, base: &str, tag: &str) -> ImageBuilder {
        let from = format!("{}:{base}", layout.display());
        run(Command::new("umoci").args(["tag", "--image", &from, tag]));
        Self::unpacked(layout, tag)
    }

    fn unpacked(layout: &Path, tag: &str) -> ImageBuilder {
        let image = format!("{}:{tag}", layout.display());
        let bundle = TempDir::new("bundle");
        std::fs::remove_dir(bundle.path()).unwrap();
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(bundle.path()));
        ImageBuilder {
            layout: layout.to_path_buf(),
            tag: tag.to_string(),
            bundle,
        }
    }

    pub fn image(&self) -> String {
        format!("{}:{}", self.layout.display(), self.tag)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// Writes a file in the rootfs (parents created).
    pub fn write(&self, path: &str, content: &str) {
        let p = self.rootfs().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// busybox-static as /bin/busybox plus a few applet links.
    pub fn add_busybox(&self) {
        let bin = self.rootfs().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for applet in ["sh", "ls", "cat", "test", "stat", "echo", "readlink"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }

    /// Commits the rootfs changes as a new layer.
    pub fn repack(&self) {
        run(Command::new("umoci")
            .args(["repack", "--refresh-bundle", "--image", &self.image()])
            .arg(self.bundle.path()));
    }

    /// Appends an uncompressed layer tarball verbatim.
    pub fn add_raw_layer(&self, tar: &[u8]) {
        let dir = TempDir::new("rawlayer");
        let file = dir.join("layer.tar");
        std::fs::write(&file, tar).unwrap();
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &self.image()])
            .arg(&file));
    }

    /// `umoci config` with the given flags.
    pub fn config(&self, args: &[&str]) {
        run(Command::new("umoci")
            .args(["config", "--image", &self.image()])
            .args(args));
    }
}

/// `skopeo copy` from an OCI layout tag to a plain-HTTP registry.
pub fn push(layout: &Path, tag: &str, registry: &str, repo: &str, extra: &[&str]) {
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
        .args(extra)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{registry}/{repo}")));
}

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
    berth_runtime::image::Digest::of_bytes(data).to_string()
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

/// The berth-runtime binary built for this test run.
pub fn berth_runtime() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth-runtime"))
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
