//! A real OCI registry on loopback and images to push to it: Debian's `docker-registry`
//! listening on 127.0.0.1 with a kernel-chosen port, images built with umoci from
//! busybox-static and pushed with skopeo, temp dirs that clean up after themselves.
//!
//! Self-contained (std only) so that berth-init's tests can include this file too.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
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
