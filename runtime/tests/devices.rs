//! Device rules on the host's real cgroup v2 hierarchy (root). This hybrid host's v2 tree has
//! no controllers, yet it runs cgroup eBPF programs, so device rules are enforced here for
//! real: a device the rules do not allow gives EPERM inside the container, the defaults keep
//! working, `update` swaps the program, and a runtime that cannot load the program refuses
//! the container instead of running it unfiltered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use berth_runtime::bpf::{BpfSys, Kernel, ATTACH_CGROUP_DEVICE};
use berth_runtime::cgroups::CgroupRoot;
use common::*;
use serde_json::json;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// /dev/fuse: a device outside the default list whose open needs no capability.
const FUSE: &str = "c 10 229";
const DENIED: &str = "Operation not permitted";

/// A fixture whose container may mknod, with the applets these tests use.
fn fixture() -> Fixture {
    let mut f = Fixture::new();
    for a in ["mknod", "rm", "head"] {
        std::os::unix::fs::symlink("busybox", f.rootfs().join("bin").join(a)).unwrap();
    }
    for set in ["bounding", "effective", "permitted"] {
        f.config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_MKNOD"));
    }
    f.config["process"]["args"] = json!(["true"]);
    f
}

/// Ids of the device programs attached to a container's cgroup.
fn device_programs(id: &str) -> Vec<u32> {
    let dir = std::fs::File::open(cgroup_of(id)).unwrap();
    Kernel
        .prog_query(dir.as_fd(), ATTACH_CGROUP_DEVICE)
        .unwrap()
}

fn cgroup_of(id: &str) -> PathBuf {
    CgroupRoot::host()
        .expect("cgroup v2 mounted")
        .path()
        .join("berth")
        .join(id)
}

#[test]
fn a_device_outside_the_rules_is_denied_and_the_defaults_work() {
    let mut f = fixture();
    // The spec denies everything (as `spec` writes it); the runtime adds the defaults.
    assert_eq!(
        f.config["linux"]["resources"]["devices"],
        json!([{"allow": false, "access": "rwm"}])
    );
    f.sh(&format!(
        "mknod /tmp/fuse {FUSE} && echo mknod-ok; \
         (exec 3< /tmp/fuse) && echo fuse-open; \
         echo data > /dev/null && echo null-ok; \
         head -c 3 /dev/zero | wc -c; head -c 5 /dev/urandom | wc -c"
    ));
    let o = f.run(&unique("devdeny"));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(out, "mknod-ok\nnull-ok\n3\n5\n", "{err}");
    assert!(err.contains(&format!("/tmp/fuse: {DENIED}")), "{err}");

    // The same node, allowed for reading only: read works, read-write does not.
    let mut f = fixture();
    f.config["linux"]["resources"]["devices"] = json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "r"}
    ]);
    f.sh(&format!(
        "mknod /tmp/fuse {FUSE}; (exec 3< /tmp/fuse) && echo read-ok; \
         (exec 3<> /tmp/fuse) && echo read-write-ok; echo end"
    ));
    let o = f.run(&unique("devread"));
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(out, "read-ok\nend\n", "{err}");
    assert!(err.contains(DENIED), "{err}");

    // A spec that denies /dev/null cannot take it away: the defaults come after, as in runc.
    let mut f = fixture();
    f.config["linux"]["resources"]["devices"] = json!([
        {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    ]);
    f.sh("echo data > /dev/null && echo null-ok");
    assert_eq!(ok(&f.run(&unique("devnull"))), "null-ok\n");
}

#[test]
fn update_replaces_the_device_program() {
    let mut f = fixture();
    f.sh(&format!("mknod /tmp/fuse {FUSE}; exec sleep 60"));
    let id = unique("devupdate");
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    wait_file_exists(&f.rootfs().join("tmp/fuse"));
    let probe = || f.cli(&["exec", &id, "sh", "-c", "(exec 3<> /tmp/fuse) && echo open"]);
    let before = device_programs(&id);
    assert_eq!(before.len(), 1, "one program attached: {before:?}");
    let o = probe();
    assert!(stderr(&o).contains(DENIED), "{}", stderr(&o));

    let resources = f.dir.join("resources.json");
    std::fs::write(
        &resources,
        json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}
        ]})
        .to_string(),
    )
    .unwrap();
    ok(&f.cli(&["update", "--resources", resources.to_str().unwrap(), &id]));
    assert_eq!(ok(&probe()), "open\n");
    let after = device_programs(&id);
    assert_eq!(after.len(), 1, "the old program is detached: {after:?}");
    assert_ne!(after, before);
    let state = std::fs::read_to_string(f.root.join(&id).join("state.json")).unwrap();
    assert!(state.contains("229"), "the new rules are recorded: {state}");

    // A bad rule changes nothing.
    std::fs::write(
        &resources,
        r#"{"devices": [{"allow": true, "access": "rwx"}]}"#,
    )
    .unwrap();
    let o = f.cli(&["update", "--resources", resources.to_str().unwrap(), &id]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("devices[0].access"), "{}", stderr(&o));
    assert_eq!(device_programs(&id), after);

    ok(&f.cli(&["kill", &id, "KILL"]));
    f.wait_status(&id, "stopped");
    let o = f.cli(&["update", "--resources", resources.to_str().unwrap(), &id]);
    assert!(stderr(&o).contains("cannot update"), "{}", stderr(&o));
    ok(&f.cli(&["delete", &id]));
    assert!(!cgroup_of(&id).exists());
}

/// `run`s the fixture's bundle as `id` with bpf(2) failing with `errno`.
fn run_without_bpf(f: &Fixture, id: &str, errno: i32) -> std::process::Output {
    f.write_config();
    f.track(id);
    let mut cmd = Command::new(BIN);
    cmd.args(["--root", f.root.to_str().unwrap(), "run", "--bundle"])
        .arg(&f.bundle)
        .arg(id);
    without_bpf(&mut cmd, errno);
    cmd.output().unwrap()
}

/// A seccomp filter making bpf(2) fail with `errno`, installed in the child before exec:
/// the runtime then runs as on a kernel without cgroup eBPF.
fn without_bpf(cmd: &mut Command, errno: i32) {
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A == SYS_bpf fall through, else skip one
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: libc::SYS_bpf as u32,
        },
        // return SECCOMP_RET_ERRNO | errno
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x0005_0000 | errno as u32,
        },
        // return SECCOMP_RET_ALLOW
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        },
    ];
    // SAFETY: only prctl(2) between fork and exec; the filter outlives the call because the
    // closure owns it.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, 2, &prog as *const libc::sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn without_cgroup_ebpf_device_rules_are_refused_not_ignored() {
    for (errno, reason) in [(libc::ENOSYS, "no bpf(2)"), (libc::EPERM, "not permitted")] {
        let f = fixture();
        let id = unique("nobpf");
        let o = run_without_bpf(&f, &id, errno);
        let err = stderr(&o);
        assert!(!o.status.success(), "ran without its device filter");
        assert!(
            err.contains("device rules cannot be enforced")
                && err.contains("unavailable")
                && err.contains(reason),
            "{err}"
        );
        assert!(!f.root.join(&id).exists(), "state left behind");
        assert!(!cgroup_of(&id).exists(), "cgroup left behind");
    }

    // Without device rules the same runtime runs the container: the rules were the reason.
    let mut f = fixture();
    f.config["linux"]["resources"]["devices"] = json!([]);
    ok(&run_without_bpf(&f, &unique("nobpf-norules"), libc::ENOSYS));
}

fn wait_file_exists(path: &std::path::Path) {
    for _ in 0..500 {
        if path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}
