//! cgroups on the host's real v2 hierarchy (root). On this hybrid host v2 has no resource
//! controllers, so limits must come back as `Unavailable`; where controllers exist they apply.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_runtime::cgroups::{CgroupError, CgroupRoot, Controller, Limit, Resources};
use std::process::Command;

fn unique(name: &str) -> String {
    format!("berth-test/{name}-{}", std::process::id())
}

#[test]
fn real_cgroup_lifecycle() {
    let root = CgroupRoot::host().expect("cgroup v2 mounted");
    let cg = root.create(&unique("life")).unwrap();
    let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = child.id() as i32;
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    assert!(cg.is_populated().unwrap());
    let stats = cg.stats().unwrap();
    assert!(stats.cpu_usage_usec.is_some());

    let limits = Resources {
        memory_max: Some(Limit::Value(64 << 20)),
        ..Resources::default()
    };
    if cg.controllers().unwrap().contains(Controller::Memory) {
        cg.apply(&limits).unwrap();
        assert_eq!(
            std::fs::read_to_string(cg.path().join("memory.max"))
                .unwrap()
                .trim(),
            "67108864"
        );
    } else {
        assert!(matches!(
            cg.apply(&limits),
            Err(CgroupError::Unavailable {
                controller: Controller::Memory,
                ..
            })
        ));
    }

    cg.kill().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    cg.remove().unwrap();
    assert!(!cg.path().exists());
    let _ = std::fs::remove_dir(root.path().join("berth-test"));
}
