//! A container's cgroup on the host's v2 hierarchy: created, used by `ps` and `kill --all`,
//! removed on delete; limits the host cannot honour are refused, not dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use berth_runtime::cgroups::{CgroupRoot, Controller};
use common::*;
use serde_json::json;
use std::process::Command;

#[test]
fn container_gets_a_cgroup_that_delete_removes() {
    let root = CgroupRoot::host().expect("cgroup v2 mounted");
    let mut f = Fixture::new();
    f.sh("sleep 60 & sleep 60");
    let id = unique("cg");
    let rel = format!("/berth-test/{id}");
    f.config["linux"]["cgroupsPath"] = json!(rel);
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    let path = root.path().join(rel.trim_start_matches('/'));
    assert!(path.is_dir());
    // Both sleeps and the shell are in it.
    let mut pids: Vec<i64> = Vec::new();
    for _ in 0..500 {
        pids = serde_json::from_str(&ok(&f.cli(&["ps", "--format", "json", &id]))).unwrap();
        if pids.len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(pids.len(), 2, "{pids:?}");
    // The table is read from /proc in runc's columns: it says what the host's `ps -ef` says
    // about the same processes.
    let table = ok(&f.cli(&["ps", &id]));
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    );
    let host = String::from_utf8(Command::new("ps").arg("-ef").output().unwrap().stdout).unwrap();
    let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    let ours: Vec<Vec<String>> = lines.map(words).collect();
    assert_eq!(ours.len(), 2, "{table}");
    for row in &ours {
        assert_eq!(row[7..], ["sleep", "60"], "{table}");
        let theirs = host
            .lines()
            .map(words)
            .find(|w| w.get(1) == Some(&row[1]))
            .unwrap_or_else(|| panic!("pid {} not in ps -ef:\n{host}", row[1]));
        assert_eq!(row, &theirs, "ours:\n{table}\nps -ef:\n{host}");
    }
    ok(&f.cli(&["kill", "--all", &id, "KILL"]));
    f.wait_status(&id, "stopped");
    ok(&f.cli(&["delete", &id]));
    assert!(!path.exists());
    let _ = std::fs::remove_dir(root.path().join("berth-test"));
}

#[test]
fn limits_without_v2_controllers_are_refused() {
    let root = CgroupRoot::host().expect("cgroup v2 mounted");
    if root.controllers().unwrap().contains(Controller::Memory) {
        // A host with real v2 controllers applies the limit; the QEMU tests cover that.
        return;
    }
    let mut f = Fixture::new();
    f.args(&["true"]);
    f.config["linux"]["resources"] = json!({"memory": {"limit": 67108864}});
    let id = unique("nolimit");
    let o = f.run(&id);
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("controller `memory` is unavailable")
            && e.contains("cannot be applied"),
        "{e}"
    );
    assert!(!f.root.join(&id).exists());
    assert!(!root.path().join("berth").join(&id).exists());
}

/// The CLI in a private mount namespace whose /sys/fs/cgroup is a cgroup2 mount made here:
/// the layout of a Berth machine (and of any unified host), on a hybrid host too. There is
/// only one v2 hierarchy, so it is the same tree as the host's.
fn on_unified(f: &Fixture, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$@\"")
        .args(["sh", BIN, "--root", f.root.to_str().unwrap()])
        .args(args);
    c
}

fn cli_on_unified(f: &Fixture, args: &[&str]) -> std::process::Output {
    on_unified(f, args).output().unwrap()
}

#[test]
fn the_cgroup_namespace_is_rooted_at_the_containers_cgroup() {
    let mut f = Fixture::new();
    // What a process inside sees: its own cgroup as the root, and no cgroup above or beside
    // it (a directory under /sys/fs/cgroup would be a cgroup of the host's).
    let probe = "grep '^0::' /proc/self/cgroup; ls -F /sys/fs/cgroup | grep '/$'; echo end";
    f.sh(probe);
    let id = unique("cgns");
    f.config["linux"]["cgroupsPath"] = json!(format!("/berth-test/{id}"));
    f.write_config();
    f.track(&id);
    let bundle = f.bundle.to_str().unwrap().to_string();
    assert_eq!(
        ok(&cli_on_unified(&f, &["run", "--bundle", &bundle, &id])),
        "0::/\nend\n"
    );

    // A process started by `exec` joins the same namespace after it joined the cgroup.
    f.args(&["sleep", "60"]);
    let id = unique("cgns-exec");
    f.config["linux"]["cgroupsPath"] = json!(format!("/berth-test/{id}"));
    f.write_config();
    f.track(&id);
    // The container keeps the stdio of `create`: none that the test would wait on.
    let created = on_unified(&f, &["create", "--bundle", &bundle, &id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(created.success());
    ok(&cli_on_unified(&f, &["start", &id]));
    assert_eq!(
        ok(&cli_on_unified(&f, &["exec", &id, "sh", "-c", probe])),
        "0::/\nend\n"
    );
    ok(&cli_on_unified(&f, &["delete", "--force", &id]));
    let _ = std::fs::remove_dir(
        CgroupRoot::host()
            .expect("cgroup v2 mounted")
            .path()
            .join("berth-test"),
    );
}

/// Whether a `sleep SECONDS` of this test still runs as `pid` (a zombie, or a pid reused by
/// anything else, does not count).
fn sleeping(pid: i32, seconds: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c == format!("sleep\0{seconds}\0").as_bytes())
}

/// Waits (bounded) until `pid` runs `sleep SECONDS`: the shell writes `$!` right after its
/// fork, possibly before the child has executed sleep.
fn wait_sleeping(pid: i32, seconds: &str) -> bool {
    for _ in 0..500 {
        if sleeping(pid, seconds) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// Waits (bounded) for the pid the container wrote into `file`.
fn pid_in(file: &std::path::Path) -> i32 {
    for _ in 0..500 {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no pid in {}", file.display());
}

#[test]
fn without_its_own_pid_namespace_a_container_dies_whole_through_its_cgroup() {
    CgroupRoot::host().expect("cgroup v2 mounted");
    let mut f = Fixture::new();
    let out = f.dir.join("pids");
    std::fs::create_dir_all(&out).unwrap();
    f.bind(&out, "/out");
    let namespaces = f.config["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "pid");

    // Running: `delete --force` kills the init and the process it left in the background.
    f.sh("sleep 4001 & echo $! > /out/running; exec sleep 4001");
    let id = unique("hostpid");
    f.config["linux"]["cgroupsPath"] = json!(format!("/berth-test/{id}"));
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    let background = pid_in(&out.join("running"));
    // Its pid is the host's: there is no namespace of its own to die with.
    assert!(wait_sleeping(background, "4001"));
    ok(&f.cli(&["delete", "--force", &id]));
    assert!(!sleeping(background, "4001"));

    // Stopped: the init exited, what it started lives on until `delete`.
    f.sh("sleep 4002 & echo $! > /out/stopped");
    let id = unique("hostpid-stopped");
    f.config["linux"]["cgroupsPath"] = json!(format!("/berth-test/{id}"));
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    let background = pid_in(&out.join("stopped"));
    f.wait_status(&id, "stopped");
    assert!(wait_sleeping(background, "4002"), "outlived its init");
    ok(&f.cli(&["delete", &id]));
    assert!(!sleeping(background, "4002"));
    let _ = std::fs::remove_dir(
        CgroupRoot::host()
            .expect("cgroup v2 mounted")
            .path()
            .join("berth-test"),
    );
}
