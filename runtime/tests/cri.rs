//! containerd's CRI plugin with berth-runtime as the binary of its `runc` runtime, driven as
//! kubelet would by a small CRI client (tests/cri_client.py, stubs compiled from the CRI
//! api.proto at each run): RunPodSandbox, CreateContainer, StartContainer, ExecSync,
//! ContainerStats, StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox, each answer
//! asserted. containerd runs with its root, state, sockets and CNI dirs in a temp dir; the pod
//! uses the host's network namespace (no CNI, so no leases); the sandbox image is the host's
//! static busybox running a pause loop, imported offline into the k8s.io namespace. What is
//! left afterwards (runtime state, mounts, cgroups, processes) is checked.
//! Root only; containerd, grpcio-tools and the proto come from scripts/install-deps.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{mounts_below, pids_with, unique, RunContainerd, Scratch, BIN};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const COMMAND_TIMEOUT: &str = "300";
const DAEMON_WAIT: Duration = Duration::from_secs(60);
const IMAGE: &str = "berth.test/busybox:latest";
const PAUSE_IMAGE: &str = "berth.test/pause:latest";
/// The pause equivalent: sleeps until SIGTERM or SIGKILL.
const PAUSE_CMD: &str =
    r#"["sh","-c","trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"]"#;
