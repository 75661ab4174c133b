//! A/B update costs under QEMU (TCG), for bench/update.sh: inside the guest, the time to apply
//! a bundle against `dd` of the same bytes from the same source to the same partition
//! (alternating, `RUNS` each); then the wall time from `berthctl update apply --reboot` to the
//! new system serving the demo; and the bundle's size; with 1 and 2 vCPUs. Usage: update-bench
//! [RUNS] (default 3).

use std::time::{Duration, Instant};

use berth_qemu_tests::update::{
    later_version, running_version, wait_marked_good, OtherBuild, APPLY, BOOT, CMD,
};
use berth_qemu_tests::{disk, fixture, http, median, Firmware, Fixture, Vm, VmConfig};

/// Guest seconds a shell command takes (from /proc/uptime, 10 ms resolution).
fn timed(vm: &mut Vm, command: &str) -> Result<f64, String> {
    let out = vm
        .run_ok(
            &format!(
                "a=$(cut -d' ' -f1 /proc/uptime); ( {command} ) >/dev/null; \
                 b=$(cut -d' ' -f1 /proc/uptime); echo \"took $a $b\""
            ),
            APPLY,
        )
        .map_err(|e| e.to_string())?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("took "))
        .ok_or(format!("no timing in {out:?}"))?;
    let mut it = line.split_whitespace().map(|v| v.parse::<f64>());
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Ok(b - a),
        _ => Err(format!("bad timing line {line:?}")),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn run(runs: usize, cpus: u32) -> Result<(), String> {
    let e = |e: berth_qemu_tests::HarnessError| e.to_string();
    let image = fixture::default_image();
    let fx = Fixture::new("update-bench").map_err(e)?;
    let disk_path = fx.path("disk.img");
    disk::copy_raw(&image, &disk_path, Some(1 << 30)).map_err(e)?;
    let version = later_version(&running_version(), 1);
    let build =
        OtherBuild::assemble(&fx.path("next"), &image, &version, "update-bench").map_err(e)?;
    let (bundle, len) = build.bundle("bench", str::to_string).map_err(e)?;
    let root_b = disk::partition(&disk_path, "berth-root-b").map_err(e)?;

    let mut cfg = VmConfig::new(Firmware::Bios, disk_path);
    cfg.cpus = cpus;
    cfg.no_reboot = false;
    cfg.forward.push(80);
    cfg.extra_drives.push(bundle);
    let mut vm = Vm::start(&cfg, &fx.dir).map_err(e)?;
    let port = vm.host_port(80).ok_or("no forwarded port")?;
    vm.wait_for("berth: booting slot A", BOOT).map_err(e)?;
    vm.wait_for_shell(BOOT).map_err(e)?;
    wait_marked_good(&mut vm, "A").map_err(e)?;

    // The same bytes, the same pipe from the attached disk, the same partition; dd syncs at
    // the end as the update does.
    let part = format!("/dev/vda{}", root_b.number);
    let dd = format!("head -c {len} /dev/vdb | dd of={part} bs=1048576 && sync");
    let apply = format!("head -c {len} /dev/vdb | /sbin/init update-apply -");
    let (mut t_dd, mut t_apply) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        t_dd.push(timed(&mut vm, &dd)?);
        t_apply.push(timed(&mut vm, &apply)?);
    }
    let (dd_s, apply_s) = (median(t_dd.clone()), median(t_apply.clone()));
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "bundle {:.1} MiB (root {:.1} MiB, kernel {:.1} MiB, header and manifest {} bytes)",
        mib(len),
        mib(size(&build.root())),
        mib(size(build.kernel())),
        len.saturating_sub(size(&build.root()) + size(build.kernel()))
    );
    println!("apply vs dd inside the guest (median of {runs}, guest seconds; all: dd {t_dd:?}, apply {t_apply:?})");
    println!(
        "  dd of the bundle's bytes to slot B   {dd_s:6.2} s  {:6.1} MiB/s",
        mib(len) / dd_s
    );
    println!(
        "  update-apply of the bundle           {apply_s:6.2} s  {:6.1} MiB/s  ({:.2}x dd)",
        mib(len) / apply_s,
        dd_s / apply_s
    );

    // berthctl update apply --reboot of a file on the machine, to the demo served by slot B.
    vm.run_ok(
        &format!("head -c {len} /dev/vdb > /var/lib/berth/next.bundle && sync"),
        APPLY,
    )
    .map_err(e)?;
    let start = Instant::now();
    vm.send("berthctl update apply /var/lib/berth/next.bundle --reboot")
        .map_err(e)?;
    vm.wait_for("berth: booting slot B", APPLY).map_err(e)?;
    let rebooting = start.elapsed();
    http::wait_for_200(port, "/", BOOT).map_err(e)?;
    let serving = start.elapsed();
    vm.wait_for_shell(BOOT).map_err(e)?;
    let version_now = vm
        .run_ok("sed -n 's/^VERSION_ID=//p' /etc/os-release", CMD)
        .map_err(e)?;
    if version_now.trim() != version {
        return Err(format!("slot B runs {version_now:?}, not {version}"));
    }
    println!("berthctl update apply --reboot (wall clock, QEMU TCG)");
    println!(
        "  apply + ordered reboot until GRUB boots B  {:6.2} s",
        rebooting.as_secs_f64()
    );
    println!(
        "  until the new version serves the demo      {:6.2} s",
        serving.as_secs_f64()
    );
    vm.power_button().map_err(e)?;
    vm.wait_exit(Duration::from_secs(120)).map_err(e)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3)
        .max(1);
    // One vCPU as the tests boot, two as `make run` does (the update's hashing then runs
    // beside the process feeding it). `-cpu max` was tried: its emulated SHA instructions
    // made the update slower (bench/RESULTS.md).
    for cpus in [1, 2] {
        println!("== {cpus} vCPU");
        if let Err(err) = run(runs, cpus) {
            eprintln!("update-bench: {err}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
