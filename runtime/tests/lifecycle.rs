//! Lifecycle state transitions and every misuse error of the CLI (root, busybox bundle).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;

#[test]
fn create_start_kill_delete_walks_the_states() {
    let mut f = Fixture::new();
    f.sh("echo started > /out/mark; exec sleep 60");
    let out = f.dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    f.bind(&out, "/out");
    let id = unique("life");
    f.create(&id);
    let st = f.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], json!(id));
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!out.join("mark").exists(), "nothing runs before start");
    assert!(ok(&f.cli(&["list"])).contains(&id));
    ok(&f.cli(&["start", &id]));
    assert_eq!(wait_file(&out.join("mark")), "started\n");
    assert_eq!(f.status(&id), "running");
    let pids: Vec<i64> =
        serde_json::from_str(&ok(&f.cli(&["ps", "--format", "json", &id]))).unwrap();
    assert!(pids.contains(&pid), "{pids:?}");
    ok(&f.cli(&["kill", &id, "KILL"]));
    f.wait_status(&id, "stopped");
    ok(&f.cli(&["delete", &id]));
    let gone = f.cli(&["state", &id]);
    assert!(
        !gone.status.success() && stderr(&gone).contains("does not exist"),
        "{}",
        stderr(&gone)
    );
    assert!(!f.root.join(&id).exists());
}

#[test]
fn run_reports_the_exit_code_and_cleans_up() {
    let mut f = Fixture::new();
    f.sh("echo out; echo err >&2; exit 3");
    let id = unique("run");
    let o = f.run(&id);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(stdout(&o), "out\n");
    assert_eq!(stderr(&o), "err\n");
    assert!(!f.root.join(&id).exists(), "state removed after run");
}

#[test]
fn exec_runs_inside_the_running_container() {
    let mut f = Fixture::new();
    f.args(&["sleep", "60"]);
    f.config["hostname"] = json!("exec-host");
    let id = unique("exec");
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    let o = f.cli(&["exec", &id, "sh", "-c", "hostname; echo $FOO; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(stdout(&o), "exec-host\n\n");
    let o = f.cli(&[
        "exec",
        "--env",
        "FOO=bar",
        "--user",
        "1000:1000",
        &id,
        "sh",
        "-c",
        "echo $FOO; id -u",
    ]);
    assert_eq!(ok(&o), "bar\n1000\n");
    let o = f.cli(&["exec", &id, "no-such-program"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no-such-program"),
        "{}",
        stderr(&o)
    );
    ok(&f.cli(&["delete", "--force", &id]));
}

#[test]
fn misuse_errors_are_clear_and_change_nothing() {
    let mut f = Fixture::new();
    f.args(&["sleep", "60"]);
    let id = unique("misuse");
    f.create(&id);
    let before = std::fs::read(f.root.join(&id).join("state.json")).unwrap();

    // Duplicate id.
    let o = f.cli(&["create", "--bundle", f.bundle.to_str().unwrap(), &id]);
    assert!(
        !o.status.success() && stderr(&o).contains(&format!("container `{id}` already exists")),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(f.root.join(&id).join("state.json")).unwrap(),
        before
    );
    assert_eq!(f.status(&id), "created");

    ok(&f.cli(&["start", &id]));
    // Start of a container that is not created.
    let o = f.cli(&["start", &id]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("cannot start container")
            && stderr(&o).contains("running"),
        "{}",
        stderr(&o)
    );
    // Delete of a running container without --force.
    let o = f.cli(&["delete", &id]);
    assert!(
        !o.status.success() && stderr(&o).contains("is running") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(f.status(&id), "running");
    ok(&f.cli(&["kill", &id, "SIGKILL"]));
    f.wait_status(&id, "stopped");
    // Kill of a stopped container.
    let o = f.cli(&["kill", &id, "TERM"]);
    assert!(
        !o.status.success()
            && stderr(&o).contains("cannot kill container")
            && stderr(&o).contains("stopped"),
        "{}",
        stderr(&o)
    );
    ok(&f.cli(&["delete", &id]));

    // Unknown container, bad signal.
    let o = f.cli(&["start", "nope"]);
    assert!(!o.status.success() && stderr(&o).contains("container `nope` does not exist"));
    let o = f.cli(&["kill", &id, "SIGNOPE"]);
    assert!(!o.status.success() && stderr(&o).contains("unknown signal"));
}

#[test]
fn bad_bundles_are_named_and_leave_nothing() {
    let mut f = Fixture::new();
    let id = unique("bad");
    // Missing bundle.
    let missing = f.dir.join("no-such-bundle");
    let o = f.cli(&["create", "--bundle", missing.to_str().unwrap(), &id]);
    assert!(
        !o.status.success() && stderr(&o).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    // Malformed JSON and a field of the wrong type: the path and the field are named.
    std::fs::write(
        f.bundle.join("config.json"),
        "{\"ociVersion\": \"1.0.2\", \"process\": {\"args\": 5}}",
    )
    .unwrap();
    let o = f.cli(&["create", "--bundle", f.bundle.to_str().unwrap(), &id]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("config.json") && e.contains("process.args"),
        "{e}"
    );
    std::fs::write(f.bundle.join("config.json"), "{not json").unwrap();
    let o = f.cli(&["create", "--bundle", f.bundle.to_str().unwrap(), &id]);
    assert!(
        !o.status.success() && stderr(&o).contains("config.json") && stderr(&o).contains("line 1"),
        "{}",
        stderr(&o)
    );
    // Valid JSON that cannot run.
    f.config["process"]["args"] = json!([]);
    f.write_config();
    let o = f.cli(&["create", "--bundle", f.bundle.to_str().unwrap(), &id]);
    assert!(
        !o.status.success() && stderr(&o).contains("`process.args`"),
        "{}",
        stderr(&o)
    );
    f.config["process"]["args"] = json!(["no-such-program"]);
    let o = f.run(&id);
    assert!(
        !o.status.success() && stderr(&o).contains("no-such-program"),
        "{}",
        stderr(&o)
    );
    // Nothing was left behind.
    assert!(!f.root.join(&id).exists());
    assert!(ok(&f.cli(&["list", "-q"])).trim().is_empty());
}

#[test]
fn kill_delivers_the_signal() {
    let mut f = Fixture::new();
    let out = f.dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    f.bind(&out, "/out");
    f.sh("trap 'echo got-usr1 > /out/sig; exit 0' USR1; echo ready > /out/ready; while true; do sleep 0.05; done");
    let id = unique("sig");
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    wait_file(&out.join("ready"));
    ok(&f.cli(&["kill", &id, "USR1"]));
    assert_eq!(wait_file(&out.join("sig")), "got-usr1\n");
    f.wait_status(&id, "stopped");
    ok(&f.cli(&["delete", &id]));
}