/// Where scripts/install-deps.sh puts the CRI api.proto of containerd's Debian source package.
const DEFAULT_PROTO: &str = "/usr/local/share/berth/cri-api/runtime/v1/api.proto";
/// Debian's python3 (grpcio and grpcio-tools are its packages).
const PYTHON: &str = "/usr/bin/python3";

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(COMMAND_TIMEOUT)
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(prog: &str, args: &[&str], log: &Path) -> String {
    let out = run(prog, args);
    assert!(
        out.status.success(),
        "{prog} {}: {:?}\n{}{}\ncontainerd log:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// containerd: SIGTERM on drop, SIGKILL if it does not exit in time.
struct Daemon(Child);

impl Daemon {
    fn start(config: &Path, log: &Path) -> Daemon {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("containerd: {e} (scripts/install-deps.sh installs it)"));
        Daemon(child)
    }

    fn wait_socket(&mut self, socket: &Path, log: &Path) {
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = self.0.try_wait().unwrap() {
                panic!(
                    "containerd exited ({status}) before listening:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(start.elapsed() < DAEMON_WAIT, "containerd never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if self.0.try_wait().unwrap().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let start = Instant::now();
        while self.0.try_wait().unwrap().is_none() {
            if start.elapsed() > DAEMON_WAIT {
                let _ = self.0.kill();
                let _ = self.0.wait();
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

/// `rel` in every mounted cgroup hierarchy (v2 and the hybrid host's v1 ones).
fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let mut dirs = vec![berth_runtime::cgroups::CgroupRoot::host()
        .expect("cgroup v2 mounted")
        .path()
        .join(rel)];
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        dirs.push(e.path().join(rel));
    }
    dirs.sort();
    dirs.dedup();
    dirs
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

/// After a failed test: force-deletes the containers berth-runtime still has in `runtime_root`
/// (which kills their processes and removes their cgroups), SIGKILLs what containerd left
/// running (shims) and removes the pod cgroups. On success there is nothing to do.
struct Leftovers {
    marker: String,
    cgroup: String,
    runtime_root: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let root = self.runtime_root.join("k8s.io");
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let _ = Command::new(BIN)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force"])
                .arg(e.file_name())
                .status();
        }
        for pid in pids_with(&self.marker) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        for cg in cgroup_dirs(&self.cgroup) {
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

/// containerd 1.6's configuration with the CRI plugin on: `runc` runs `binary`, every
/// directory is below `t`, the sandbox image is the offline pause image. `disable_cgroup` is
/// CRI's setting for hosts where pods cannot have cgroup limits: no cgroup path, no resources.
fn cri_config(t: &Scratch, binary: &str, disable_cgroup: bool) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  # Pods get no lower oom_score_adj than containerd's: without CAP_SYS_RESOURCE (a host that
  # is itself a container) the -998 of a sandbox cannot be set.
  restrict_oom_score_adj = true
  disable_cgroup = {disable_cgroup}
  sandbox_image = "{pause}"
  # Streaming (exec/attach/port-forward URLs) on loopback only; ExecSync does not use it.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{binary}"
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = t.s("root"),
        state = t.s("state"),
        sock = t.s("containerd.sock"),
        pause = PAUSE_IMAGE,
        runc_root = t.s("runc"),
        cni = t.s("cni/net.d"),
    )
}

/// Whether the v2 tree can hold what CRI asks of every pod (CPU shares, memory limits): true on
/// a unified host such as Berth, false on a hybrid host whose v2 tree lacks those controllers.
fn v2_has_pod_controllers() -> bool {
    let root = berth_runtime::cgroups::CgroupRoot::host().expect("cgroup v2 mounted");
    let list = std::fs::read_to_string(root.path().join("cgroup.controllers")).unwrap_or_default();
    let have: Vec<&str> = list.split_whitespace().collect();
    have.contains(&"cpu") && have.contains(&"memory")
}

/// containerd with the CRI plugin, `runc` being berth-runtime, its images imported.
fn start_cri(t: &Scratch, disable_cgroup: bool) -> Daemon {
    let log = t.path("containerd.log");
    std::fs::write(t.path("config.toml"), cri_config(t, BIN, disable_cgroup)).unwrap();
    let mut daemon = Daemon::start(&t.path("config.toml"), &log);
    daemon.wait_socket(&t.path("containerd.sock"), &log);
    for tar in ["busybox.tar", "pause.tar"] {
        ok(
            "ctr",
            &[
                "--address",
                &t.s("containerd.sock"),
                "--namespace",
                "k8s.io",
                "image",
                "import",
                &t.s(tar),
            ],
            &log,
        );
    }
    daemon
}

/// Runs the CRI client; returns its stdout.
fn client(t: &Scratch, proto: &str, mode: &str, cgroup_parent: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cri_client.py");
    ok(
        PYTHON,
        &[
            script,
            proto,
            &t.s("containerd.sock"),
            mode,
            "runc",
            IMAGE,
            cgroup_parent,
            &t.s("pod-logs"),
        ],
        &t.path("containerd.log"),
    )
}

#[test]
fn cri_plugin_runs_a_pod_with_berth_runtime() {
    let proto = std::env::var("BERTH_CRI_API_PROTO").unwrap_or_else(|_| DEFAULT_PROTO.into());
    assert!(
        Path::new(&proto).exists(),
        "{proto} missing (scripts/install-deps.sh extracts it from containerd's source package)"
    );
    let _run_dir = RunContainerd::note();
    let t = Scratch::new("berth-cri");
    let parent = unique("berthcri");
    // Dropped after the daemon (declared before it).
    let _leftovers = Leftovers {
        marker: t.s("containerd.sock"),
        cgroup: parent.clone(),
        runtime_root: t.path("runc"),
    };
    std::fs::create_dir_all(t.path("cni/net.d")).unwrap();
    std::fs::create_dir_all(t.path("pod-logs")).unwrap();
    let log = t.path("containerd.log");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/busybox-image.sh");
    ok("sh", &[script, &t.s("busybox.tar"), IMAGE], &log);
    ok(
        "sh",
        &[script, &t.s("pause.tar"), PAUSE_IMAGE, PAUSE_CMD],
        &log,
    );
    let cgroup_parent = format!("/{parent}");

    let full_v2 = v2_has_pod_controllers();
    let mut daemon = start_cri(&t, false);
    if !full_v2 {
        // Every sandbox gets CPU shares 2 from CRI: berth-runtime refuses a limit it cannot
        // apply, RunPodSandbox fails with that reason and leaves nothing behind.
        let err = client(&t, &proto, "refused", &cgroup_parent);
        assert!(
            err.contains("cgroup v2 controller `cpu` is unavailable"),
            "{err}"
        );
        let left = walk_files(&t.path("runc"));
        assert!(left.is_empty(), "runtime state left: {left:?}");
        // So on this host the pods run as CRI runs them where it cannot manage cgroups.
        daemon.stop();
        daemon = start_cri(&t, true);
    }
    let out = client(&t, &proto, "lifecycle", &cgroup_parent);
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    eprintln!("CRI client saw: {seen}");
    let (pod, cid) = (
        seen["pod"].as_str().unwrap(),
        seen["container"].as_str().unwrap(),
    );
    assert_eq!(seen["exec"]["stdout"], "pid1 sh\n", "{seen}");
    assert_eq!(seen["exit_code"], 143, "{seen}");

    // berth-runtime, not runc, ran it: the container is in none of a hybrid host's v1
    // hierarchies (runc puts it in all of them), and with cgroups managed it is in the v2
    // tree under the pod's parent.
    let cgroups = seen["cgroup"].as_str().unwrap();
    let v2 = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    if full_v2 {
        // CRI asks for a cgroup namespace on a unified host: then the container sees `/`.
        assert!(
            v2 == "/" || v2 == format!("{cgroup_parent}/{cid}"),
            "{seen}"
        );
    } else {
        assert!(v2.ends_with(cid), "{seen}");
        assert!(
            cgroups
                .lines()
                .all(|l| l.starts_with("0::") || !l.contains(cid)),
            "{seen}"
        );
    }
    // The shim deleted both containers: nothing of them in the runtime's root.
    let left = walk_files(&t.path("runc"));
    assert!(left.is_empty(), "runtime state left: {left:?}");
    let v2_root = berth_runtime::cgroups::CgroupRoot::host()
        .unwrap()
        .path()
        .to_path_buf();
    assert!(
        !v2_root.join(v2.trim_start_matches('/')).exists(),
        "{v2} left"
    );
    for id in [pod, cid] {
        let leftover: Vec<_> = cgroup_dirs(&parent)
            .into_iter()
            .map(|d| d.join(id))
            .filter(|d| d.exists())
            .collect();
        assert!(leftover.is_empty(), "cgroups left: {leftover:?}");
    }
    // The pod's parent cgroup is kubelet's to remove; nothing may be in it.
    for cg in cgroup_dirs(&parent) {
        if cg.exists() {
            std::fs::remove_dir(&cg).unwrap_or_else(|e| panic!("rmdir {}: {e}", cg.display()));
        }
    }
    daemon.stop();
    assert!(pids_with(&t.s("containerd.sock")).is_empty());
    assert!(mounts_below(&t.0).is_empty(), "{:?}", mounts_below(&t.0));
}
