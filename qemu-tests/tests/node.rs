//! The node profile (`make image PROFILE=node`) booted under QEMU: berth-init mounts the
//! containerd system extension from the root slot, loads its unit, and containerd (critical:
//! the boot is only marked good once it is healthy) serves CRI with berth-runtime as its
//! runtime, on the guest's pure cgroup v2.
//!
//! A pod goes through its life the way kubelet drives it, by the CRI client of the host tests
//! (runtime/tests/cri_client.py) over containerd's TCP listener, forwarded to the host's
//! loopback: PullImage, RunPodSandbox (containerd pulls the sandbox image itself),
//! CreateContainer with a 64 MiB memory limit, StartContainer, ExecSync, ContainerStats,
//! StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox. Both images come from
//! Debian's docker-registry on the host's loopback, which the guest reaches at 10.0.2.100:5000.
//! The guest is then checked for the container's log, and for what must not be left: shim
//! mounts, processes in the pod's cgroups, the container's cgroup, berth-runtime state.
//!
//! A node updated to a build whose extension differs boots it in slot B, with containerd
//! healthy, and a rollback brings slot A's extension back with slot A.
//!
//! A further machine has one byte of the extension flipped on disk: dm-verity refuses it, the
//! extension is not mounted and brings no unit, and Berth's own units run as usual.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_qemu_tests::registry::Registry;
use berth_qemu_tests::update::{
    apply_command, later_version, power_off, running_version, update_status, wait_marked_good,
    OtherBuild, APPLY,
};
use berth_qemu_tests::{disk, node_image_or_skip, Firmware, Fixture, GuestForward, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);
const DISK_SIZE: u64 = 2 << 30;
const REGISTRY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const REGISTRY_PORT: u16 = 5000;
/// containerd's gRPC TCP listener in the guest (turned on by the test's drop-in only).
const CRI_PORT: u16 = 10010;
/// Where scripts/install-deps.sh puts the CRI api.proto of containerd's Debian source package.
const PROTO: &str = "/usr/local/share/berth/cri-api/runtime/v1/api.proto";
/// The pause equivalent: sleeps until SIGTERM or SIGKILL.
const PAUSE_CMD: &str =
    r#"["sh","-c","trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"]"#;
const CGROUP_PARENT: &str = "/kubepods/besteffort/podberth";
const LOG_DIR: &str = "/var/lib/berth/pod-logs/berth-test_berth-pod";
const DROP_IN: &str = "/var/lib/berth/containerd.d/test.toml";

/// Whether a `berthctl ps` line shows the unit up (its STATE column).
fn up(line: &str) -> bool {
    matches!(line.split_whitespace().nth(2), Some("running" | "healthy"))
}

fn runtime_tests() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime/tests"))
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A one-layer busybox image running `cmd`, pushed to the registry as `repo:latest`.
fn push_busybox(fx: &Fixture, registry: &Registry, repo: &str, cmd: &str) {
    let tar = fx.path(&format!("{}.tar", repo.replace('/', "-")));
    let script = runtime_tests().join("busybox-image.sh");
    ok(Command::new("sh")
        .arg(script)
        .arg(&tar)
        .arg(format!("{repo}:latest"))
        .arg(cmd));
    ok(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("docker-archive:{}", tar.display()))
        .arg(format!("docker://{}/{repo}:latest", registry.addr)));
}

