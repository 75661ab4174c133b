//! cgroup v2 limits of Berth's kernel, on container units installed by the config drive (from
//! the demo image, which has busybox): a container over its `memory_max` is OOM-killed and
//! restarted per policy, `pids_max` stops a fork bomb, and the container's cgroup counters
//! reflect what it uses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use berth_qemu_tests::{disk_or_skip, Firmware, Vm, VmConfig};

const LIMIT: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);

const USER_DATA: &str = r#"
hostname = "cgroups"

[units]
hog = '''
[unit]
description = "Allocates 64 MiB under a 16 MiB limit"
[container]
image = "berth.local/demo-web:latest"
command = ["sh", "-c", "echo allocating; x=$(yes | head -c 67108864); echo survived"]
[resources]
memory_max = "16M"
[service]
restart = "on-failure"
restart_delay = "1s"
# Two starts, then it is left failed (each OOM cycle is slow under emulation).
start_limit_burst = 2
start_limit_interval = "10m"
'''

bomb = '''
[unit]
description = "Forks 200 sleepers under a limit of 16 tasks"
[container]
image = "berth.local/demo-web:latest"
command = ["sh", "-c", "i=0; while [ $i -lt 200 ]; do sleep 600 & i=$((i+1)); done; echo spawned all; wait"]
[resources]
pids_max = 16
[service]
restart = "never"
'''

steady = '''
[unit]
description = "Holds 8 MiB and one child"
[container]
image = "berth.local/demo-web:latest"
# `sleep` is not the last command, so sh forks it and keeps holding x.
command = ["sh", "-c", "x=$(yes | head -c 8388608); sleep 600; echo ${#x}"]
[resources]
memory_max = "32M"
pids_max = 8
'''
"#;

fn json(out: &str) -> serde_json::Value {
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {out:?}"));
    let end = out.rfind('}').unwrap();
    serde_json::from_str(&out[start..=end]).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

fn read_number(vm: &mut Vm, file: &str) -> u64 {
    let out = vm.run_ok(&format!("cat {file}"), CMD).unwrap();
    out.lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{file}: {out:?}"))
}

#[test]
fn memory_and_pids_limits_hold_and_counters_reflect_usage() {
    let Some((fx, disk_path)) = disk_or_skip("cgroups", None) else {
        return;
    };
    let mut cfg = VmConfig::new(Firmware::Bios, disk_path);
    cfg.extra_drives.push(fx.config_drive(USER_DATA).unwrap());
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for_shell(LIMIT).unwrap();

    // Every cgroup v2 controller of the kernel is there (rdma aside: no InfiniBand; perf_event
    // is implicit on v2 and never listed).
    let controllers = vm
        .run_ok("cat /sys/fs/cgroup/cgroup.controllers", CMD)
        .unwrap();
    for c in ["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "misc"] {
        assert!(
            controllers.split_whitespace().any(|w| w == c),
            "no {c} controller: {controllers}"
        );
    }

    // memory_max: the hog is OOM-killed inside its own cgroup and restarted (on-failure).
    let deadline = Instant::now() + LIMIT;
    let hog = loop {
        let (_, out) = vm.run("berthctl --json show hog", CMD).unwrap();
        let v = json(&out);
        if v["restarts"].as_u64().unwrap_or(0) >= 1 && v["last_exit_code"] == 137 {
            break v;
        }
        assert!(Instant::now() < deadline, "hog never restarted: {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(hog["last_exit"], "killed by signal 9 (SIGKILL)", "{hog}");
    let oom = vm.run_ok("dmesg | grep oom-kill", CMD).unwrap();
    assert!(
        oom.contains("oom_memcg=/containers/hog"),
        "no memcg OOM kill of hog: {oom}"
    );
    // The restart is counted when it is scheduled: the second run's output follows once its
    // container is set up again.
    let deadline = Instant::now() + LIMIT;
    let log = loop {
        let log = vm.run_ok("cat /var/lib/berth/logs/hog.log", CMD).unwrap();
        if log.matches("allocating").count() >= 2 {
            break log;
        }
        assert!(Instant::now() < deadline, "not restarted: {log}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!log.contains("survived"), "{log}");

    // pids_max: the fork bomb stops at its limit; the kernel says why.
    let deadline = Instant::now() + LIMIT;
    loop {
        let (_, out) = vm
            .run("dmesg | grep 'fork rejected by pids controller'", CMD)
            .unwrap();
        if out.contains("/containers/bomb") {
            break;
        }
        assert!(Instant::now() < deadline, "no fork was rejected: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = vm.run_ok("cat /var/lib/berth/logs/bomb.log", CMD).unwrap();
    assert!(log.contains("can't fork"), "{log}");
    assert!(!log.contains("spawned all"), "{log}");

    // Counters: the steady unit's cgroup shows its 8 MiB and its two tasks, under the limits.
    let deadline = Instant::now() + LIMIT;
    let dir = "/sys/fs/cgroup/containers/steady";
    loop {
        let current = read_number(&mut vm, &format!("{dir}/memory.current"));
        if current >= 8 << 20 {
            assert!(current < 32 << 20, "memory.current {current}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "memory.current stays at {current}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(read_number(&mut vm, &format!("{dir}/memory.max")), 32 << 20);
    assert_eq!(read_number(&mut vm, &format!("{dir}/pids.current")), 2);
    assert_eq!(read_number(&mut vm, &format!("{dir}/pids.max")), 8);
    let peak = read_number(&mut vm, &format!("{dir}/memory.peak"));
    assert!(peak >= 8 << 20, "memory.peak {peak}");

    // A process run in the container is in its cgroup from its first instruction (born
    // there), and sees it as its cgroup namespace's root.
    let seen = vm
        .run_ok(
            "berth-runtime --root /run/berth/runtime exec steady cat /proc/self/cgroup",
            CMD,
        )
        .unwrap();
    assert!(seen.lines().any(|l| l.trim() == "0::/"), "{seen}");
    // And the host sees it among the container's processes while it runs.
    let listed = vm
        .run_ok(
            "berth-runtime --root /run/berth/runtime exec steady sleep 30 >/dev/null 2>&1 & \
             (i=0; while [ $i -lt 60 ]; do \
                for p in $(cat /sys/fs/cgroup/containers/steady/cgroup.procs); do \
                  [ \"$(tr '\\0' ' ' < /proc/$p/cmdline)\" = 'sleep 30 ' ] && { echo in-cgroup; exit 0; }; \
                done; sleep 0.5; i=$((i+1)); done; echo missing)",
            CMD,
        )
        .unwrap();
    assert!(listed.contains("in-cgroup"), "{listed}");
}
