//! The library API berth-init uses: create with caller-owned stdio and start over the
//! channel, wait on the init as a child, exec a health check, stats, kill, delete. One test
//! only: cloning needs a single-threaded caller, so nothing else may run in this process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use berth_runtime::cgroups::CgroupRoot;
use berth_runtime::{Bundle, Container, CreateOptions, ExecOptions, Runtime, StartMode};
use common::*;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde_json::json;
use std::os::fd::{AsRawFd, RawFd};

/// Creates container `id` with `stdio`, checks its init is a child of ours, and starts it.
fn create_and_start(runtime: &Runtime, f: &Fixture, id: &str, stdio: [RawFd; 3]) -> Container {
    f.write_config();
    f.track(id);
    let bundle = Bundle::load(&f.bundle).unwrap();
    let opts = CreateOptions {
        id,
        console_socket: None,
        pid_file: None,
        no_pivot: false,
        stdio: Some(stdio),
        start: StartMode::Channel,
        preserve_fds: 0,
        no_new_keyring: false,
    };
    let mut c = runtime.create(&bundle, &opts).unwrap();
    assert!(c.pid() > 0);
    c.start().unwrap();
    c
}

fn wait(pid: i32) -> i32 {
    match waitpid(Pid::from_raw(pid), None).unwrap() {
        WaitStatus::Exited(_, code) => code,
        other => panic!("{other:?}"),
    }
}

#[test]
fn supervisor_api_end_to_end() {
    let mut f = Fixture::new();
    let runtime = Runtime::new(&f.root);
    let log = f.dir.join("unit.log");
    let out = std::fs::File::create(&log).unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let stdio = [null.as_raw_fd(), out.as_raw_fd(), out.as_raw_fd()];

    // A one-shot container: output to the caller's file, exit code through waitpid.
    f.sh("echo hello from $(hostname) as $(id -u):$(id -g) $GREETING; exit 4");
    f.config["hostname"] = json!("unit");
    f.config["process"]["env"] = json!(["PATH=/bin", "GREETING=hi"]);
    f.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    f.config["linux"]["cgroupsPath"] = json!(format!("/berth-test/{}", unique("lib")));
    let id = unique("oneshot");
    let c = create_and_start(&runtime, &f, &id, stdio);
    assert_eq!(wait(c.pid()), 4);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "hello from unit as 1000:1000 hi\n"
    );
    runtime.load(&id).unwrap().delete(false).unwrap();

    // A service: health check by exec, stats from its cgroup, then kill and delete.
    f.args(&["sleep", "60"]);
    f.config["process"]["user"] = json!({"uid": 0, "gid": 0});
    let cgroup_rel = format!("/berth-test/{}", unique("svc"));
    f.config["linux"]["cgroupsPath"] = json!(cgroup_rel);
    let id = unique("service");
    let mut c = create_and_start(&runtime, &f, &id, stdio);
    let mut check = c.state().config.process().clone().unwrap();
    check.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "test $(hostname) = unit".into(),
    ]));
    let health = c
        .exec(&ExecOptions {
            process: check.clone(),
            console_socket: None,
            pid_file: None,
            stdio: Some(stdio),
            preserve_fds: 0,
        })
        .unwrap();
    assert_eq!(wait(health), 0);
    check.set_args(Some(vec!["false".into()]));
    let failing = c
        .exec(&ExecOptions {
            process: check,
            console_socket: None,
            pid_file: None,
            stdio: Some(stdio),
            preserve_fds: 0,
        })
        .unwrap();
    assert_eq!(wait(failing), 1);
    let stats = c.stats().unwrap();
    assert!(stats.cpu_usage_usec.is_some());
    let cg_path = CgroupRoot::host()
        .unwrap()
        .path()
        .join(cgroup_rel.trim_start_matches('/'));
    assert!(cg_path.exists());
    c.kill(nix::sys::signal::Signal::SIGKILL, false).unwrap();
    match waitpid(Pid::from_raw(c.pid()), None).unwrap() {
        WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _) => {}
        other => panic!("{other:?}"),
    }
    runtime.load(&id).unwrap().delete(false).unwrap();
    assert!(!cg_path.exists());
    let _ = std::fs::remove_dir(CgroupRoot::host().unwrap().path().join("berth-test"));
}
