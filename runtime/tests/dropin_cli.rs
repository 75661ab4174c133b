//! What containerd's shim, Docker and Podman call answers as runc's does: pause/resume,
//! events, features, unknown commands, and the specs those clients send on a host whose v2
//! tree lacks controllers (root, busybox bundle).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use berth_runtime::cgroups::{CgroupRoot, Controller};
use common::*;
use serde_json::{json, Value};

/// Writes the config and runs `create`, returning its exit status and stderr (without
/// asserting). The container's stdio goes to files: a created container must not hold a pipe
/// this test waits on.
fn try_create(f: &Fixture, id: &str) -> (bool, String) {
    f.write_config();
    f.track(id);
    let err = f.dir.join(format!("{id}.create-err"));
    let status = Command::new(BIN)
        .args(["--root", f.root.to_str().unwrap(), "create", "--bundle"])
        .arg(&f.bundle)
        .arg(id)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(f.dir.join(format!("{id}.create-out"))).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    (status.success(), std::fs::read_to_string(err).unwrap())
}

fn host_controllers() -> berth_runtime::cgroups::Controllers {
    CgroupRoot::host()
        .expect("cgroup v2 mounted")
        .controllers()
        .unwrap()
}

#[test]
fn unknown_commands_are_named() {
    let f = Fixture::new();
    let out = f.cli(&["frobnicate", "x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown command `frobnicate`"),
        "{}",
        stderr(&out)
    );
    let out = f.cli(&[]);
    assert!(
        stderr(&out).contains("no command given"),
        "{}",
        stderr(&out)
    );
    // A global flag's value that happens to be a verb's name is still the flag's value.
    let log = f.dir.join("create");
    let out = Command::new(BIN)
        .args([
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("unknown command `nope`"),
        "{}",
        stderr(&out)
    );
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("nope"));
}

use std::process::Command;

#[test]
fn systemd_cgroup_is_refused_clearly() {
    let mut f = Fixture::new();
    f.args(&["true"]);
    f.write_config();
    let id = unique("sd");
    f.track(&id);
    let err_file = f.dir.join("sd.err");
    // The container's stdio to files: on a runtime that ignored the flag, a created container
    // must not hold a pipe this test waits on.
    let status = Command::new(BIN)
        .args([
            "--root",
            f.root.to_str().unwrap(),
            "--systemd-cgroup",
            "create",
            "--bundle",
        ])
        .arg(&f.bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .status()
        .unwrap();
    let err = std::fs::read_to_string(&err_file).unwrap();
    assert!(!status.success());
    assert!(err.contains("--systemd-cgroup is not supported"), "{err}");
    assert!(!f.root.join(&id).exists(), "nothing created");
}

#[test]
fn pause_freezes_and_resume_thaws_every_process() {
    let mut f = Fixture::new();
    f.sh("sleep 60 & exec sleep 60");
    let id = unique("pause");
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    f.wait_status(&id, "running");
    let events = CgroupRoot::host()
        .unwrap()
        .path()
        .join("berth")
        .join(&id)
        .join("cgroup.events");
    ok(&f.cli(&["pause", &id]));
    assert_eq!(f.status(&id), "paused");
    // The kernel reported the freeze complete before `pause` returned.
    assert!(std::fs::read_to_string(&events)
        .unwrap()
        .contains("frozen 1"));
    let again = f.cli(&["pause", &id]);
    assert!(
        !again.status.success() && stderr(&again).contains("paused"),
        "{}",
        stderr(&again)
    );
    let del = f.cli(&["delete", &id]);
    assert!(
        !del.status.success(),
        "a paused container is not deleted without --force"
    );
    let exec = f.cli(&["exec", &id, "true"]);
    assert!(!exec.status.success(), "no exec into a paused container");
    ok(&f.cli(&["resume", &id]));
    assert_eq!(f.status(&id), "running");
    assert!(std::fs::read_to_string(&events)
        .unwrap()
        .contains("frozen 0"));
    let again = f.cli(&["resume", &id]);
    assert!(!again.status.success(), "resume of a running container");
    // Paused again, kill and forced delete still work (containerd's kill of a paused task).
    ok(&f.cli(&["pause", &id]));
    ok(&f.cli(&["kill", &id, "KILL"]));
    f.wait_status(&id, "stopped");
    ok(&f.cli(&["delete", "--force", &id]));
}

#[test]
fn kill_all_of_a_stopped_container_succeeds() {
    // containerd's shim runs `kill --all ID KILL` after the init of a container that shares
    // its pod's pid namespace exits; runc signals what is left in the cgroup and succeeds.
    let mut f = Fixture::new();
    f.sh("exit 0");
    let id = unique("killall");
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    f.wait_status(&id, "stopped");
    ok(&f.cli(&["kill", "--all", &id, "KILL"]));
    // A kill of the init alone stays an error once it is stopped, as with runc.
    let single = f.cli(&["kill", &id, "KILL"]);
    assert!(
        !single.status.success() && stderr(&single).contains("stopped"),
        "{}",
        stderr(&single)
    );
    ok(&f.cli(&["delete", &id]));
}

#[test]
fn events_stats_is_runc_json_of_the_container_cgroup() {
    let mut f = Fixture::new();
    f.sh("sleep 60 & exec sleep 60");
    let id = unique("ev");
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    let mut ev = Value::Null;
    for _ in 0..500 {
        ev = serde_json::from_str(ok(&f.cli(&["events", "--stats", &id])).trim()).unwrap();
        if ev["data"]["pids"]["current"] == 2 || !host_controllers().contains(Controller::Pids) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], json!(id));
    for key in ["cpu", "memory", "pids", "blkio", "hugetlb"] {
        assert!(ev["data"].get(key).is_some(), "{key} missing: {ev}");
    }
    if host_controllers().contains(Controller::Pids) {
        assert_eq!(ev["data"]["pids"]["current"], 2, "{ev}");
    }
    // Without --stats it streams every interval until the container stops.
    let mut child = Command::new(BIN)
        .args([
            "--root",
            f.root.to_str().unwrap(),
            "events",
            "--interval",
            "50ms",
            &id,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "stats");
    }
    ok(&f.cli(&["kill", &id, "KILL"]));
    f.wait_status(&id, "stopped");
    // The stream ends by itself once the container is gone.
    let status = child.wait().unwrap();
    assert!(status.success());
    let bad = f.cli(&["events", "--interval", "soon", &id]);
    assert!(stderr(&bad).contains("not a duration"), "{}", stderr(&bad));
}

