//! OCI hooks run in order, each with the state on stdin; createContainer and startContainer
//! run in the container's namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;

#[test]
fn hooks_run_in_order_with_the_state() {
    let mut f = Fixture::new();
    let log_dir = f.dir.join("hooklog");
    std::fs::create_dir_all(&log_dir).unwrap();
    let log = log_dir.join("log");
    let host = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} >> {}; cat > {}/{name}.json", log.display(), log_dir.display())]});
    f.bind(&log_dir, "/hooklog");
    f.sh("echo process >> /hooklog/log");
    f.config["hooks"] = json!({
        "createRuntime": [host("createRuntime")],
        // Resolved in the runtime's mount namespace view before pivot_root: host paths.
        "createContainer": [host("createContainer")],
        // After pivot_root: the container's busybox and its view of the log.
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo startContainer:$(hostname) >> /hooklog/log"]}],
        "poststart": [host("poststart")],
        "poststop": [host("poststop")],
    });
    f.config["hostname"] = json!("hooked");
    let id = unique("hooks");
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    f.wait_status(&id, "stopped");
    ok(&f.cli(&["delete", &id]));
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // The process may write before or after poststart; everything else is ordered.
    let without_process: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| *l != "process")
        .collect();
    assert_eq!(
        without_process,
        [
            "createRuntime",
            "createContainer",
            "startContainer:hooked",
            "poststart",
            "poststop"
        ],
        "{lines:?}"
    );
    assert!(lines.contains(&"process".to_string()));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(log_dir.join("createRuntime.json")).unwrap())
            .unwrap();
    assert_eq!(state["id"], json!(id));
    assert!(state["pid"].as_i64().unwrap() > 0);
    assert_eq!(state["bundle"], json!(f.bundle));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(log_dir.join("poststop.json")).unwrap()).unwrap();
    assert_eq!(state["status"], "stopped");
}

#[test]
fn a_failing_create_hook_fails_create_and_leaves_nothing() {
    let mut f = Fixture::new();
    f.args(&["true"]);
    f.config["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    f.write_config();
    let id = unique("badhook");
    f.track(&id);
    let o = f.cli(&["create", "--bundle", f.bundle.to_str().unwrap(), &id]);
    assert!(
        !o.status.success() && stderr(&o).contains("createRuntime hook 0 (/bin/false) failed"),
        "{}",
        stderr(&o)
    );
    assert!(!f.root.join(&id).exists());
}
