//! berth-init as PID 1, inside fresh pid, mount, UTS and network namespaces (the host is not
//! touched): early mounts, hostname from machine.toml, loopback up, units started, the API on
//! /run/berth/api.sock, and SIGTERM ending in an ordered stop and reboot(2) power-off (which
//! in a pid namespace kills its init with SIGINT).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{children_of, get_at, temp_dir, DEADLINE};

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pid1_boots_supervises_and_powers_off_in_namespaces() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root for namespaces");
        return;
    }
    let dir = temp_dir("pid1");
    std::fs::write(
        dir.join("units/sleeper.toml"),
        "[container]\ncommand = [\"sleep\", \"300\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("machine.toml"), "hostname = \"berth-pid1-test\"\n").unwrap();
    // /var/lib is covered by a tmpfs inside the private mount namespace only.
    let script = format!(
        "mount -t tmpfs tmpfs /var/lib && mkdir -p /var/lib/berth/units && \
         cp {d}/units/* /var/lib/berth/units/ && cp {d}/machine.toml /var/lib/berth/ && exec {bin}",
        d = dir.display(),
        bin = env!("CARGO_BIN_EXE_berth-init")
    );
    let mut unshare = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--net",
            "--ipc",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let outer = unshare.id() as i32;
    let guard = KillOnDrop(outer);

    let init = wait_for("berth-init in the namespace", || {
        children_of(outer)
            .into_iter()
            .find(|(_, _, comm)| comm == "berth-init")
            .map(|(p, _, _)| p)
    });
    let socket = std::path::PathBuf::from(format!("/proc/{init}/root/run/berth/api.sock"));
    let system = wait_for("the API", || get_at(&socket, "/v1/system"));
    assert_eq!(system["mode"], "pid1");
    assert_eq!(system["hostname"], "berth-pid1-test");
    let unit = wait_for("sleeper running", || {
        get_at(&socket, "/v1/units/sleeper").filter(|u| u["state"] == "running")
    });
    assert!(unit["pid"].as_i64().unwrap() > 1);

    let mounts = std::fs::read_to_string(format!("/proc/{init}/mounts")).unwrap();
    for (fs, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devpts", "/dev/pts"),
        ("tmpfs", "/dev/shm"),
        ("tmpfs", "/run"),
        ("cgroup2", "/sys/fs/cgroup"),
    ] {
        assert!(
            mounts
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target)
                    && l.split_whitespace().nth(2) == Some(fs)),
            "{fs} on {target} missing:\n{mounts}"
        );
    }
    let lo = std::fs::read_to_string(format!("/proc/{init}/root/sys/class/net/lo/flags")).unwrap();
    let flags = i64::from_str_radix(lo.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is not up: {lo}");

    // SIGTERM: ordered stop, then reboot(2) power-off, which ends the pid namespace.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = unshare.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < DEADLINE, "berth-init did not power off");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::mem::forget(guard);
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Killing the namespace's init (unshare's child) ends every process inside.
        for (child, _, _) in children_of(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
