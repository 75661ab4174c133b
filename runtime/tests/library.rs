//! The library API berth-init uses: a spec from unit settings, launch with caller-owned
//! stdio, wait on the init as a child, exec a health check, stats, kill, delete. One test
//! only: cloning needs a single-threaded caller, so nothing else may run in this process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use berth_runtime::builder::{build_spec, ContainerSettings, ImageConfig};
use berth_runtime::cgroups::CgroupRoot;
use berth_runtime::{Bundle, ExecOptions, Runtime};
use common::*;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::AsRawFd;

fn wait(pid: i32) -> i32 {
    match waitpid(Pid::from_raw(pid), None).unwrap() {
        WaitStatus::Exited(_, code) => code,
        other => panic!("{other:?}"),
    }
}

#[test]
fn supervisor_api_end_to_end() {
    let f = Fixture::new();
    let runtime = Runtime::new(&f.root);
    let log = f.dir.join("unit.log");
    let out = std::fs::File::create(&log).unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let stdio = [null.as_raw_fd(), out.as_raw_fd(), out.as_raw_fd()];

    // A one-shot container: output to the caller's file, exit code through waitpid.
    let settings = ContainerSettings {
        hostname: "unit".into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo hello from $(hostname) as $(id -u):$(id -g) $GREETING; exit 4".into(),
        ],
        env: [("GREETING".to_string(), "hi".to_string())]
            .into_iter()
            .collect(),
        user: Some("user".into()),
        image: ImageConfig {
            env: vec!["PATH=/bin".into()],
            ..ImageConfig::default()
        },
        cgroup: Some(format!("/berth-test/{}", unique("lib"))),
        ..ContainerSettings::default()
    };
    let spec = build_spec(&settings, &f.rootfs()).unwrap();
    let bundle = Bundle::from_spec(&f.bundle, spec).unwrap();
    let id = unique("oneshot");
    f.track(&id);
    let mut seen_pid = 0;
    let c = runtime
        .launch(&id, &bundle, stdio, |c| {
            seen_pid = c.pid();
            Ok(())
        })
        .unwrap();
    assert_eq!(c.pid(), seen_pid);
    assert_eq!(wait(c.pid()), 4);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "hello from unit as 1000:1000 hi\n"
    );
    runtime.load(&id).unwrap().delete(false).unwrap();

    // A service: health check by exec, stats from its cgroup, then kill and delete.
    let mut settings = settings.clone();
    settings.command = vec!["sleep".into(), "60".into()];
    settings.user = None;
    let cgroup_rel = format!("/berth-test/{}", unique("svc"));
    settings.cgroup = Some(cgroup_rel.clone());
    let bundle = Bundle::from_spec(&f.bundle, build_spec(&settings, &f.rootfs()).unwrap()).unwrap();
    let id = unique("service");
    f.track(&id);
    let mut c = runtime.launch(&id, &bundle, stdio, |_| Ok(())).unwrap();
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
