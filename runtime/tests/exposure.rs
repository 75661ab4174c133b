//! What a container can reach of the runtime's own processes: their executable (the
//! CVE-2019-5736 pattern), their descriptors, root and working directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn sha256(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

fn applets(f: &Fixture, names: &[&str]) {
    for a in names {
        let _ = std::os::unix::fs::symlink("busybox", f.rootfs().join("bin").join(a));
    }
}

/// Copies the shared libraries `bin` needs (per `ldd`) into the container's root, at the same
/// paths, so that the container can run it as Berth's static build runs anywhere.
fn libraries_for(bin: &Path, f: &Fixture) {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let lib = Path::new(word);
        if lib.is_absolute() && lib.is_file() {
            let dest = f.rootfs().join(word.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
    }
}

/// The CLI from `bin` with the fixture's `--root`.
fn cli(bin: &Path, f: &Fixture, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.arg("--root").arg(&f.root).args(args);
    c
}

fn output(mut c: Command) -> Output {
    c.output().unwrap()
}

/// `create` with the container's output in `out`, nothing the test would wait on.
fn create(bin: &Path, f: &Fixture, id: &str, out: &Path) {
    f.write_config();
    f.track(id);
    let status = cli(
        bin,
        f,
        &["create", "--bundle", f.bundle.to_str().unwrap(), id],
    )
    .stdin(Stdio::null())
    .stdout(std::fs::File::create(out).unwrap())
    .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
    .status()
    .unwrap();
    assert!(
        status.success(),
        "create: {}",
        std::fs::read_to_string(out.with_extension("err")).unwrap_or_default()
    );
}

/// The script a container runs against the runtime: it waits for a process whose command
/// line starts with `pattern`, keeps its executable open for reading, lets it finish by
/// reading `/gate`, waits until it is gone, then writes through the descriptor it kept.
fn grab_and_write(pattern: &str) -> String {
    format!(
        r#"
n=0
while [ -z "$pid" ]; do
  for p in /proc/[0-9]*; do
    case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in "{pattern}"*) pid=${{p#/proc/}};; esac
  done
  [ -n "$pid" ] && break
  if [ -e /exec-finished ]; then echo runtime-never-ran; echo done; exit 0; fi
  n=$((n+1)); [ $n -lt 3000 ] || {{ echo never-seen; exit 1; }}
  sleep 0.02
done
echo seen
if (: < /proc/$pid/exe) 2>/dev/null; then exec 3< /proc/$pid/exe; echo opened-exe; fi
if (: 1<> /proc/$pid/exe) 2>/dev/null; then echo exe-writable-while-running; fi
cat /gate > /dev/null
n=0
while [ -e /proc/$pid ]; do
  n=$((n+1)); [ $n -lt 3000 ] || {{ echo never-exited; exit 1; }}
  sleep 0.02
done
if [ -e /proc/self/fd/3 ] && printf PWNED 1<> /proc/self/fd/3 2>/dev/null; then echo wrote-exe; fi
echo done
"#
    )
}

/// A container program that is a `#!/proc/self/exe` script makes the kernel run the
/// executable of whatever process execs it: during `exec`, the runtime's. The container
/// catches that process (it blocks on the container's FIFO `/gate` while it writes its log),
/// keeps its executable open and writes through it once it exited. The host's binary must
/// not change.
#[test]
fn a_container_cannot_write_the_runtime_binary_through_proc_self_exe() {
    let mut f = Fixture::new();
    applets(&f, &["tr", "printf"]);
    // The "host binary" is a copy, so that a successful attack damages nothing else.
    let host = f.dir.join("host-bin");
    std::fs::create_dir_all(&host).unwrap();
    let bin: PathBuf = host.join("berth-runtime");
    std::fs::copy(BIN, &bin).unwrap();
    let before = sha256(&bin);
    libraries_for(&bin, &f);

    let evil = f.rootfs().join("evil");
    std::fs::write(&evil, "#!/proc/self/exe --log\n").unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::mkfifo(
        &f.rootfs().join("gate"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    f.sh(&grab_and_write("/proc/self/exe --log"));
    let id = unique("exe");
    let out = f.dir.join("attacker.out");
    create(&bin, &f, &id, &out);
    let o = output(cli(&bin, &f, &["start", &id]));
    assert!(o.status.success(), "start: {}", stderr(&o));

    // `exec` runs /evil: the kernel runs the runtime's own executable as
    // `/proc/self/exe --log /evil --log /gate state nope`, which fails (no such container)
    // and blocks opening its log, the FIFO, until the container reads it.
    let mut exec = cli(
        &bin,
        &f,
        &["exec", &id, "/evil", "--log", "/gate", "state", "nope"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(f.dir.join("exec.err")).unwrap())
    .spawn()
    .unwrap();
    // Once the exec is over (at once if the runtime could not run as /evil's interpreter),
    // the container stops waiting for it. Its loops are bounded (a minute) anyway.
    let _ = exec.wait();
    std::fs::write(f.rootfs().join("exec-finished"), "").unwrap();
    let mut seen = String::new();
    for _ in 0..3000 {
        // The status first: output read after the container is seen stopped is all of it.
        let stopped = f.status(&id) == "stopped";
        seen = std::fs::read_to_string(&out).unwrap();
        if seen.ends_with("done\n") || stopped {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(seen.ends_with("done\n"), "{seen}");
    assert!(!seen.contains("wrote-exe"), "{seen}");
    assert!(!seen.contains("exe-writable-while-running"), "{seen}");
    assert_eq!(sha256(&bin), before, "the host binary changed");
    let _ = output(cli(&bin, &f, &["delete", "--force", &id]));
}

/// A created container's init runs the runtime's code until `start`. A process `exec`ed into
/// it, root of the container's user namespace with CAP_SYS_PTRACE there, must not reach the
/// init's executable, descriptors, root or working directory: they are the host's.
#[test]
fn an_exec_process_cannot_reach_the_waiting_init() {
    let mut f = Fixture::new();
    applets(&f, &["tr"]);
    f.args(&["true"]);
    let ns = f.config["linux"]["namespaces"].as_array_mut().unwrap();
    ns.push(json!({"type": "user"}));
    f.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    f.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let st = Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(f.rootfs())
        .status()
        .unwrap();
    assert!(st.success());
    let id = unique("init-window");
    create(Path::new(BIN), &f, &id, &f.dir.join("init.out"));
    assert_eq!(f.status(&id), "created");

    let caps = json!(["CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"]);
    let process = json!({
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", r#"
            cat /proc/1/cmdline > /dev/null && echo init-visible
            (: < /proc/1/exe) 2>/dev/null && echo exe
            ls /proc/1/fd/ > /dev/null 2>&1 && echo fd
            ls /proc/1/root/ > /dev/null 2>&1 && echo root
            ls /proc/1/cwd/ > /dev/null 2>&1 && echo cwd
            echo end"#],
        "cwd": "/",
        "env": ["PATH=/bin"],
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
    });
    let process_file = f.dir.join("process.json");
    std::fs::write(&process_file, process.to_string()).unwrap();
    let o = f.cli(&["exec", "--process", process_file.to_str().unwrap(), &id]);
    assert_eq!(ok(&o), "init-visible\nend\n");
}

/// The init holds descriptors of host files until it execs (its state directory while it
/// waits for `start`). A working directory through `/proc/self/fd/N` must not take the
/// program there (the CVE-2024-21626 pattern): whatever N, the program never runs outside
/// the container's root.
#[test]
fn a_working_directory_through_a_runtime_descriptor_is_refused() {
    let mut f = Fixture::new();
    f.sh("ls; echo listed");
    for n in 3..=12 {
        f.config["process"]["cwd"] = json!(format!("/proc/self/fd/{n}"));
        let id = unique("cwd");
        let out = f.dir.join(format!("{id}.log"));
        create(Path::new(BIN), &f, &id, &out);
        let _ = f.cli(&["start", &id]);
        f.wait_status(&id, "stopped");
        let seen = std::fs::read_to_string(&out).unwrap();
        assert!(
            !seen.contains("state.json") && !seen.contains("listed"),
            "fd {n}: the program ran in {seen:?}"
        );
        let err = std::fs::read_to_string(out.with_extension("err")).unwrap();
        assert!(
            err.contains("chdir") || err.contains("outside the container's root"),
            "fd {n}: {err}"
        );
    }
}
