//! berth-init in host mode runs from an ordinary, writable file. A container must never get
//! hold of it (the CVE-2019-5736 pattern): its health check is a `#!/proc/self/exe` script,
//! so the kernel runs whatever executable execs the check as a process of the container;
//! the container keeps that executable open and writes through it once it is gone (while
//! the host's berth-init runs from the same file, the write waits: "Text file busy").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{import_layout, new_umoci_image, run, temp_dir, Host};

const ATTACK: &str = r#"
n=0
while [ -z "$pid" ]; do
  for p in /proc/[0-9]*; do
    case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in "/proc/self/exe --root-dir"*) pid=${p#/proc/};; esac
  done
  [ -n "$pid" ] && break
  if [ -e /check-finished ]; then echo check-never-ran-the-host-binary; break; fi
  n=$((n+1)); [ $n -lt 3000 ] || { echo never-seen; break; }
  sleep 0.02
done
if [ -n "$pid" ]; then
  echo seen
  # `command`: a failed open (the check already ended) must not end this shell.
  if command exec 3< /proc/$pid/exe 2>/dev/null; then
    echo opened-exe
    kill -9 $pid
    n=0
    while [ -e /proc/$pid ] && [ $n -lt 3000 ]; do n=$((n+1)); sleep 0.02; done
    # While berth-init itself runs from the same file the kernel answers "Text file busy":
    # the file is writable and only waits for berth-init to exit.
    if printf PWNED 1<> /proc/self/fd/3 2>/tmp/err; then echo wrote-exe; else cat /tmp/err; fi
  else
    echo check-gone-before-its-exe-was-opened
  fi
fi
echo attack-done
exec sleep 600
"#;

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busybox image whose health-check program `/evil` is a `#!/proc/self/exe` script, with
/// the shared libraries the test build of the berth binaries needs.
fn import_image(dir: &Path, bins: &[&Path]) {
    let layout = dir.join("layout");
    let bundle = dir.join("image-bundle");
    let image = new_umoci_image(&layout, &bundle);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in ["sh", "tr", "sleep", "kill", "printf", "cat", "test"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    std::fs::write(rootfs.join("evil"), "#!/proc/self/exe --root-dir\n").unwrap();
    std::fs::set_permissions(rootfs.join("evil"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for bin in bins {
        let out = Command::new("ldd").arg(bin).output().unwrap();
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let lib = Path::new(word);
            if lib.is_absolute() && lib.is_file() {
                let dest = rootfs.join(word.trim_start_matches('/'));
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::fs::copy(lib, &dest).unwrap();
            }
        }
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    import_layout(dir, &layout, "berth.test/evil:1");
}

#[test]
fn a_health_check_cannot_hand_the_host_binaries_to_the_container() {
    let dir = temp_dir("exposure");
    // The host binaries are copies, so that a successful attack damages nothing else.
    let bins = dir.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    let init = bins.join("berth-init");
    let runtime = bins.join("berth-runtime");
    std::fs::copy(env!("CARGO_BIN_EXE_berth-init"), &init).unwrap();
    std::fs::copy(common::runtime_bin(), &runtime).unwrap();
    let before = (sha256(&init), sha256(&runtime));
    import_image(&dir, &[&init, &runtime]);
    let unit = format!(
        r#"
[container]
image = "berth.test/evil:1"
command = ["sh", "-c", '''{ATTACK}''']
network = "none"

[service]
restart = "never"

[health]
exec = ["/evil", "--root-dir", "/tmp/r"]
interval = "1s"
retries = 1
"#
    );
    std::fs::write(dir.join("units/evil.toml"), unit).unwrap();
    let stderr = std::fs::File::create(dir.join("berth-init.log")).unwrap();
    let child = Command::new(&init)
        .arg("--root-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut host = Host {
        dir: dir.clone(),
        child: Some(child),
        pid,
    };
    host.wait_for("the control socket", || {
        host.try_get("/v1/system").is_some()
    });
    // Once a check failed (/evil is no program of the container's), the container stops
    // waiting for the host binary to show up.
    host.wait_for("a failed health check", || {
        host.unit("evil")["health"].as_str() == Some("unhealthy")
    });
    let _ = std::fs::write(dir.join("state/containers/evil/rootfs/check-finished"), "");
    host.wait_for("the attack", || {
        host.read("state/logs/evil.log").contains("attack-done")
    });
    let log = host.read("state/logs/evil.log");
    host.signal(libc::SIGTERM);
    assert_eq!(host.wait_exit(), Some(0));
    assert!(
        !log.contains("wrote-exe") && !log.contains("Text file busy"),
        "{log}"
    );
    assert_eq!((sha256(&init), sha256(&runtime)), before, "{log}");
}
