//! What a container must never get from the host that starts it: the caller's open
//! descriptors, a write to a sysctl the kernel keeps once for the whole host, the caller's
//! session keyring.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output, Stdio};

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

/// The descriptors from 3 to 9 the container's process holds, and the host file it could
/// read through an inherited directory descriptor 5, in one write.
const SHOW_FDS: &str = r#"o=; for n in 3 4 5 6 7 8 9; do test -e /proc/self/fd/$n && o="$o open $n"; done
s=$(cat /proc/self/fd/5/secret 2>/dev/null); test -n "$s" && o="$o read host $s"
test -n "$LISTEN_FDS" && o="$o LISTEN_FDS=$LISTEN_FDS LISTEN_PID=$LISTEN_PID"
echo "fds:$o end""#;

/// A host directory with a file the container must not read, and two small files to pass.
fn host_files() -> Scratch {
    let s = Scratch::new("berth-fds");
    std::fs::write(s.path("secret"), "s3cret").unwrap();
    std::fs::write(s.path("a"), "A").unwrap();
    s
}

/// The CLI started from a shell that opens `redirs` (`5</dir`) for it, as a caller that
/// forgot a descriptor (or means to pass it) does.
fn cli_with_fds(f: &Fixture, redirs: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let script = format!(r#"{} exec "$@" {redirs}"#, env_assignments(env));
    Command::new("/bin/sh")
        .args(["-c", &script, "sh", BIN, "--root", f.root.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn env_assignments(env: &[(&str, &str)]) -> String {
    env.iter()
        .map(|(k, v)| format!("export {k}={v};"))
        .collect()
}

#[test]
fn inherited_descriptors_do_not_reach_the_container_on_run() {
    let host = host_files();
    let mut f = Fixture::new();
    f.sh(SHOW_FDS);
    f.write_config();
    let bundle = f.bundle.to_str().unwrap().to_string();
    let redirs = format!(
        "3<{} 5<{} 6>>{}",
        host.s("a"),
        host.0.display(),
        host.s("a")
    );
    let id = unique("fds-run");
    f.track(&id);
    let out = cli_with_fds(&f, &redirs, &[], &["run", "--bundle", &bundle, &id]);
    assert_eq!(ok(&out), "fds: end\n");

    // `--preserve-fds 1` passes descriptor 3, and only it.
    let id = unique("fds-preserve");
    f.track(&id);
    let args = ["run", "--preserve-fds", "1", "--bundle", &bundle, &id];
    let out = cli_with_fds(&f, &redirs, &[], &args);
    assert_eq!(ok(&out), "fds: open 3 end\n");

    // Socket activation for this very process: its descriptors come first, then the
    // preserved ones, and the program is told of the activated ones.
    let id = unique("fds-listen");
    f.track(&id);
    let script = format!(
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\" {redirs} 4<{}",
        host.s("a")
    );
    let args = ["run", "--preserve-fds", "1", "--bundle", &bundle, &id];
    let out = Command::new("/bin/sh")
        .args(["-c", &script, "sh", BIN, "--root", f.root.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        ok(&out),
        "fds: open 3 open 4 LISTEN_FDS=1 LISTEN_PID=1 end\n"
    );

    // A preserved descriptor that is not open is refused before anything is made.
    let id = unique("fds-missing");
    f.track(&id);
    let args = ["run", "--preserve-fds", "2", "--bundle", &bundle, &id];
    let out = cli_with_fds(&f, &format!("3<{} 4<&-", host.s("a")), &[], &args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("preserved descriptor 4"),
        "{}",
        stderr(&out)
    );
    assert!(!f.root.join(&id).exists());
}

#[test]
fn inherited_descriptors_do_not_reach_the_container_on_create_and_exec() {
    let host = host_files();
    let mut f = Fixture::new();
    f.sh(&format!("{SHOW_FDS}; exec sleep 60"));
    f.write_config();
    let bundle = f.bundle.to_str().unwrap().to_string();
    let id = unique("fds-create");
    f.track(&id);
    let out_file = f.dir.join(format!("{id}.out"));
    let err_file = f.dir.join(format!("{id}.err"));
    // The created container keeps the stdio of `create`: files, not the pipes of `output`.
    let redirs = format!(
        "3<{} 5<{} >{} 2>{}",
        host.s("a"),
        host.0.display(),
        out_file.display(),
        err_file.display()
    );
    let out = cli_with_fds(&f, &redirs, &[], &["create", "--bundle", &bundle, &id]);
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(out.status.success(), "{err}");
    ok(&f.cli(&["start", &id]));
    assert_eq!(wait_file(&out_file), "fds: end\n");

    let exec = |extra: &[&str]| {
        let mut args = vec!["exec"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&id, "sh", "-c", SHOW_FDS]);
        let redirs = format!("3<{} 5<{}", host.s("a"), host.0.display());
        ok(&cli_with_fds(&f, &redirs, &[], &args))
    };
    assert_eq!(exec(&[]), "fds: end\n");
    assert_eq!(exec(&["--preserve-fds", "1"]), "fds: open 3 end\n");
}

/// Starts the CLI in a session keyring of its own that holds one key, `desc`, that only its
/// possessors (processes with that session keyring) can see.
fn with_private_key(cmd: &mut Command, desc: &str) {
    use std::os::unix::process::CommandExt;
    let desc = std::ffi::CString::new(desc).unwrap();
    let sys = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: only system calls between fork and exec, on memory the closure owns.
    unsafe {
        cmd.pre_exec(move || {
            sys(libc::syscall(
                libc::SYS_keyctl,
                libc::KEYCTL_JOIN_SESSION_KEYRING,
                std::ptr::null::<libc::c_char>(),
            ))?;
            let key = sys(libc::syscall(
                libc::SYS_add_key,
                c"user".as_ptr(),
                desc.as_ptr(),
                b"s3cret".as_ptr(),
                6usize,
                libc::KEY_SPEC_SESSION_KEYRING,
            ))?;
            // Possessor: everything; its user, others: nothing.
            sys(libc::syscall(
                libc::SYS_keyctl,
                libc::KEYCTL_SETPERM,
                key,
                0x3f00_0000u32,
            ))?;
            Ok(())
        })
    };
}

/// Which of `key` and the session keyring `_ses.<id>` the container's process sees in
/// /proc/keys (which lists what it may view: a key it possesses through its session keyring
/// among them).
fn keys_seen(key: &str, id: &str) -> String {
    format!(
        "k=; grep -q ' {key}: ' /proc/keys && k=\"$k caller-key\"; \
         grep -q ' _ses.{id}: ' /proc/keys && k=\"$k own-session\"; echo \"keys:$k\""
    )
}

/// `run` with the caller's private key (see `with_private_key`): the container's output.
fn run_with_key(f: &Fixture, key: &str, id: &str, extra: &[&str]) -> String {
    f.write_config();
    f.track(id);
    let mut cmd = Command::new(BIN);
    cmd.args(["--root", f.root.to_str().unwrap(), "run"])
        .args(extra)
        .args(["--bundle", f.bundle.to_str().unwrap(), id])
        .stdin(Stdio::null());
    with_private_key(&mut cmd, key);
    ok(&cmd.output().unwrap())
}

#[test]
fn the_container_gets_a_session_keyring_of_its_own() {
    let mut f = Fixture::new();
    // runc's default masks /proc/keys; here it is how the test looks at the keyrings.
    let masked = f.config["linux"]["maskedPaths"].as_array_mut().unwrap();
    masked.retain(|p| p != "/proc/keys");
    let key = unique("berth-caller-key");
    let id = unique("keyring");
    f.sh(&keys_seen(&key, &id));
    assert_eq!(run_with_key(&f, &key, &id, &[]), "keys: own-session\n");
    // `--no-new-keyring` keeps the caller's, as runc does.
    let id = unique("keyring-kept");
    f.sh(&keys_seen(&key, &id));
    assert_eq!(
        run_with_key(&f, &key, &id, &["--no-new-keyring"]),
        "keys: caller-key\n"
    );

    // A process `exec` starts joins the container's keyring, not its caller's.
    let id = unique("keyring-exec");
    f.args(&["sleep", "60"]);
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    let mut cmd = Command::new(BIN);
    cmd.args(["--root", f.root.to_str().unwrap(), "exec", &id, "sh", "-c"])
        .arg(keys_seen(&key, &id))
        .stdin(Stdio::null());
    with_private_key(&mut cmd, &key);
    assert_eq!(ok(&cmd.output().unwrap()), "keys: own-session\n");
}
