//! Drives a real `berth-init --root-dir` in a fresh temporary directory and reads unit
//! states through its control socket. Every wait is bounded; Drop stops whatever is left.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Host {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub pid: i32,
}

/// A fresh directory under the system temp dir, unique per test process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("berth-test-{}-{n}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("units")).unwrap();
    dir
}

impl Host {
    /// Writes `units` (name, TOML; `{dir}` is replaced by the test directory) and starts
    /// berth-init on them, waiting until its control socket answers.
    pub fn start(tag: &str, units: &[(&str, &str)]) -> Host {
        Host::start_in(temp_dir(tag), units)
    }

    /// Like `start`, in a directory the test prepared (from `temp_dir`).
    pub fn start_in(dir: PathBuf, units: &[(&str, &str)]) -> Host {
        Host::start_with_env(dir, units, &[])
    }

    /// Like `start_in`, with more environment variables for berth-init.
    pub fn start_with_env(dir: PathBuf, units: &[(&str, &str)], env: &[(&str, &Path)]) -> Host {
        for (name, text) in units {
            let text = text.replace("{dir}", &dir.display().to_string());
            std::fs::write(dir.join("units").join(format!("{name}.toml")), text).unwrap();
        }
        let stderr = std::fs::File::create(dir.join("berth-init.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth-init"))
            .arg("--root-dir")
            .arg(&dir)
            .env("BERTH_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let host = Host {
            dir,
            child: Some(child),
            pid,
        };
        host.wait_for("the control socket", || {
            host.try_get("/v1/system").is_some()
        });
        host
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// (status, body) of a raw request, or None when the socket does not answer.
    pub fn request(&self, raw: &str) -> Option<(u16, Value)> {
        request_at(&self.socket(), raw)
    }

    pub fn try_get(&self, path: &str) -> Option<Value> {
        get_at(&self.socket(), path)
    }

    pub fn unit(&self, name: &str) -> Value {
        self.try_get(&format!("/v1/units/{name}"))
            .unwrap_or_else(|| panic!("no unit {name}"))
    }

    pub fn state(&self, name: &str) -> String {
        self.unit(name)["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Polls `cond` until it holds; fails the test with `what` after DEADLINE.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > DEADLINE {
                panic!(
                    "timed out waiting for {what}\nberth-init log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_state(&self, name: &str, states: &[&str]) {
        self.wait_for(&format!("unit {name} to be {states:?}"), || {
            states.contains(&self.state(name).as_str())
        });
    }

    /// berth-init's own log (stderr in host mode).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("berth-init.log")).unwrap_or_default()
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Waits for berth-init to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berth-init did not exit\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// (status, head, body) of one raw request to the API socket at `socket`.
pub fn raw(socket: &Path, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, out[split + 4..].to_vec())
}

/// (status, JSON body) of one raw request to the API socket at `socket`.
pub fn request_at(socket: &Path, raw: &str) -> Option<(u16, Value)> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(raw.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).ok()?))
}

/// The JSON body of `GET path` when it answers 200.
pub fn get_at(socket: &Path, path: &str) -> Option<Value> {
    match request_at(socket, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))? {
        (200, v) => Some(v),
        _ => None,
    }
}

/// Children of `pid` (from /proc), with their state letter and command name.
pub fn children_of(pid: i32) -> Vec<(i32, char, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = stat[stat.find('(').map_or(0, |i| i + 1)..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if rest.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(pid) {
            out.push((child, rest[0].chars().next().unwrap_or('?'), comm));
        }
    }
    out
}

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Ask for an ordered stop (units die with it), then insist.
            self.signal(libc::SIGTERM);
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && start.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The berth-runtime binary beside berth-init (built by `cargo test --workspace`).
pub fn runtime_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_berth-init")).with_file_name("berth-runtime");
    assert!(
        bin.exists(),
        "{} is built by `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// The berthctl binary beside berth-init. `cargo test --workspace` builds it because berthctl's
/// crate has integration tests of its own (cargo builds a package's binaries only for those).
pub fn berthctl_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_berth-init")).with_file_name("berthctl");
    assert!(
        bin.exists(),
        "{} is built by `cargo test --workspace` or `cargo build -p berthctl`",
        bin.display()
    );
    bin
}

/// Runs `cmd`, failing the test with its stderr when it does not succeed.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new OCI layout at `layout` holding an empty image tagged `1` (made with umoci), unpacked
/// into `bundle` for editing; returns the image name for umoci (`LAYOUT:1`).
/// Imports the OCI layout `layout` into `DIR/state/images` under `tag`, through an archive as
/// `berth-runtime image import` takes it.
pub fn import_layout(dir: &Path, layout: &Path, tag: &str) {
    use berth_store::registry::Reference;
    use berth_store::{archive, Store};
    let tar = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let store = Store::open(dir.join("state/images")).unwrap();
    let tag = Reference::parse(tag).unwrap();
    archive::import(&store, std::fs::File::open(&tar).unwrap(), Some(&tag)).unwrap();
}

pub fn new_umoci_image(layout: &Path, bundle: &Path) -> String {
    let image = format!("{}:1", layout.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(bundle));
    image
}
