//! What a container must never get from the host that starts it: the caller's open
//! descriptors, a write to a sysctl the kernel keeps once for the whole host, the caller's
//! session keyring.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};

/// A host sysctl put back as it was on drop, whatever the test saw.
struct HostSysctl {
    path: &'static str,
    was: String,
}

impl HostSysctl {
    fn note(path: &'static str) -> HostSysctl {
        HostSysctl {
            path,
            was: std::fs::read_to_string(path).unwrap(),
        }
    }
    fn now(&self) -> String {
        std::fs::read_to_string(self.path).unwrap()
    }
}

impl Drop for HostSysctl {
    fn drop(&mut self) {
        if self.now() != self.was {
            let _ = std::fs::write(self.path, &self.was);
        }
    }
}

/// `create` with its stdio on files (a created container keeps the stdio of `create`, so
/// pipes would stay open until it is deleted): the exit status and stderr.
fn create_with_files(f: &Fixture, id: &str) -> (std::process::ExitStatus, String) {
    f.write_config();
    f.track(id);
    let err = f.dir.join(format!("{id}.err"));
    let status = Command::new(BIN)
        .args(["--root", f.root.to_str().unwrap(), "create", "--bundle"])
        .args([f.bundle.to_str().unwrap(), id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    (status, std::fs::read_to_string(&err).unwrap())
}

/// Asserts that `create` refused the configuration before making anything: no state, no
/// cgroup, the key named in the error.
fn refused_at_create(f: &Fixture, id: &str, key: &str) {
    let (status, err) = create_with_files(f, id);
    assert!(!status.success(), "create accepted sysctl {key}");
    assert!(
        err.contains("linux.sysctl") && err.contains(&format!("`{key}`")),
        "{err}"
    );
    assert!(!f.root.join(id).exists(), "state left for {id}");
    assert!(!Path::new("/sys/fs/cgroup/berth").join(id).exists());
}

#[test]
fn host_global_sysctls_are_refused_at_create_and_the_host_keeps_its_value() {
    let host = HostSysctl::note("/proc/sys/kernel/printk_ratelimit");
    let other = (host.was.trim().parse::<u32>().unwrap() + 7).to_string();
    let mut f = Fixture::new();
    f.args(&["true"]);
    for key in [
        "kernel.printk_ratelimit",
        // Under `net.`, the container's own network namespace, but climbing out to the host's.
        "net.ipv4/../../kernel/printk_ratelimit",
    ] {
        f.config["linux"]["sysctl"] = json!({ key: other });
        refused_at_create(&f, &unique("sysctl-host"), key);
        assert_eq!(host.now(), host.was, "{key} changed the host");
    }
    // A namespaced sysctl is refused too when the container shares that namespace.
    let forward = HostSysctl::note("/proc/sys/net/ipv4/ip_forward");
    let flipped = if forward.was.trim() == "1" { "0" } else { "1" };
    f.config["linux"]["sysctl"] = json!({ "net.ipv4.ip_forward": flipped });
    let ns = f.config["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "network");
    refused_at_create(&f, &unique("sysctl-hostnet"), "net.ipv4.ip_forward");
    assert_eq!(forward.now(), forward.was);
}

#[test]
fn namespaced_sysctls_reach_the_containers_own_copy() {
    let forward = HostSysctl::note("/proc/sys/net/ipv4/ip_forward");
    let shmmni = HostSysctl::note("/proc/sys/kernel/shmmni");
    let mut f = Fixture::new();
    f.sh("cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni");
    let flipped = if forward.was.trim() == "1" { "0" } else { "1" };
    f.config["linux"]["sysctl"] = json!({
        "net.ipv4.ip_forward": flipped,
        "kernel/shmmni": "1234",
    });
    let out = ok(&f.run(&unique("sysctl-ns")));
    assert_eq!(out, format!("{flipped}\n1234\n"));
    assert_eq!(forward.now(), forward.was);
    assert_eq!(shmmni.now(), shmmni.was);
}
