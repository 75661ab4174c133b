//! A/B updates from each kind of source a machine takes them from, and the bundles it must
//! refuse. One machine is updated three times in a row: A→B with a bundle streamed through
//! `POST /v1/update` (`berthctl update apply FILE`), B→A from an OCI registry, A→B from an
//! HTTP URL, each rebooting by itself into the new system. Another is given bad bundles one
//! after the other and must refuse each without touching its boot state.
//!
//! The guest's user network reaches exactly the test's servers on the host's loopback
//! (guest forwards) and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use berth_image::grubenv::{Slot, SlotState};
use berth_qemu_tests::http::FileServer;
use berth_qemu_tests::registry::Registry;
use berth_qemu_tests::update::{
    earlier_version, later_version, os_release_field, power_off, push_bundle, running_version,
    update_status, wait_marked_good, BundleLayout, OtherBuild, APPLY, BOOT, CMD, DISK_SIZE,
};
use berth_qemu_tests::{disk, disk_or_skip, fixture, Firmware, GuestForward, Vm, VmConfig};

const REGISTRY_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
const REGISTRY_PORT: u16 = 5000;
const HTTP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 101);
const HTTP_PORT: u16 = 8000;
const STATE_FILE: &str = "/var/lib/berth/before-updates";

fn slot_json(status: &serde_json::Value, slot: Slot) -> &serde_json::Value {
    &status["slots"][if slot == Slot::A { 0 } else { 1 }]
}

/// The update status says `booted` runs and boots next, and each slot is good with its
/// version.
fn assert_both_good(vm: &mut Vm, booted: Slot, a: &str, b: &str) {
    let status = update_status(vm).unwrap();
    assert_eq!(status["booted"], booted.name(), "{status}");
    assert_eq!(status["next"], booted.name(), "{status}");
    for (slot, version) in [(Slot::A, a), (Slot::B, b)] {
        let s = slot_json(&status, slot);
        assert_eq!(s["state"], "good", "{status}");
        assert_eq!(s["version"], version, "{status}");
    }
}

/// Waits until the guest has its DHCP address (the network unit runs beside the rest).
fn wait_network(vm: &mut Vm) {
    vm.run_until("ip -4 addr show dev eth0", BOOT, |out| {
        out.contains("inet 10.0.2.15/")
    })
    .unwrap();
}

/// `berthctl update apply SOURCE --reboot`, then the boot of `slot` (the machine reboots by
/// itself once the job succeeded). Fails with the console when the apply fails instead.
fn apply_and_reboot(vm: &mut Vm, source: &str, slot: Slot) {
    vm.send(&format!(
        "berthctl update apply {source} --reboot || echo @@\"\"APPLY-FAILED"
    ))
    .unwrap();
    let booting = format!("berth: booting slot {}", slot.name());
    let hit = vm
        .wait_for_any(&[booting.as_str(), "@@APPLY-FAILED"], APPLY)
        .unwrap();
    assert_eq!(hit, 0, "apply of {source} failed:\n{}", vm.transcript());
    vm.wait_for_shell(BOOT).unwrap();
    let cmdline = vm.run_ok("cat /proc/cmdline", CMD).unwrap();
    assert!(
        cmdline.contains(&format!("berth.slot={}", slot.name())),
        "{cmdline}"
    );
}

