//! Shared fixtures for the host integration tests (run as root): a bundle whose root is
//! Debian's static busybox, a private state root, and cleanup of everything a test made.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The berth-runtime binary: this package's, or for berth-engine's tests (which share these
/// fixtures) the one `cargo build -p berth-runtime` left in the workspace's target directory.
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_berth-runtime") {
    Some(bin) => bin,
    None => concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/debug/berth-runtime"
    ),
};
const APPLETS: &[&str] = &[
    "sh", "true", "false", "echo", "cat", "id", "hostname", "ls", "mkdir", "touch", "sleep",
    "grep", "readlink", "wc", "test", "env", "pwd",
];

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A unique name for this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// A bundle in a fresh temp dir with its own runtime root; removed (containers force-deleted)
/// on drop.
pub struct Fixture {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub bundle: PathBuf,
    pub config: Value,
    ids: std::cell::RefCell<Vec<String>>,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = std::env::temp_dir().join(unique("berth-rt"));
        let bundle = dir.join("bundle");
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "tmp", "etc", "out"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .unwrap();
        let root = dir.join("state");
        let mut f = Fixture {
            dir,
            root,
            bundle,
            config: Value::Null,
            ids: Default::default(),
        };
        let out = f.cli(&["spec", "--bundle", f.bundle.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        f.config =
            serde_json::from_slice(&std::fs::read(f.bundle.join("config.json")).unwrap()).unwrap();
        f.config["process"]["terminal"] = json!(false);
        // `spec` makes the root read-only, as runc's does; tests that want that say so.
        f.config["root"]["readonly"] = json!(false);
        f
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// Sets the container command.
    pub fn args(&mut self, args: &[&str]) -> &mut Self {
        self.config["process"]["args"] = json!(args);
        self
    }

    /// `sh -c SCRIPT` as the container command.
    pub fn sh(&mut self, script: &str) -> &mut Self {
        self.args(&["sh", "-c", script])
    }

    /// Bind-mounts a host directory into the container.
    pub fn bind(&mut self, host: &Path, dest: &str) -> &mut Self {
        let m = json!({"destination": dest, "type": "bind", "source": host, "options": ["rbind", "rw"]});
        self.config["mounts"].as_array_mut().unwrap().push(m);
        self
    }

    pub fn write_config(&self) {
        std::fs::write(
            self.bundle.join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// Runs the CLI with this fixture's `--root`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut full = vec!["--root", self.root.to_str().unwrap()];
        full.extend_from_slice(args);
        Command::new(BIN).args(&full).output().unwrap()
    }

    /// Registers an id for cleanup.
    pub fn track(&self, id: &str) {
        self.ids.borrow_mut().push(id.to_string());
    }

    /// Writes the config and `run`s it in the foreground.
    pub fn run(&self, id: &str) -> Output {
        self.write_config();
        self.track(id);
        self.cli(&["run", "--bundle", self.bundle.to_str().unwrap(), id])
    }

    /// Writes the config and `create`s it; panics on failure. The container keeps the stdio
    /// of `create`, so it goes to files (`output(id)`), not to pipes a test would wait on.
    pub fn create(&self, id: &str) {
        self.write_config();
        self.track(id);
        let (out, err) = (
            self.dir.join(format!("{id}.out")),
            self.dir.join(format!("{id}.err")),
        );
        let status = Command::new(BIN)
            .args([
                "--root",
                self.root.to_str().unwrap(),
                "create",
                "--bundle",
                self.bundle.to_str().unwrap(),
                id,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "create {id}: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
    }

    /// What a created container wrote to its stdout so far.
    pub fn output(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{id}.out"))).unwrap_or_default()
    }

    pub fn state(&self, id: &str) -> Value {
        let out = self.cli(&["state", id]);
        assert!(
            out.status.success(),
            "state {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Waits (bounded) until the container reaches `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        for _ in 0..500 {
            if self.status(id) == status {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("container {id} never became {status}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = self.cli(&["delete", "--force", id]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({:?}): {}{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// Waits (bounded) for a file to appear and returns its content.
pub fn wait_file(path: &Path) -> String {
    for _ in 0..500 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}

/// A scratch directory removed on drop (whatever a failed test left mounted below it first).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    pub fn s(&self, rel: &str) -> String {
        self.path(rel).to_str().unwrap().to_string()
    }
}

/// Mount points at or below `dir` in this mount namespace.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = dir.to_str().unwrap();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Whatever a failed test left mounted goes first, so the directory can go.
        let mut left = mounts_below(&self.0);
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Empty directories under /run/containerd that containerd and its shim create whatever
/// their configuration says (shim sockets in `s`): removed on drop if the test made them.
pub struct RunContainerd {
    existed: bool,
}

impl RunContainerd {
    pub fn note() -> RunContainerd {
        RunContainerd {
            existed: Path::new("/run/containerd").exists(),
        }
    }
}

impl Drop for RunContainerd {
    fn drop(&mut self) {
        if !self.existed {
            for d in [
                "/run/containerd/s",
                "/run/containerd/fifo",
                "/run/containerd",
            ] {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// Processes whose command line contains `marker` (a unique temp path or namespace).
pub fn pids_with(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if pid != std::process::id() as i32 && String::from_utf8_lossy(&cmdline).contains(marker) {
            pids.push(pid);
        }
    }
    pids
}