#[test]
fn features_is_the_oci_document() {
    let f = Fixture::new();
    let v: Value = serde_json::from_str(&ok(&f.cli(&["features"]))).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
    assert!(v["hooks"]
        .as_array()
        .unwrap()
        .contains(&json!("createRuntime")));
    assert!(v["mountOptions"]
        .as_array()
        .unwrap()
        .contains(&json!("rbind")));
    let linux = &v["linux"];
    assert!(linux["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("network")));
    assert!(linux["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("CAP_SYS_ADMIN")));
    assert_eq!(linux["cgroup"]["v2"], true);
    assert_eq!(linux["cgroup"]["systemd"], false);
    assert_eq!(linux["seccomp"]["enabled"], true);
}

/// Docker's spec for a container with its own network: a sysctl under the /proc/sys that the
/// spec also makes read-only.
#[test]
fn sysctls_are_written_before_proc_sys_is_read_only() {
    let mut f = Fixture::new();
    f.args(&["cat", "/proc/sys/net/ipv4/ping_group_range"]);
    assert!(f.config["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!({"type": "network"})));
    f.config["linux"]["sysctl"] = json!({"net.ipv4.ping_group_range": "0 2147483647"});
    assert!(f.config["linux"]["readonlyPaths"]
        .as_array()
        .unwrap()
        .contains(&json!("/proc/sys")));
    let out = f.run(&unique("sysctl"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).split_whitespace().collect::<Vec<_>>(),
        ["0", "2147483647"]
    );
}

/// What Podman and Docker send for "no limit" needs no controller; a real limit on a missing
/// one is an error naming it at `create`.
#[test]
fn no_limit_values_need_no_controller() {
    let available = host_controllers();
    for (name, resources) in [
        ("pids0", json!({"pids": {"limit": 0}})),
        ("pidsneg", json!({"pids": {"limit": -1}})),
        ("shares", json!({"cpu": {"shares": 1024}})),
        ("mem", json!({"memory": {"limit": -1, "swap": -1}})),
        ("quota", json!({"cpu": {"quota": -1, "period": 100000}})),
    ] {
        let mut f = Fixture::new();
        f.args(&["true"]);
        f.config["linux"]["resources"] = resources.clone();
        let out = f.run(&unique(name));
        assert!(out.status.success(), "{resources}: {}", stderr(&out));
    }
    if !available.contains(Controller::Pids) {
        let mut f = Fixture::new();
        f.args(&["true"]);
        f.config["linux"]["resources"] = json!({"pids": {"limit": 100}});
        let id = unique("pids100");
        let (success, err) = try_create(&f, &id);
        assert!(!success);
        assert!(err.contains("controller `pids` is unavailable"), "{err}");
        assert!(!f.root.join(&id).exists());
    }
}

#[test]
fn hugetlb_limits_are_applied() {
    if !host_controllers().contains(Controller::Hugetlb) {
        eprintln!("skipped: no hugetlb controller in the host's v2 tree");
        return;
    }
    let mut f = Fixture::new();
    f.args(&["sleep", "60"]);
    let id = unique("huge");
    f.config["linux"]["resources"] =
        json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]});
    f.create(&id);
    let root = CgroupRoot::host().unwrap();
    let file = root.path().join("berth").join(&id).join("hugetlb.2MB.max");
    assert_eq!(std::fs::read_to_string(file).unwrap().trim(), "4194304");
    ok(&f.cli(&["delete", "--force", &id]));
}

/// `runc spec`'s capabilities (ambient, no inheritable) cannot be raised: `create` says so
/// instead of succeeding and leaving the error on the container's stderr after `start`.
#[test]
fn capabilities_the_kernel_refuses_fail_create() {
    let mut f = Fixture::new();
    f.args(&["true"]);
    f.config["process"]["capabilities"] = json!({
        "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    });
    let id = unique("caps");
    let (success, err) = try_create(&f, &id);
    assert!(!success, "create must fail");
    assert!(
        err.contains("ambient") && err.contains("inheritable"),
        "{err}"
    );
    assert!(!f.root.join(&id).exists(), "nothing left");
}

/// An rlimit the kernel refuses (a hard limit above fs.nr_open, or raised without
/// CAP_SYS_RESOURCE: Podman's defaults on a host whose limits are lower) fails `create`, as
/// runc's does, instead of the process after `start`.
#[test]
fn rlimits_the_kernel_refuses_fail_create() {
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut f = Fixture::new();
    f.args(&["true"]);
    f.config["process"]["rlimits"] =
        json!([{"type": "RLIMIT_NOFILE", "hard": nr_open + 1, "soft": 1024}]);
    let id = unique("rlimit");
    let (success, err) = try_create(&f, &id);
    assert!(!success, "create must fail");
    assert!(err.contains("RLIMIT_NOFILE"), "{err}");
    assert!(!f.root.join(&id).exists(), "nothing left");
}

/// `rootfsPropagation: "shared"` (runtime-tools): pivot_root refuses a shared root, so the
/// root is made shared after it.
#[test]
fn shared_rootfs_propagation_is_applied_after_pivot() {
    let mut f = Fixture::new();
    f.args(&["cat", "/proc/self/mountinfo"]);
    f.config["linux"]["rootfsPropagation"] = json!("shared");
    let out = f.run(&unique("shared"));
    assert!(out.status.success(), "{}", stderr(&out));
    let info = stdout(&out);
    let root = info
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no / in {info}"));
    assert!(root.contains(" shared:"), "{root}");
}

/// A spec without a mount namespace (allowed by the runtime spec): the process is chrooted
/// into the root, as with runc; what would need mounts is refused by name.
#[test]
fn no_mount_namespace_runs_chrooted() {
    let mut f = Fixture::new();
    f.args(&["ls", "/"]);
    let namespaces: Vec<Value> = f.config["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "mount")
        .cloned()
        .collect();
    f.config["linux"]["namespaces"] = json!(namespaces);
    let with_mounts = f.config.clone();
    for key in ["maskedPaths", "readonlyPaths"] {
        f.config["linux"].as_object_mut().unwrap().remove(key);
    }
    f.config["mounts"] = json!([]);
    let out = f.run(&unique("nomnt"));
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    let mut names: Vec<&str> = listing.split_whitespace().collect();
    names.sort_unstable();
    assert_eq!(names, ["bin", "etc", "out", "tmp"]);
    f.config = with_mounts;
    let out = f.run(&unique("nomnt"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("mounts") && stderr(&out).contains("needs a mount namespace"),
        "{}",
        stderr(&out)
    );
}

/// Detaches a mount of the test's on drop.
struct Detach(std::path::PathBuf);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mount points of this (the host's) namespace below `dir`.
fn host_mounts_below(dir: &std::path::Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect()
}

/// A bundle on a shared mount of the host and a root propagation that is not recursive
/// (`private`): the container's copy of that mount stays a peer of the host's, yet neither the
/// rootfs's bind nor the mounts made in it (/proc, /dev, ...) may appear on the host.
#[test]
fn a_bundle_on_a_shared_host_mount_leaks_no_mount_to_the_host() {
    use nix::mount::{mount, MsFlags};
    let mut f = Fixture::new();
    let dir = f.dir.clone();
    mount(
        Some(&dir),
        &dir,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let _detach = Detach(dir.clone());
    mount(
        None::<&str>,
        &dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    f.args(&["true"]);
    f.config["linux"]["rootfsPropagation"] = json!("private");
    let out = f.run(&unique("leak"));
    assert!(out.status.success(), "{}", stderr(&out));
    let leaked = host_mounts_below(&dir);
    for m in &leaked {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    assert_eq!(leaked, Vec::<String>::new());
}
