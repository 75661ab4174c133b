//! berth-runtime as the OCI runtime of containerd (io.containerd.runc.v2 shim), Docker and
//! Podman, each driven through its own client with an image built here from the host's static
//! busybox. Every daemon runs with its state, root, sockets and exec-root in a temp dir and is
//! stopped after; what they leave behind (state dirs, mounts, cgroups) is checked.
//! Root only; the clients come from Debian's packages (scripts/install-deps.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{mounts_below, pids_with, unique, RunContainerd, Scratch, BIN};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every client command is bounded by timeout(1).
const COMMAND_TIMEOUT: &str = "120";
/// How long a daemon may take to come up or go down.
const DAEMON_WAIT: Duration = Duration::from_secs(60);
const IMAGE: &str = "berth.test/busybox:latest";

/// Runs `prog args...` under timeout(1); returns its output.
fn run(prog: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(COMMAND_TIMEOUT)
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs and asserts success; returns stdout.
fn ok(prog: &str, args: &[&str]) -> String {
    let out = run(prog, args);
    assert!(
        out.status.success(),
        "{prog} {}: {:?}\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon child: SIGTERM on drop, SIGKILL if it does not exit in time.
struct Daemon {
    name: &'static str,
    child: Child,
}

impl Daemon {
    fn start(name: &'static str, cmd: &mut Command, log: &Path) -> Daemon {
        let log = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e} (scripts/install-deps.sh installs it)"));
        Daemon { name, child }
    }

    /// Waits until `socket` exists, failing early if the daemon died.
    fn wait_socket(&mut self, socket: &Path, log: &Path) {
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before listening:\n{}",
                    self.name,
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < DAEMON_WAIT,
                "{} never listened",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if self.child.try_wait().unwrap().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > DAEMON_WAIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The busybox image as a docker-archive tarball (read by all three clients).
fn busybox_image(scratch: &Scratch) -> String {
    let tar = scratch.s("busybox.tar");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/busybox-image.sh");
    ok("sh", &[script, &tar, IMAGE]);
    tar
}

/// The host's cgroup v2 mount (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
fn cgroup2_root() -> PathBuf {
    berth_runtime::cgroups::CgroupRoot::host()
        .expect("cgroup v2 mounted")
        .path()
        .to_path_buf()
}

/// Removes a cgroup directory tree that must hold no process, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            remove_cgroup_tree(&e.path());
        }
    }
    std::fs::remove_dir(dir).unwrap_or_else(|e| panic!("rmdir {}: {e}", dir.display()));
}

/// After a failed test: SIGKILLs what the daemons left running (shims, conmon, containers in
/// the test's cgroups) and removes those cgroups, in every hierarchy (v1 ones are the
/// clients'). On success there is nothing to do.
struct Leftovers {
    markers: Vec<String>,
    /// cgroup paths relative to the hierarchies' roots.
    cgroups: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for m in &self.markers {
            for pid in pids_with(m) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
        for cg in self.cgroups.iter().flat_map(|rel| cgroup_dirs(rel)) {
            if cg.exists() {
                let _ = std::fs::write(cg.join("cgroup.kill"), "1");
                let start = Instant::now();
                while remove_tree_quietly(&cg).is_err() && start.elapsed() < DAEMON_WAIT {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

fn remove_tree_quietly(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type()?.is_dir() {
            remove_tree_quietly(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

#[test]
fn containerd_runs_busybox_through_the_runc_v2_shim() {
    let _run_dir = RunContainerd::note();
    let t = Scratch::new("berth-ctd");
    let ns = unique("berthtest");
    // Dropped after the daemon (declared before it).
    let _leftovers = Leftovers {
        markers: vec![t.s("containerd.sock")],
        cgroups: vec![ns.clone()],
    };
    let tar = busybox_image(&t);
    let sock = t.path("containerd.sock");
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
# Only what `ctr` needs: no CRI, no metrics or debug listeners.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"#,
        root = t.s("root"),
        state = t.s("state"),
        sock = sock.display()
    );
    std::fs::write(t.path("config.toml"), config).unwrap();
    let log = t.path("containerd.log");
    let mut daemon = Daemon::start(
        "containerd",
        Command::new("containerd")
            .arg("--config")
            .arg(t.path("config.toml")),
        &log,
    );
    daemon.wait_socket(&sock, &log);

    let runc_root = t.s("runc");
    let fifo_dir = t.s("fifo");
    let addr = sock.to_str().unwrap().to_string();
    let ctr = |args: &[&str]| -> Output {
        let mut full = vec!["--address", &addr, "--namespace", &ns];
        full.extend_from_slice(args);
        run("ctr", &full)
    };
    let ctr_ok = |args: &[&str]| -> String {
        let out = ctr(args);
        assert!(
            out.status.success(),
            "ctr {}: {}{}\ncontainerd log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The runtime binary is the container's runc option, as `ctr run --runc-binary` sets it.
    let runtime_flags = [
        "--runc-binary",
        BIN,
        "--runc-root",
        runc_root.as_str(),
        "--fifo-dir",
        fifo_dir.as_str(),
    ];

    ctr_ok(&["image", "import", &tar]);
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(&runtime_flags);
    args.extend_from_slice(&[IMAGE, "echo-once", "echo", "hello from berth"]);
    assert_eq!(ctr_ok(&args).trim(), "hello from berth");

    let id = "sleeper";
    let mut args = vec!["run", "-d"];
    args.extend_from_slice(&runtime_flags);
    args.extend_from_slice(&[IMAGE, id, "sleep", "600"]);
    ctr_ok(&args);
    let status = |id: &str| -> String {
        ctr_ok(&["task", "ls"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_string()
    };
    wait_for("task RUNNING", DAEMON_WAIT, || status(id) == "RUNNING");
    let out = ctr_ok(&[
        "task",
        "exec",
        "--fifo-dir",
        &fifo_dir,
        "--exec-id",
        "e1",
        id,
        "sh",
        "-c",
        "echo exec beside $(cat /proc/1/comm)",
    ]);
    // In the container's pid namespace: its pid 1 is the sleep.
    assert_eq!(out.trim(), "exec beside sleep");
    // berth-runtime's own view of the shim's container.
    let state_root = Path::new(&runc_root).join(&ns);
    let berth_status = || -> String {
        let out = Command::new(BIN)
            .arg("--root")
            .arg(&state_root)
            .args(["state", id])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["status"].as_str().unwrap_or_default().to_string()
    };
    ctr_ok(&["task", "pause", id]);
    assert_eq!(status(id), "PAUSED");
    assert_eq!(berth_status(), "paused");
    ctr_ok(&["task", "resume", id]);
    assert_eq!(status(id), "RUNNING");
    assert_eq!(berth_status(), "running");
    ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
    wait_for("task STOPPED", DAEMON_WAIT, || status(id) == "STOPPED");
    ctr_ok(&["task", "delete", id]);
    ctr_ok(&["container", "delete", id]);
    ctr_ok(&["image", "rm", IMAGE]);

    // Nothing of either container is left: runtime state, cgroups.
    let left: Vec<_> = std::fs::read_dir(&state_root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime state left: {left:?}");
    // ctr puts containers at /<namespace>/<id>; the namespace's cgroup is the client's to
    // remove (runc leaves it too), the containers' are gone already.
    let ns_cgroup = cgroup2_root().join(&ns);
    for c in ["echo-once", id] {
        assert!(!ns_cgroup.join(c).exists(), "cgroup of {c} left");
    }
    remove_cgroup_tree(&ns_cgroup);
    daemon.stop();
    assert!(mounts_below(&t.0).is_empty(), "{:?}", mounts_below(&t.0));
}

/// A network namespace for a daemon and its containers: their bridge, veths and firewall rules
/// live and die in it, and nothing reaches beyond the host's loopback.
struct NetNs(String);

/// Whether /run/netns existed before the first test here made a namespace (ip(8) and Podman
/// create it, as a bind mount onto itself).
static RUN_NETNS_EXISTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

impl NetNs {
    fn new(prefix: &str) -> NetNs {
        RUN_NETNS_EXISTED.get_or_init(|| Path::new("/run/netns").exists());
        let name = unique(prefix);
        ok("ip", &["netns", "add", &name]);
        NetNs(name)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
        // The last test out removes /run/netns if the tests made it (another test's namespace
        // keeps it non-empty until then).
        let empty = std::fs::read_dir("/run/netns").is_ok_and(|mut d| d.next().is_none());
        if RUN_NETNS_EXISTED.get() == Some(&false) && empty {
            let _ = Command::new("umount").arg("/run/netns").status();
            let _ = std::fs::remove_dir("/run/netns");
        }
    }
}

/// Host paths a client creates whatever its configuration says: removed after the test if
/// they did not exist before it.
struct MadeByClient(Vec<(PathBuf, bool)>);

impl MadeByClient {
    fn note(paths: &[&str]) -> MadeByClient {
        MadeByClient(
            paths
                .iter()
                .map(|p| (PathBuf::from(p), Path::new(p).exists()))
                .collect(),
        )
    }
}

impl Drop for MadeByClient {
    fn drop(&mut self) {
        // Deepest first, so a parent is empty by the time it comes.
        for (path, existed) in self.0.iter().rev() {
            if !existed && path.exists() {
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(path)
                } else {
                    std::fs::remove_file(path)
                };
            }
        }
    }
}

/// Every hierarchy's directory for cgroup `rel` (v1 controllers and v2).
fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(rel))
        .filter(|p| p.exists())
        .collect()
}

/// The runtime's state directory is empty (or gone).
fn assert_no_runtime_state(root: &Path) {
    let left: Vec<_> = walk_files(root);
    assert!(left.is_empty(), "runtime state left: {left:?}");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn docker_runs_busybox_with_berth_runtime() {
    let made = MadeByClient::note(&[
        "/run/containerd",
        "/run/containerd/s",
        "/run/docker",
        "/run/docker/plugins",
    ]);
    let netns = NetNs::new("berth-dk");
    let t = Scratch::new("berth-dk");
    let parent = unique("berth-docker");
    let _leftovers = Leftovers {
        markers: vec![t.s("exec")],
        cgroups: vec![parent.clone()],
    };
    let tar = busybox_image(&t);
    let sock = t.path("docker.sock");
    let host = format!("unix://{}", sock.display());
    let runtime = format!("berth={BIN}");
    let log = t.path("dockerd.log");
    // Its own config file, so the daemon's key goes to the temp dir, not /etc/docker.
    let config = serde_json::json!({ "deprecated-key-path": t.s("key.json") });
    std::fs::write(t.path("daemon.json"), config.to_string()).unwrap();
    // Default networking (bridge, iptables) inside the test's own network namespace.
    let mut daemon = Daemon::start(
        "dockerd",
        Command::new("nsenter")
            .arg(format!("--net={}", netns.path()))
            .arg("/usr/sbin/dockerd")
            .args(["--data-root", &t.s("data"), "--exec-root", &t.s("exec")])
            .args(["--pidfile", &t.s("docker.pid"), "-H", &host])
            .args(["--add-runtime", &runtime])
            .args(["--containerd-namespace", &parent])
            .args([
                "--containerd-plugins-namespace",
                &format!("{parent}-plugins"),
            ])
            .args(["--cgroup-parent", &format!("/{parent}")])
            .args(["--config-file", &t.s("daemon.json")]),
        &log,
    );
    daemon.wait_socket(&sock, &log);
    let docker = |args: &[&str]| -> Output {
        let mut full = vec!["-H", host.as_str()];
        full.extend_from_slice(args);
        run("/usr/bin/docker", &full)
    };
    let docker_ok = |args: &[&str]| -> String {
        let out = docker(args);
        assert!(
            out.status.success(),
            "docker {}: {}{}\ndockerd log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    docker_ok(&["load", "-i", &tar]);
    let out = docker_ok(&[
        "run",
        "--rm",
        "--runtime",
        "berth",
        IMAGE,
        "echo",
        "hello from berth",
    ]);
    assert_eq!(out.trim(), "hello from berth");
    docker_ok(&[
        "run",
        "-d",
        "--runtime",
        "berth",
        "--name",
        "sleeper",
        IMAGE,
        "sh",
        "-c",
        "echo logged; exec sleep 600",
    ]);
    let state = || {
        docker_ok(&["inspect", "-f", "{{.State.Status}}", "sleeper"])
            .trim()
            .to_string()
    };
    wait_for("container running", DAEMON_WAIT, || state() == "running");
    let out = docker_ok(&[
        "exec",
        "sleeper",
        "sh",
        "-c",
        "echo exec beside $(cat /proc/1/comm)",
    ]);
    assert_eq!(out.trim(), "exec beside sleep");
    wait_for("log line", DAEMON_WAIT, || {
        docker_ok(&["logs", "sleeper"]).contains("logged")
    });
    // It has the default bridge network: an address besides loopback.
    let out = docker_ok(&["exec", "sleeper", "cat", "/proc/net/dev"]);
    assert!(out.contains("eth0"), "{out}");
    docker_ok(&["pause", "sleeper"]);
    assert_eq!(state(), "paused");
    docker_ok(&["unpause", "sleeper"]);
    assert_eq!(state(), "running");
    docker_ok(&["stop", "-t", "1", "sleeper"]);
    docker_ok(&["rm", "sleeper"]);
    // A limit whose controller the host's v2 tree lacks is refused at create, by name.
    let available = berth_runtime::cgroups::CgroupRoot::host()
        .unwrap()
        .controllers()
        .unwrap();
    if !available.contains(berth_runtime::cgroups::Controller::Memory) {
        let out = docker(&[
            "run",
            "--rm",
            "--runtime",
            "berth",
            "-m",
            "64m",
            IMAGE,
            "true",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("controller `memory` is unavailable"), "{err}");
    }
    docker_ok(&["rmi", IMAGE]);
    daemon.stop();

    assert_no_runtime_state(&t.path("exec/runtime-berth"));
    let v2 = cgroup2_root().join(&parent);
    let left: Vec<_> = std::fs::read_dir(&v2)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().unwrap().is_dir())
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "container cgroups left: {left:?}");
    for dir in cgroup_dirs(&parent) {
        remove_cgroup_tree(&dir);
    }
    assert!(mounts_below(&t.0).is_empty(), "{:?}", mounts_below(&t.0));
    drop(made);
}

#[test]
fn podman_runs_busybox_with_berth_runtime() {
    let made = MadeByClient::note(&["/var/lib/cni"]);
    let netns = NetNs::new("berth-pm");
    let t = Scratch::new("berth-pm");
    let parent = unique("berth-podman");
    let _leftovers = Leftovers {
        markers: vec![t.s("runroot")],
        cgroups: vec![parent.clone()],
    };
    let tar = busybox_image(&t);
    let net = format!("--net={}", netns.path());
    let (root, runroot, tmp, netdir) = (t.s("root"), t.s("runroot"), t.s("tmp"), t.s("net"));
    let podman = |args: &[&str]| -> Output {
        let mut full = vec![
            net.as_str(),
            "podman",
            "--root",
            &root,
            "--runroot",
            &runroot,
            "--tmpdir",
            &tmp,
            "--runtime",
            BIN,
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--network-config-dir",
            &netdir,
        ];
        full.extend_from_slice(args);
        run("nsenter", &full)
    };
    let podman_ok = |args: &[&str]| -> String {
        let out = podman(args);
        assert!(
            out.status.success(),
            "podman {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    podman_ok(&["load", "-i", &tar]);
    let cgroup_parent = format!("/{parent}");
    let available = berth_runtime::cgroups::CgroupRoot::host()
        .unwrap()
        .controllers()
        .unwrap();
    if !available.contains(berth_runtime::cgroups::Controller::Pids) {
        // Podman's default pids limit (2048) needs the pids controller: refused at create,
        // by name, on a host whose v2 tree lacks it.
        let out = podman(&[
            "run",
            "--rm",
            "--cgroup-parent",
            &cgroup_parent,
            IMAGE,
            "true",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("controller `pids` is unavailable"), "{err}");
    }
    // No pids limit (0 means none); rlimits this host lets an unprivileged-bound root set
    // (Podman's default nofile and nproc exceed the hard limits and need CAP_SYS_RESOURCE,
    // which runc's create refuses the same way).
    let base = [
        "--cgroup-parent",
        cgroup_parent.as_str(),
        "--pids-limit",
        "0",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        v.push(extra[0].to_string());
        v.extend(base.iter().map(|s| s.to_string()));
        v.extend(extra[1..].iter().map(|s| s.to_string()));
        v
    };
    let args = with(&["run", "--rm", IMAGE, "echo", "hello from berth"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(podman_ok(&args).trim(), "hello from berth");
    // A program relative to the working directory, and `--tmpfs` (which Podman gives
    // `tmpcopyup`) over a directory of the image: it keeps what the image had there.
    let args = with(&[
        "run",
        "--rm",
        "--workdir",
        "/bin",
        IMAGE,
        "./echo",
        "relative",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(podman_ok(&args).trim(), "relative");
    let args = with(&["run", "--rm", "--tmpfs", "/etc", IMAGE, "cat", "/etc/group"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(podman_ok(&args).trim(), "root:x:0:");
    let args = with(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        IMAGE,
        "sh",
        "-c",
        "echo logged; exec sleep 600",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    podman_ok(&args);
    let state = || {
        podman_ok(&["inspect", "-f", "{{.State.Status}}", "sleeper"])
            .trim()
            .to_string()
    };
    wait_for("container running", DAEMON_WAIT, || state() == "running");
    let out = podman_ok(&[
        "exec",
        "sleeper",
        "sh",
        "-c",
        "echo exec beside $(cat /proc/1/comm)",
    ]);
    assert_eq!(out.trim(), "exec beside sleep");
    wait_for("log line", DAEMON_WAIT, || {
        podman_ok(&["logs", "sleeper"]).contains("logged")
    });
    let out = podman_ok(&["exec", "sleeper", "cat", "/proc/net/dev"]);
    assert!(out.contains("eth0"), "default bridge network: {out}");
    podman_ok(&["pause", "sleeper"]);
    assert_eq!(state(), "paused");
    podman_ok(&["unpause", "sleeper"]);
    assert_eq!(state(), "running");
    podman_ok(&["stop", "-t", "1", "sleeper"]);
    podman_ok(&["rm", "sleeper"]);
    podman_ok(&["rmi", IMAGE]);

    assert_no_runtime_state(&t.path("runroot/runc"));
    let v2 = cgroup2_root().join(&parent);
    let left: Vec<_> = std::fs::read_dir(&v2)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().unwrap().is_dir())
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "container cgroups left: {left:?}");
    // Podman's own v1 cgroups for conmon under the same parent.
    for dir in cgroup_dirs(&parent) {
        remove_cgroup_tree(&dir);
    }
    assert!(mounts_below(&t.0).is_empty(), "{:?}", mounts_below(&t.0));
    drop(made);
}