#[test]
fn through_the_api_then_from_a_registry_then_from_a_url() {
    let test = "update_sources";
    let Some((fx, disk_path)) = disk_or_skip(test, Some(DISK_SIZE)) else {
        return;
    };
    let started = Instant::now();
    let image = fixture::default_image();
    let running = running_version();
    let v: Vec<String> = (1..=3).map(|n| later_version(&running, n)).collect();
    let builds: Vec<OtherBuild> = v
        .iter()
        .enumerate()
        .map(|(i, version)| {
            let name = format!("v{}", i + 1);
            OtherBuild::assemble(&fx.path(&name), &image, version, &format!("sources-{name}"))
                .unwrap()
        })
        .collect();
    let (api_bundle, api_len) = builds[0].bundle("v1", str::to_string).unwrap();
    let (registry_bundle, registry_len) = builds[1].bundle("v2", str::to_string).unwrap();
    let (url_bundle, url_len) = builds[2].bundle("v3", str::to_string).unwrap();
    // The registry and the web server get the exact bundles, without the disk padding.
    for (b, len) in [(&registry_bundle, registry_len), (&url_bundle, url_len)] {
        std::fs::File::options()
            .write(true)
            .open(b)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    let registry = Registry::start(&fx.path("registry")).unwrap();
    let tag = format!("berth/os:{}", v[1]);
    push_bundle(
        &registry_bundle,
        &registry.addr,
        &format!("{}/{tag}", registry.addr),
        &fx.dir,
    )
    .unwrap();
    let www = fx.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::rename(&url_bundle, www.join("v3.bundle")).unwrap();
    let web = FileServer::start(&www).unwrap();
    let prepared = started.elapsed();

    let guest_registry = format!("{REGISTRY_ADDR}:{REGISTRY_PORT}");
    let guest_web = format!("{HTTP_ADDR}:{HTTP_PORT}");
    let user_data = format!(
        "hostname = \"update-sources\"\n\n[machine.registries]\ninsecure = [\"{guest_registry}\", \"{guest_web}\"]\n"
    );
    let mut cfg = VmConfig::new(Firmware::Bios, disk_path.clone());
    cfg.no_reboot = false;
    // vdb: the first bundle; vdc: the config drive.
    cfg.extra_drives.push(api_bundle);
    cfg.extra_drives.push(fx.config_drive(&user_data).unwrap());
    cfg.guest_forwards = vec![
        GuestForward {
            addr: REGISTRY_ADDR,
            port: REGISTRY_PORT,
            host_port: registry.port,
        },
        GuestForward {
            addr: HTTP_ADDR,
            port: HTTP_PORT,
            host_port: web.port,
        },
    ];

    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for("berth: booting slot A", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    wait_marked_good(&mut vm, "A").unwrap();
    let status = update_status(&mut vm).unwrap();
    assert_eq!(status["booted"], "A", "{status}");
    assert_eq!(slot_json(&status, Slot::B)["state"], "empty", "{status}");
    vm.run_ok(&format!("echo kept > {STATE_FILE} && sync"), CMD)
        .unwrap();
    let booted_a = started.elapsed();

    // A→B: the bundle as a file on the machine, streamed through the API by berthctl.
    vm.run_ok(
        &format!("head -c {api_len} /dev/vdb > /var/lib/berth/next.bundle"),
        APPLY,
    )
    .unwrap();
    apply_and_reboot(&mut vm, "/var/lib/berth/next.bundle", Slot::B);
    assert_eq!(os_release_field(&mut vm, "VERSION_ID").unwrap(), v[0]);
    wait_marked_good(&mut vm, "B").unwrap();
    assert_both_good(&mut vm, Slot::B, &running, &v[0]);
    vm.run_ok("rm /var/lib/berth/next.bundle", CMD).unwrap();
    let via_api = started.elapsed();

    // B→A: from the registry, by reference.
    wait_network(&mut vm);
    apply_and_reboot(&mut vm, &format!("{guest_registry}/{tag}"), Slot::A);
    assert_eq!(os_release_field(&mut vm, "VERSION_ID").unwrap(), v[1]);
    assert_eq!(os_release_field(&mut vm, "BUILD_ID").unwrap(), "sources-v2");
    wait_marked_good(&mut vm, "A").unwrap();
    assert_both_good(&mut vm, Slot::A, &v[1], &v[0]);
    let via_registry = started.elapsed();

    // A→B: from a plain HTTP URL.
    wait_network(&mut vm);
    apply_and_reboot(&mut vm, &format!("http://{guest_web}/v3.bundle"), Slot::B);
    assert_eq!(os_release_field(&mut vm, "VERSION_ID").unwrap(), v[2]);
    assert_eq!(os_release_field(&mut vm, "BUILD_ID").unwrap(), "sources-v3");
    wait_marked_good(&mut vm, "B").unwrap();
    assert_both_good(&mut vm, Slot::B, &v[1], &v[2]);
    assert_eq!(web.served(), vec!["GET /v3.bundle".to_string()]);
    let via_url = started.elapsed();

    // Only the forwards lead out: the same server at the host's user-network address is out
    // of reach (the user network is restricted).
    let (code, out) = vm
        .run(
            &format!(
                "timeout 10 wget -q -T 5 -O /dev/null http://10.0.2.2:{}/v3.bundle",
                web.port
            ),
            CMD,
        )
        .unwrap();
    assert!(
        code != 0 && code != 127,
        "the guest reached the host: {code} {out}"
    );
    assert_eq!(web.served().len(), 1, "{:?}", web.served());

    assert_eq!(
        vm.run_ok(&format!("cat {STATE_FILE}"), CMD).unwrap().trim(),
        "kept"
    );
    power_off(&mut vm).unwrap();
    let env = disk::boot_state(&disk_path).unwrap();
    assert_eq!(env.state(Slot::A), SlotState::Good, "{env:?}");
    assert_eq!(env.state(Slot::B), SlotState::Good, "{env:?}");
    assert_eq!(env.next_boot(), Some(Slot::B), "{env:?}");
    eprintln!(
        "{test}: bundles and servers ready {:?}, A good {:?}, via API {:?}, via registry {:?}, via URL {:?}, total {:?}",
        prepared,
        booted_a - prepared,
        via_api - booted_a,
        via_registry - via_api,
        via_url - via_registry,
        started.elapsed()
    );
}

/// A bad bundle in the disk of bad bundles.
struct Bad {
    what: &'static str,
    /// Where it starts in the disk (1 MiB-aligned) and how many bytes of it are there.
    offset: u64,
    len: u64,
    /// The file's length in the guest: longer than `len` when the rest is a hole.
    file_len: u64,
    /// What the refusal must say.
    reason: &'static str,
}

/// Lays the bundles out in one file at 1 MiB-aligned offsets.
fn bad_bundles_disk(path: &Path, bundles: Vec<(Bad, Vec<u8>)>) -> Vec<Bad> {
    let f = std::fs::File::create(path).unwrap();
    let mut at = 0u64;
    let mut out = Vec::new();
    for (mut bad, bytes) in bundles {
        bad.offset = at;
        bad.len = bytes.len() as u64;
        f.write_all_at(&bytes, at).unwrap();
        at += bad.len.div_ceil(1 << 20) * (1 << 20);
        out.push(bad);
    }
    f.set_len(at).unwrap();
    out
}

fn bad(what: &'static str, reason: &'static str, bytes: Vec<u8>) -> (Bad, Vec<u8>) {
    let file_len = bytes.len() as u64;
    (
        Bad {
            what,
            offset: 0,
            len: 0,
            file_len,
            reason,
        },
        bytes,
    )
}

fn flipped(bytes: &[u8], at: u64) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at as usize] ^= 0xff;
    b
}

