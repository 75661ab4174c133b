//! A/B update on a booted machine: slot A applies a signed bundle of a different build (its
//! own root with a newer version) read from an extra disk, the next boot runs slot B, marks
//! it good, and keeps slot A good and the state partition as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_image::grubenv::{BootState, Slot};
use berth_qemu_tests::{disk, disk_or_skip, fixture, Firmware, Fixture, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(300);
const CMD: Duration = Duration::from_secs(60);
const APPLY: Duration = Duration::from_secs(600);
const DISK_SIZE: u64 = 1 << 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The boot state on the ESP of a stopped VM's disk.
fn grubenv_of(disk_path: &Path) -> BootState {
    disk::boot_state(disk_path).unwrap()
}

fn run_tool(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The running version with its patch number one higher ("0.1.0" gives "0.1.1").
fn next_version(v: &str) -> String {
    let mut parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap()).collect();
    *parts.last_mut().unwrap() += 1;
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A bundle of another build: the image build's root tree with `version` in its os-release,
/// assembled again the way `make image` recorded it (out/assemble.args), signed with the test
/// key. Returned padded to whole sectors (to attach as a disk) with its real length.
fn other_build_bundle(fx: &Fixture, image: &Path, version: &str) -> (PathBuf, u64) {
    let out_dir = image.parent().unwrap();
    let recorded = std::fs::read_to_string(out_dir.join("assemble.args"))
        .expect("assemble.args (written by make image)");
    let mut args: Vec<String> = recorded.lines().map(str::to_string).collect();
    let rootfs = fx.path("rootfs");
    let value = |args: &[String], k: &str| {
        let i = args.iter().position(|a| a == k).unwrap();
        args[i + 1].clone()
    };
    run_tool(
        Command::new("cp")
            .arg("-a")
            .arg(value(&args, "--rootfs"))
            .arg(&rootfs),
    );
    let os_release = rootfs.join("etc/os-release");
    let text = std::fs::read_to_string(&os_release).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("VERSION_ID=") {
                format!("VERSION_ID={version}\n")
            } else if l.starts_with("BUILD_ID=") {
                "BUILD_ID=update-test\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&os_release, text).unwrap();
    let set = |args: &mut Vec<String>, k: &str, v: &str| match args.iter().position(|a| a == k) {
        Some(i) => args[i + 1] = v.to_string(),
        None => {
            args.push(k.to_string());
            args.push(v.to_string());
        }
    };
    let work = fx.path("work");
    let out = fx.path("out");
    set(&mut args, "--rootfs", &rootfs.display().to_string());
    set(&mut args, "--version", version);
    set(&mut args, "--work", &work.display().to_string());
    set(&mut args, "--out", &out.display().to_string());
    set(&mut args, "--formats", "raw");
    let tool = out_dir.join("bin/berth-image");
    run_tool(Command::new(&tool).args(&args).current_dir(repo()));
    let bundle = fx.path("next.bundle");
    run_tool(
        Command::new(&tool)
            .arg("bundle")
            .arg("--key")
            .arg(repo().join("configs/keys/test-key.key"))
            .arg("--root")
            .arg(work.join("root-a.img"))
            .arg("--kernel")
            .arg(value(&args, "--kernel"))
            .arg("--manifest")
            .arg(out.join("manifest.json"))
            .arg("--cmdline")
            .arg(repo().join("configs/grub/cmdline"))
            .args(["--build-id", "update-test", "--version", version])
            .arg("--out")
            .arg(&bundle)
            .current_dir(repo()),
    );
    // Only the bundle is needed from here on; the assembled disk is large.
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&rootfs);
    let len = std::fs::metadata(&bundle).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&bundle)
        .unwrap();
    f.set_len(len.div_ceil(512) * 512).unwrap();
    (bundle, len)
}

fn wait_marked_good(vm: &mut Vm, slot: &str) {
    let deadline = Instant::now() + BOOT;
    let want = format!("boot of slot {slot} marked good");
    while !vm
        .run("dmesg | grep 'marked good'", CMD)
        .unwrap()
        .1
        .contains(&want)
    {
        assert!(
            Instant::now() < deadline,
            "boot of {slot} never marked good"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn power_off(mut vm: Vm) {
    vm.power_button().unwrap();
    let status = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
}

/// `GET /v1/update` through berthctl in the guest.
fn update_status(vm: &mut Vm) -> serde_json::Value {
    let out = vm.run_ok("berthctl --json update status", CMD).unwrap();
    let start = out.find('{').unwrap_or(0);
    serde_json::from_str(out[start..].trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn os_release_field(vm: &mut Vm, key: &str) -> String {
    let out = vm
        .run_ok(&format!("sed -n 's/^{key}=//p' /etc/os-release"), CMD)
        .unwrap();
    out.trim().to_string()
}

#[test]
fn bundle_of_another_build_boots_in_slot_b_and_is_marked_good() {
    let test = "update_a_to_b";
    let Some((fx, disk_path)) = disk_or_skip(test, Some(DISK_SIZE)) else {
        return;
    };
    let image = fixture::default_image();
    let running = std::fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .map(|v| v.trim_end_matches('"').to_string())
        .unwrap();
    let next = next_version(&running);
    let (bundle, bundle_len) = other_build_bundle(&fx, &image, &next);

    let mut cfg = VmConfig::new(Firmware::Bios, disk_path.clone());
    // Only extra drive: the guest sees it as vdb.
    cfg.extra_drives.push(bundle);
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for("berth: booting slot A", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    assert_eq!(os_release_field(&mut vm, "VERSION_ID"), running);
    wait_marked_good(&mut vm, "A");
    let status = update_status(&mut vm);
    assert_eq!(status["booted"], "A", "{status}");
    assert_eq!(status["slots"][0]["state"], "good", "{status}");
    assert_eq!(status["slots"][0]["version"], running.as_str(), "{status}");
    assert_eq!(status["slots"][1]["state"], "empty", "{status}");
    vm.run_ok(
        "echo kept-across-updates > /var/lib/berth/update-marker && sync",
        CMD,
    )
    .unwrap();

    // The bundle streams from the disk into the child process, exactly its length.
    let applied = vm
        .run_ok(
            &format!("head -c {bundle_len} /dev/vdb | /sbin/init update-apply -"),
            APPLY,
        )
        .unwrap();
    assert!(applied.contains("\"applied\""), "{applied}");
    assert!(applied.contains("\"slot\":\"B\""), "{applied}");
    assert!(
        applied.contains(&format!("\"version\":\"{next}\"")),
        "{applied}"
    );
    let status = update_status(&mut vm);
    assert_eq!(status["next"], "B", "{status}");
    assert_eq!(status["slots"][1]["state"], "new", "{status}");
    assert_eq!(status["slots"][1]["attempts_left"], 3, "{status}");
    assert_eq!(status["slots"][1]["version"], next.as_str(), "{status}");
    assert_eq!(status["slots"][1]["build_id"], "update-test", "{status}");
    power_off(vm);

    let env = grubenv_of(&disk_path);
    assert!(env.is_trying(Slot::B), "{env:?}");
    assert_eq!(env.next_boot(), Some(Slot::B), "{env:?}");

    // Next boot: slot B, the new build, marked good once its critical units are healthy.
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for("berth: booting slot B", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    let cmdline = vm.run_ok("cat /proc/cmdline", CMD).unwrap();
    assert!(cmdline.contains("berth.slot=B"), "{cmdline}");
    let root_b = disk::partition(&disk_path, "berth-root-b").unwrap();
    let slaves = vm.run_ok("ls /sys/block/dm-0/slaves", CMD).unwrap();
    assert_eq!(slaves.trim(), format!("vda{}", root_b.number));
    assert_eq!(os_release_field(&mut vm, "VERSION_ID"), next);
    assert_eq!(os_release_field(&mut vm, "BUILD_ID"), "update-test");
    assert_eq!(
        vm.run_ok("cat /var/lib/berth/update-marker", CMD)
            .unwrap()
            .trim(),
        "kept-across-updates"
    );
    wait_marked_good(&mut vm, "B");
    let status = update_status(&mut vm);
    assert_eq!(status["booted"], "B", "{status}");
    assert_eq!(status["next"], "B", "{status}");
    assert_eq!(status["slots"][0]["state"], "good", "{status}");
    assert_eq!(status["slots"][0]["version"], running.as_str(), "{status}");
    assert_eq!(status["slots"][1]["state"], "good", "{status}");
    assert_eq!(status["slots"][1]["version"], next.as_str(), "{status}");
    power_off(vm);

    let env = grubenv_of(&disk_path);
    assert!(env.is_ok(Slot::B) && !env.is_trying(Slot::B), "{env:?}");
    assert!(env.is_ok(Slot::A), "{env:?}");
    assert_eq!(env.next_boot(), Some(Slot::B), "{env:?}");
}
