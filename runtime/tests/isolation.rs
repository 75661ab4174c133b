//! What a process sees from inside: identity, capabilities, hostname, read-only root, masked
//! paths, user namespace mapping, seccomp, rlimits, joined namespaces, the console socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;

#[test]
fn uid_gid_groups_and_capabilities_seen_from_inside() {
    let mut f = Fixture::new();
    f.sh("id -u; id -g; id -G; grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status; grep NoNewPrivs /proc/self/status");
    f.config["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20]});
    let caps = json!(["CAP_NET_BIND_SERVICE", "CAP_KILL"]);
    f.config["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps});
    f.config["process"]["noNewPrivileges"] = json!(true);
    let out = ok(&f.run(&unique("ids")));
    // CAP_KILL is bit 5, CAP_NET_BIND_SERVICE bit 10: 0x420.
    assert_eq!(
        out,
        "1000\n1001\n1001 10 20\nCapPrm:\t0000000000000420\nCapEff:\t0000000000000420\nCapBnd:\t0000000000000420\nCapAmb:\t0000000000000420\nNoNewPrivs:\t1\n"
    );
}

#[test]
fn hostname_is_the_containers() {
    let mut f = Fixture::new();
    f.args(&["hostname"]);
    f.config["hostname"] = json!("berth-box");
    assert_eq!(ok(&f.run(&unique("host"))), "berth-box\n");
}

#[test]
fn read_only_root_refuses_writes() {
    let mut f = Fixture::new();
    f.sh("touch /tmp/x && echo wrote; touch /dev/shm/ok && echo tmpfs-ok");
    f.config["root"]["readonly"] = json!(true);
    let o = f.run(&unique("ro"));
    assert_eq!(stdout(&o), "tmpfs-ok\n", "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    assert!(!f.rootfs().join("tmp/x").exists());
}

#[test]
fn masked_and_read_only_paths() {
    let mut f = Fixture::new();
    std::fs::write(f.rootfs().join("etc/secret"), "s3cret").unwrap();
    std::fs::create_dir_all(f.rootfs().join("etc/secrets.d")).unwrap();
    std::fs::write(f.rootfs().join("etc/secrets.d/key"), "k").unwrap();
    std::fs::create_dir_all(f.rootfs().join("data")).unwrap();
    f.sh("cat /etc/secret | wc -c; ls /etc/secrets.d | wc -l; touch /data/x 2>/dev/null || echo data-ro; touch /data2/x && echo rw");
    std::fs::create_dir_all(f.rootfs().join("data2")).unwrap();
    f.config["linux"]["maskedPaths"] = json!([
        "/etc/secret",
        "/etc/secrets.d",
        "/proc/kcore",
        "/does/not/exist"
    ]);
    f.config["linux"]["readonlyPaths"] = json!(["/data", "/also/missing"]);
    assert_eq!(
        ok(&f.run(&unique("mask")))
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "0", "data-ro", "rw"]
    );
}

#[test]
fn user_namespace_maps_container_root_to_an_unprivileged_host_uid() {
    let mut f = Fixture::new();
    f.sh("cat /proc/self/uid_map /proc/self/gid_map; id -u; sleep 60");
    let ns = f.config["linux"]["namespaces"].as_array_mut().unwrap();
    ns.push(json!({"type": "user"}));
    f.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    f.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    // As with any runtime, the root filesystem belongs to the mapped root.
    let st = std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(f.rootfs())
        .status()
        .unwrap();
    assert!(st.success());
    let id = unique("userns");
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    let pid = f.state(&id)["pid"].as_i64().unwrap();
    let mut out = String::new();
    for _ in 0..500 {
        out = f.output(&id);
        if out.lines().count() >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        fields,
        ["0", "100000", "65536", "0", "100000", "65536", "0"],
        "{out}"
    );
    // From the host the container's root is uid 100000.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "100000"),
        "{uid_line}"
    );
    ok(&f.cli(&["delete", "--force", &id]));
}

#[test]
fn seccomp_denies_a_blocked_syscall() {
    let mut f = Fixture::new();
    f.sh("mkdir /tmp/a && echo made; mkdir /tmp/b 2>&1; echo done");
    f.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let out = ok(&f.run(&unique("seccomp")));
    assert!(
        !out.contains("made") && out.contains("Operation not permitted") && out.ends_with("done\n"),
        "{out}"
    );
    assert!(!f.rootfs().join("tmp/a").exists());
}

#[test]
fn default_seccomp_profile_refuses_what_the_capabilities_would_allow() {
    let mut f = Fixture::new();
    std::os::unix::fs::symlink("busybox", f.rootfs().join("bin/mount")).unwrap();
    f.sh("mount -t tmpfs none /tmp && echo mounted");
    // The process holds CAP_SYS_ADMIN, so only seccomp can refuse the mount.
    let caps = json!(["CAP_SYS_ADMIN"]);
    f.config["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    assert_eq!(ok(&f.run(&unique("noseccomp"))), "mounted\n");
    let profile_caps: Vec<String> = vec!["CAP_CHOWN".into()];
    f.config["linux"]["seccomp"] =
        serde_json::to_value(berth_runtime::seccomp::default_profile(&profile_caps)).unwrap();
    let o = f.run(&unique("defseccomp"));
    assert!(
        !o.status.success() && stdout(&o).is_empty(),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("permission denied") || stderr(&o).contains("not permitted"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn rlimits_oom_score_and_environment() {
    let mut f = Fixture::new();
    f.sh("ulimit -n; cat /proc/self/oom_score_adj; echo $GREETING; pwd; echo $HOME");
    f.config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 256, "soft": 128}]);
    f.config["process"]["oomScoreAdj"] = json!(500);
    f.config["process"]["env"] = json!(["PATH=/bin", "GREETING=hi"]);
    f.config["process"]["cwd"] = json!("/tmp");
    assert_eq!(ok(&f.run(&unique("rlimit"))), "128\n500\nhi\n/tmp\n/root\n");
}

#[test]
fn namespaces_can_be_joined_by_path() {
    let mut f = Fixture::new();
    f.args(&["sleep", "60"]);
    let a = unique("ns-a");
    f.create(&a);
    let pid = f.state(&a)["pid"].as_i64().unwrap();
    let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let uts = std::fs::read_link(format!("/proc/{pid}/ns/uts")).unwrap();
    let mut g = Fixture::new();
    g.sh("readlink /proc/self/ns/net; readlink /proc/self/ns/uts");
    for ns in g.config["linux"]["namespaces"].as_array_mut().unwrap() {
        match ns["type"].as_str().unwrap() {
            "network" => ns["path"] = json!(format!("/proc/{pid}/ns/net")),
            "uts" => ns["path"] = json!(format!("/proc/{pid}/ns/uts")),
            _ => {}
        }
    }
    g.config.as_object_mut().unwrap().remove("hostname");
    let out = ok(&g.run(&unique("ns-b")));
    assert_eq!(out, format!("{}\n{}\n", net.display(), uts.display()));
    ok(&f.cli(&["delete", "--force", &a]));
}

#[test]
fn terminal_goes_to_the_console_socket() {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut f = Fixture::new();
    f.sh("test -t 0 && test -t 1 && echo on-a-tty");
    f.config["process"]["terminal"] = json!(true);
    f.write_config();
    let sock = f.dir.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let id = unique("tty");
    f.track(&id);
    let mut child = std::process::Command::new(BIN)
        .args([
            "--root",
            f.root.to_str().unwrap(),
            "run",
            "--bundle",
            f.bundle.to_str().unwrap(),
            "--console-socket",
            sock.to_str().unwrap(),
            &id,
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut master = None;
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            master = Some(unsafe { std::fs::File::from_raw_fd(fds[0]) });
        }
    }
    let mut master = master.expect("a pty master fd");
    let mut out = String::new();
    let mut chunk = [0u8; 256];
    // Read until the slave closes (EIO) after the container exits.
    while let Ok(n) = master.read(&mut chunk) {
        if n == 0 {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    assert!(child.wait().unwrap().success());
    assert!(out.contains("on-a-tty"), "{out:?}");
}