/// Every file on the ESP with its MD5, read from a read-only mount that is gone afterwards
/// (berth-init mounts the ESP read-write during an update).
fn esp_digests(vm: &mut Vm, esp_dev: &str) -> String {
    vm.run_ok(
        &format!(
            "(mkdir -p /tmp/esp && mount -t vfat -o ro {esp_dev} /tmp/esp && \
             (cd /tmp/esp && find . -type f | sort | xargs md5sum); r=$?; umount /tmp/esp; exit $r)"
        ),
        CMD,
    )
    .unwrap()
}

#[test]
fn refused_bundles_change_nothing() {
    let test = "update_refused";
    let Some((fx, disk_path)) = disk_or_skip(test, Some(DISK_SIZE)) else {
        return;
    };
    let started = Instant::now();
    let running = running_version();
    let next = later_version(&running, 1);
    let older = earlier_version(&running).expect("the running version is above 0.0.0");
    let build =
        OtherBuild::assemble(&fx.path("next"), &fixture::default_image(), &next, test).unwrap();
    let (good_path, good_len) = build.bundle("good", str::to_string).unwrap();
    let mut good = std::fs::read(&good_path).unwrap();
    good.truncate(good_len as usize);
    let layout = BundleLayout::read(&good_path).unwrap();

    let keys = fx.path("other-keys");
    let out = Command::new(
        fixture::default_image()
            .parent()
            .unwrap()
            .join("bin/berth-image"),
    )
    .args(["keygen", "--out"])
    .arg(&keys)
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let unknown_key = build
        .bundle_signed("unknown-key", &keys.join("berth.key"), &next)
        .unwrap();
    let downgrade = build
        .bundle_signed(
            "downgrade",
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/keys/test-key.key"),
            &older,
        )
        .unwrap();
    // A root payload of 129 MiB for a 128 MiB slot: only the header and the manifest go to
    // the machine, the rest of the file there is a hole, so the refusal must come before a
    // payload byte is read (zeros would fail the root's SHA-256 otherwise).
    let too_large_path = build.bundle_with_root_of("too-large", 129 << 20).unwrap();
    let too_large_layout = BundleLayout::read(&too_large_path).unwrap();
    let too_large_len = std::fs::metadata(&too_large_path).unwrap().len();
    let mut too_large = vec![0u8; too_large_layout.root_offset as usize];
    std::fs::File::open(&too_large_path)
        .unwrap()
        .read_exact_at(&mut too_large, 0)
        .unwrap();
    std::fs::remove_file(&too_large_path).unwrap();

    // One byte of the signed manifest, inside the build id's value: still valid JSON.
    let manifest_at = layout.manifest_offset
        + layout
            .manifest
            .windows(test.len())
            .position(|w| w == test.as_bytes())
            .expect("the build id in the manifest") as u64;
    let mut changed_manifest = good.clone();
    changed_manifest[manifest_at as usize] = b'X';

    let mut bundles = vec![
        bad(
            "signed by an unknown key",
            "not among the trusted keys",
            std::fs::read(&unknown_key).unwrap(),
        ),
        bad(
            "truncated in the root payload",
            "truncated",
            good[..(layout.root_offset + layout.root_size / 2) as usize].to_vec(),
        ),
        bad(
            "a byte of the root payload flipped",
            "root payload: SHA-256",
            flipped(&good, layout.root_offset + layout.root_size / 2),
        ),
        bad(
            "a byte of the kernel payload flipped",
            "kernel payload: SHA-256",
            flipped(&good, layout.kernel_offset + layout.kernel_size / 2),
        ),
        bad(
            "the manifest changed after signing",
            "changed after signing",
            changed_manifest,
        ),
        bad(
            "a downgrade",
            "refusing a downgrade",
            std::fs::read(&downgrade).unwrap(),
        ),
        bad("a root too large for the slot", "holds only", too_large),
    ];
    bundles.last_mut().unwrap().0.file_len = too_large_len;
    let bads = bad_bundles_disk(&fx.path("bad-bundles.img"), bundles);
    let prepared = started.elapsed();

    let esp = disk::partition(&disk_path, "berth-boot").unwrap();
    let esp_dev = format!("/dev/vda{}", esp.number);
    let mut cfg = VmConfig::new(Firmware::Bios, disk_path.clone());
    cfg.extra_drives.push(fx.path("bad-bundles.img"));
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for("berth: booting slot A", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    wait_marked_good(&mut vm, "A").unwrap();
    let status_before = update_status(&mut vm).unwrap();
    assert_eq!(status_before["booted"], "A", "{status_before}");
    assert_eq!(status_before["next"], "A", "{status_before}");
    assert_eq!(
        slot_json(&status_before, Slot::B)["state"],
        "empty",
        "{status_before}"
    );
    let esp_before = esp_digests(&mut vm, &esp_dev);
    assert!(esp_before.contains("./grub/grubenv2"), "{esp_before}");
    let booted = started.elapsed();

    let mut times = Vec::new();
    for b in &bads {
        let t = Instant::now();
        // Whole MiBs with dd, then the bundle's exact length; a hole up to its file length.
        let file = "/var/lib/berth/bad.bundle";
        vm.run_ok(
            &format!(
                "dd if=/dev/vdb bs=1M skip={} count={} 2>/dev/null | head -c {} > {file} && \
                 dd if=/dev/null of={file} bs=1 seek={} 2>/dev/null",
                b.offset >> 20,
                b.len.div_ceil(1 << 20),
                b.len,
                b.file_len
            ),
            APPLY,
        )
        .unwrap();
        let size = vm.run_ok(&format!("wc -c < {file}"), CMD).unwrap();
        assert_eq!(size.trim(), b.file_len.to_string(), "{}", b.what);
        let (code, out) = vm
            .run(&format!("berthctl update apply {file}"), APPLY)
            .unwrap();
        assert_ne!(code, 0, "{}: applied:\n{out}", b.what);
        assert!(
            out.contains(b.reason),
            "{}: the error does not say {:?}:\n{out}",
            b.what,
            b.reason
        );
        eprintln!(
            "{}: {}",
            b.what,
            out.lines()
                .find(|l| l.contains(b.reason))
                .and_then(|l| l.rsplit("\x1b[K").next())
                .unwrap_or("")
        );
        let status = update_status(&mut vm).unwrap();
        assert_eq!(status, status_before, "{}", b.what);
        assert_eq!(esp_digests(&mut vm, &esp_dev), esp_before, "{}", b.what);
        let cmdline = vm.run_ok("cat /proc/cmdline", CMD).unwrap();
        assert!(cmdline.contains("berth.slot=A"), "{}: {cmdline}", b.what);
        vm.run_ok(&format!("rm {file}"), CMD).unwrap();
        times.push((b.what, t.elapsed()));
    }
    let refused = started.elapsed();

    power_off(&mut vm).unwrap();
    let env = disk::boot_state(&disk_path).unwrap();
    assert_eq!(env.state(Slot::A), SlotState::Good, "{env:?}");
    assert_eq!(env.state(Slot::B), SlotState::Empty, "{env:?}");
    assert_eq!(env.next_boot(), Some(Slot::A), "{env:?}");
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for("berth: booting slot A", BOOT).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    let status = update_status(&mut vm).unwrap();
    assert_eq!(status["booted"], "A", "{status}");
    assert_eq!(slot_json(&status, Slot::A)["state"], "good", "{status}");
    assert_eq!(slot_json(&status, Slot::B)["state"], "empty", "{status}");
    power_off(&mut vm).unwrap();
    eprintln!(
        "{test}: bundles ready {prepared:?}, A good {:?}, refusals {:?} ({times:?}), power-off and boot again {:?}, total {:?}",
        booted - prepared,
        refused - booted,
        started.elapsed() - refused,
        started.elapsed()
    );
}