/// The node's containerd configuration with what this test needs on top, as a drop-in for
/// `/var/lib/berth/containerd.d/`: containerd's import rule replaces the CRI section whole, so
/// the drop-in carries the shipped section (the berth runtime, overlayfs, CNI dirs) with the
/// sandbox image from the test's registry, CRI on the TCP listener, and the registry as a
/// plain-HTTP mirror of itself.
fn drop_in(shipped: &str, registry: &str) -> String {
    let start = shipped
        .find("[plugins.\"io.containerd.grpc.v1.cri\"]")
        .expect("the shipped config has a CRI section");
    let end = shipped
        .find("[plugins.\"io.containerd.runtime.v1.linux\"]")
        .expect("the shipped config's CRI section ends at the v1 runtime's");
    let cri: Vec<String> = shipped[start..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            if l.trim_start().starts_with("sandbox_image") {
                format!("  sandbox_image = \"{registry}/berth-test/pause:latest\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(cri.iter().any(|l| l.contains("berth-test/pause")));
    let mut lines = vec![
        "version = 2".to_string(),
        "[grpc]".to_string(),
        format!("  tcp_address = \"0.0.0.0:{CRI_PORT}\""),
    ];
    lines.push(cri[0].clone());
    lines.push("  disable_tcp_service = false".to_string());
    lines.extend(cri[1..].iter().cloned());
    lines.push(format!(
        "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{registry}\"]"
    ));
    lines.push(format!("  endpoint = [\"http://{registry}\"]"));
    lines.join("\n") + "\n"
}

#[test]
fn node_profile_runs_a_pod_through_cri_with_berth_runtime() {
    let Some(image) = node_image_or_skip("node") else {
        return;
    };
    let fx = Fixture::new("node").unwrap();
    let registry = Registry::start(&fx.path("registry")).unwrap();
    push_busybox(&fx, &registry, "berth-test/pause", PAUSE_CMD);
    push_busybox(&fx, &registry, "berth-test/busybox", r#"["sh"]"#);

    let disk_path = fx.path("disk.img");
    disk::copy_raw(&image, &disk_path, Some(DISK_SIZE)).unwrap();
    let mut cfg = VmConfig::new(Firmware::Bios, disk_path);
    cfg.memory_mib = 1024;
    cfg.forward.push(CRI_PORT);
    cfg.guest_forwards = vec![GuestForward {
        addr: REGISTRY_ADDR,
        port: REGISTRY_PORT,
        host_port: registry.port,
    }];
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for_shell(BOOT).unwrap();

    // The extension: mounted read-only from the slot, its unit loaded, containerd healthy
    // (a critical unit: the boot is marked good only then).
    let mounts = vm.run_ok("cat /proc/mounts", CMD).unwrap();
    let ext = mounts
        .lines()
        .find(|l| l.contains(" /run/berth/extensions/containerd "))
        .unwrap_or_else(|| panic!("extension not mounted:\n{mounts}"));
    assert!(ext.contains(" erofs ro,"), "{ext}");
    wait_marked_good(&mut vm, "A").unwrap();
    let units = vm.run_ok("berthctl ps", CMD).unwrap();
    assert!(
        units.lines().any(|l| l.starts_with("containerd ") && up(l)),
        "{units}"
    );
    let version = vm
        .run_ok(
            "/run/berth/extensions/containerd/bin/containerd --version",
            CMD,
        )
        .unwrap();
    assert!(version.contains("containerd"), "{version}");

    // The test's drop-in, then a restart of the unit to read it.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/node/config.toml"
    ))
    .unwrap();
    let text = drop_in(&shipped, &format!("{REGISTRY_ADDR}:{REGISTRY_PORT}"));
    assert!(!text.contains('\''));
    let printf_args: Vec<String> = text.lines().map(|l| format!("'{l}'")).collect();
    vm.run_ok(
        &format!(
            "mkdir -p {dir} && printf '%s\\n' {args} > {DROP_IN}",
            dir = Path::new(DROP_IN).parent().unwrap().display(),
            args = printf_args.join(" ")
        ),
        CMD,
    )
    .unwrap();
    vm.run_ok("berthctl restart containerd", BOOT).unwrap();

    let port = vm.host_port(CRI_PORT).unwrap();
    let out = Command::new("timeout")
        .arg("900")
        .arg("/usr/bin/python3")
        .arg(runtime_tests().join("cri_client.py"))
        .arg(PROTO)
        .arg(format!("tcp:127.0.0.1:{port}"))
        .arg("lifecycle")
        .arg("berth")
        .arg(format!(
            "{REGISTRY_ADDR}:{REGISTRY_PORT}/berth-test/busybox:latest"
        ))
        .arg(CGROUP_PARENT)
        .arg(LOG_DIR)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let guest_log = vm
        .run("berthctl logs --tail 60 containerd", CMD)
        .map(|(_, o)| o)
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "cri_client: {}\n{}{}\ncontainerd's log:\n{guest_log}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("node: CRI lifecycle: {seen}");
    let cid = seen["container"].as_str().unwrap().to_string();
    let runtime = seen["runtime"].as_str().unwrap();
    assert!(runtime.starts_with("containerd "), "{seen}");
    // The container ran in a cgroup namespace of its own (it sees itself at the root), with
    // its limit from the kernel; its cgroup was below the pod's parent, which stays.
    assert_eq!(seen["cgroup"], "0::/\n", "{seen}");
    assert_eq!(seen["memory_max"], "67108864", "{seen}");
    vm.run_ok(&format!("test -d /sys/fs/cgroup{CGROUP_PARENT}"), CMD)
        .unwrap();

    // What the container wrote, in the CRI log format, on the node.
    let log = vm.run_ok(&format!("cat {LOG_DIR}/main.log"), CMD).unwrap();
    assert!(log.contains(" stdout F started"), "{log}");

    // Nothing left in the guest: no shim or rootfs mounts, no process in the pod's cgroups,
    // no container cgroup, no berth-runtime state (containerd's runtime root for CRI).
    let mounts = vm.run_ok("cat /proc/mounts", CMD).unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains("io.containerd.runtime.v2.task") || l.contains("/sandboxes/"))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    let procs = vm
        .run_ok(
            "cat $(find /sys/fs/cgroup/kubepods -name cgroup.procs)",
            CMD,
        )
        .unwrap();
    assert!(procs.trim().is_empty(), "processes left: {procs}");
    let (found, dirs) = vm
        .run(&format!("find /sys/fs/cgroup -name '*{cid}*'"), CMD)
        .unwrap();
    assert!(found == 0 && dirs.trim().is_empty(), "cgroups left: {dirs}");
    let state = vm
        .run_ok("ls -A /run/containerd/runc/k8s.io 2>/dev/null; true", CMD)
        .unwrap();
    assert!(state.trim().is_empty(), "runtime state left: {state}");

    // Berth's own units ran beside it all the time.
    let units = vm.run_ok("berthctl ps", CMD).unwrap();
    assert!(
        units.lines().any(|l| l.starts_with("demo-web ") && up(l)),
        "{units}"
    );
    vm.run_ok("rm -f /var/lib/berth/containerd.d/test.toml", CMD)
        .unwrap();
    berth_qemu_tests::update::power_off(&mut vm).unwrap();
}

/// Where the containerd extension's erofs starts in the image file: slot A's offset plus the
/// extension's offset in the slot, from the image's manifest.json beside it.
fn extension_offset(image: &Path) -> u64 {
    let manifest = image.with_file_name("manifest.json");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let slot = m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "berth-root-a")
        .unwrap()["offset"]
        .as_u64()
        .unwrap();
    let ext = m["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "containerd")
        .unwrap_or_else(|| panic!("no containerd extension in {}", manifest.display()));
    slot + ext["offset"].as_u64().unwrap()
}

#[test]
fn a_corrupted_extension_is_not_mounted_and_the_base_system_runs() {
    let Some(image) = node_image_or_skip("node") else {
        return;
    };
    let fx = Fixture::new("node-corrupt").unwrap();
    let disk_path = fx.path("disk.img");
    disk::copy_raw(&image, &disk_path, Some(DISK_SIZE)).unwrap();
    // One byte of the extension's erofs superblock, on disk, below dm-verity.
    let at = extension_offset(&image) + 1024 + 40;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let cfg = VmConfig::new(Firmware::Bios, disk_path);
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    let log = vm.run_ok("dmesg", CMD).unwrap();
    assert!(log.contains("verity"), "no verity error:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("extension containerd"))
        .unwrap_or_else(|| panic!("no line about the extension:\n{log}"));
    assert!(!line.contains("mounted on"), "{line}");
    let mounts = vm.run_ok("cat /proc/mounts", CMD).unwrap();
    assert!(
        !mounts.contains("/run/berth/extensions/containerd"),
        "{mounts}"
    );
    // No containerd unit, and Berth's own units run as on any machine.
    let start = std::time::Instant::now();
    loop {
        let units = vm.run_ok("berthctl ps", CMD).unwrap();
        assert!(!units.contains("containerd"), "{units}");
        if units.lines().any(|l| l.starts_with("demo-web ") && up(l)) {
            break;
        }
        assert!(start.elapsed() < BOOT, "demo-web never came up:\n{units}");
        std::thread::sleep(Duration::from_millis(500));
    }
    berth_qemu_tests::update::power_off(&mut vm).unwrap();
}

/// The `extension-release` of the containerd extension the guest has mounted.
fn extension_release(vm: &mut Vm) -> String {
    vm.run_ok(
        "cat /run/berth/extensions/containerd/extension-release",
        CMD,
    )
    .unwrap()
}

#[test]
fn an_update_brings_its_extension_and_a_rollback_the_previous_one() {
    let Some(image) = node_image_or_skip("node") else {
        return;
    };
    let fx = Fixture::new("node-update").unwrap();
    // The next build's extension: the image's own tree with one line more.
    let out_dir = image.parent().unwrap();
    let args = std::fs::read_to_string(out_dir.join("assemble.args")).unwrap();
    let recorded = args
        .lines()
        .skip_while(|l| *l != "--extension")
        .nth(1)
        .unwrap()
        .to_string();
    let erofs = Path::new(recorded.split_once('=').unwrap().1);
    let tree = erofs.with_extension("tree");
    let next_tree = fx.path("ext-tree");
    ok(Command::new("cp").arg("-a").arg(&tree).arg(&next_tree));
    let release = next_tree.join("extension-release");
    let mut text = std::fs::read_to_string(&release).unwrap();
    text.push_str("BUILD=node-update-test\n");
    std::fs::write(&release, text).unwrap();
    let next_erofs = fx.path("containerd-next.erofs");
    ok(Command::new("mkfs.erofs")
        .args(["--quiet", "--all-root", "-T0"])
        .arg(&next_erofs)
        .arg(&next_tree));
    let running = running_version();
    let next = later_version(&running, 1);
    let build = OtherBuild::assemble_with(
        &fx.path("next"),
        &image,
        &next,
        "node-update-test",
        &[(
            "--extension",
            format!("containerd={}", next_erofs.display()),
        )],
    )
    .unwrap();
    let (bundle, bundle_len) = build.bundle("next", str::to_string).unwrap();

    let disk_path = fx.path("disk.img");
    disk::copy_raw(&image, &disk_path, Some(DISK_SIZE)).unwrap();
    let mut cfg = VmConfig::new(Firmware::Bios, disk_path);
    cfg.memory_mib = 1024;
    cfg.extra_drives.push(bundle);
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    wait_marked_good(&mut vm, "A").unwrap();
    assert!(!extension_release(&mut vm).contains("BUILD="));
    let applied = vm
        .run_ok(&apply_command("/dev/vdb", bundle_len, ""), APPLY)
        .unwrap();
    assert!(applied.contains("\"slot\":\"B\""), "{applied}");
    power_off(&mut vm).unwrap();

    // Slot B: the new OS with its own extension; containerd (critical) healthy on it.
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for("berth: booting slot B", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    wait_marked_good(&mut vm, "B").unwrap();
    assert!(
        extension_release(&mut vm).contains("BUILD=node-update-test"),
        "slot B runs the old extension"
    );
    let units = vm.run_ok("berthctl ps", CMD).unwrap();
    assert!(
        units.lines().any(|l| l.starts_with("containerd ") && up(l)),
        "{units}"
    );

    // Rollback: slot A again, with slot A's extension.
    vm.run_ok("berthctl update rollback", CMD).unwrap();
    let status = update_status(&mut vm).unwrap();
    assert_eq!(status["next"], "A", "{status}");
    power_off(&mut vm).unwrap();
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for("berth: booting slot A", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    wait_marked_good(&mut vm, "A").unwrap();
    assert!(!extension_release(&mut vm).contains("BUILD="));
    power_off(&mut vm).unwrap();
}

#[test]
fn the_drop_in_carries_the_shipped_cri_section() {
    let shipped = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  # c\n  sandbox_image = \"x\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    default_runtime_name = \"berth\"\n\n[plugins.\"io.containerd.runtime.v1.linux\"]\n  runtime = \"r\"\n";
    let text = drop_in(shipped, "10.0.2.100:5000");
    assert_eq!(
        text,
        "version = 2\n[grpc]\n  tcp_address = \"0.0.0.0:10010\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_tcp_service = false\n\
         \x20 sandbox_image = \"10.0.2.100:5000/berth-test/pause:latest\"\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    default_runtime_name = \"berth\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"10.0.2.100:5000\"]\n\
         \x20 endpoint = [\"http://10.0.2.100:5000\"]\n"
    );
}
