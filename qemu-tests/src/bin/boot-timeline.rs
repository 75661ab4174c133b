//! Boot timeline of the Berth image under QEMU (TCG), for bench/boot.sh: kernel start, PID 1
//! start, first container running, demo HTTP 200, from kernel timestamps and the wall clock
//! since QEMU started; berth-init's RSS; and the demo container's setup, step by step (the
//! line berth-init logs per container start), and berth-init's own milestones from PID 1 to the
//! demo container (its kmsg lines: boot phases, units loaded, each unit started). Usage:
//! boot-timeline [RUNS] (default 3). `BERTH_TIMELINE_MACHINES=bios1,uefi1` boots only those
//! machines (firmware and vCPU count; default all four), for quicker before/after comparisons.
//! `BERTH_TIMELINE_IMAGES=a.img,b.img` compares images instead: per machine their boots
//! alternate one at a time (so a slow stretch of the host hits every image alike), each boot
//! is listed, and berth-init's memory is not read (no wait for the settled uptime).

use std::time::Duration;

use berth_qemu_tests::{disk, fixture, http, median, Firmware, Fixture, Vm, VmConfig};

const LIMIT: Duration = Duration::from_secs(300);

struct Run {
    grub: f64,
    kernel_start: f64,
    pid1_wall: f64,
    pid1_kernel: f64,
    first_unit_kernel: f64,
    demo_kernel: f64,
    http_wall: f64,
    /// None when not read (comparisons).
    memory: Option<Memory>,
    /// The demo container's setup steps, in order, guest milliseconds.
    setup: Vec<(String, f64)>,
    /// berth-init's log lines until the demo container started, ms after PID 1 started.
    milestones: Vec<(String, f64)>,
}

/// berth-init's kmsg lines from `dmesg`, each as (message without pids, ms after `pid1_s`),
/// up to and including the line that says the demo container started.
fn parse_milestones(dmesg: &str, pid1_s: f64) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in dmesg.lines() {
        let Some((_, message)) = line.split_once("berth-init: ") else {
            continue;
        };
        let Some(at) = berth_qemu_tests::vm::kernel_timestamp(line) else {
            continue;
        };
        // Pids differ between boots; the rest of a line names the same step.
        let message = message.split(", pid ").next().unwrap_or(message).trim();
        // The setup line, timed: its end, and (with its total) when the setup task began.
        if let Some((unit, rest)) = message.split_once(": setup total ") {
            let at_ms = (at - pid1_s) * 1000.0;
            if let Some(total) = rest.split(' ').next().and_then(|t| t.parse::<f64>().ok()) {
                out.push((format!("{unit}: setup began"), at_ms - total));
            }
            out.push((format!("{unit}: setup done"), at_ms));
            continue;
        }
        out.push((message.to_string(), (at - pid1_s) * 1000.0));
        if message == "unit demo-web: started" {
            break;
        }
    }
    out
}

/// The steps of berth-init's `unit NAME: setup total T ms: step a, step b, ...` line.
fn parse_setup(line: &str) -> Option<Vec<(String, f64)>> {
    let (head, steps) = line.split_once(" ms: ")?;
    let total: f64 = head.rsplit_once("total ")?.1.trim().parse().ok()?;
    let mut out = vec![("total".to_string(), total)];
    for step in steps.trim().split(", ") {
        let (name, ms) = step.rsplit_once(' ')?;
        out.push((name.to_string(), ms.parse().ok()?));
    }
    Some(out)
}

/// berth-init's memory from /proc/1/status, KiB.
struct Memory {
    rss_kib: u64,
    peak_kib: u64,
    anon_kib: u64,
    file_kib: u64,
}

/// Guest uptime (s) at which berth-init's memory is read.
const SETTLED_S: u32 = 15;

fn one(
    image: &std::path::Path,
    firmware: Firmware,
    cpus: u32,
    read_memory: bool,
) -> Result<Run, String> {
    let e = |e: berth_qemu_tests::HarnessError| e.to_string();
    let fx = Fixture::new("timeline").map_err(e)?;
    let disk_path = fx.path("disk.img");
    disk::copy_raw(image, &disk_path, None).map_err(e)?;
    let mut cfg = VmConfig::new(firmware, disk_path);
    cfg.cpus = cpus;
    cfg.forward.push(80);
    let mut vm = Vm::start(&cfg, &fx.dir).map_err(e)?;
    let port = vm.host_port(80).ok_or("no forwarded port")?;
    let grub = vm.wait_for("berth: booting slot", LIMIT).map_err(e)?;
    let (pid1_wall, pid1_kernel) = vm
        .wait_for_kernel_line("Run /sbin/init as init process", LIMIT)
        .map_err(e)?;
    let pid1_kernel = pid1_kernel.ok_or("no kernel timestamp on the init line")?;
    // berth-init logs each unit's start to kmsg, so the lines carry kernel timestamps.
    let (_, first_unit_kernel) = vm
        .wait_for_kernel_line(": started, pid", LIMIT)
        .map_err(e)?;
    let first_unit_kernel = first_unit_kernel.ok_or("no kernel timestamp on the unit line")?;
    let (_, demo_kernel) = vm
        .wait_for_kernel_line("unit demo-web: started", LIMIT)
        .map_err(e)?;
    let demo_kernel = demo_kernel.ok_or("no kernel timestamp on the demo line")?;
    http::wait_for_200(port, "/", LIMIT).map_err(e)?;
    let http_wall = vm.elapsed().as_secs_f64();
    vm.wait_for_shell(LIMIT).map_err(e)?;
    let memory = if read_memory {
        Some(read_memory_settled(&mut vm)?)
    } else {
        None
    };
    // One read of berth-init's kernel log lines: the setup line and the milestones.
    let dmesg = vm
        .run_ok("dmesg | grep 'berth-init: '", Duration::from_secs(60))
        .map_err(e)?;
    let setup = dmesg
        .lines()
        .find(|l| l.contains("unit demo-web: setup total "))
        .and_then(|l| parse_setup(l.trim_end_matches('\r')))
        .ok_or("no setup steps of demo-web in the kernel log")?;
    let milestones = parse_milestones(&dmesg, pid1_kernel);
    Ok(Run {
        grub: grub.as_secs_f64(),
        kernel_start: pid1_wall.as_secs_f64() - pid1_kernel,
        pid1_wall: pid1_wall.as_secs_f64(),
        pid1_kernel,
        first_unit_kernel,
        demo_kernel,
        http_wall,
        memory,
        setup,
        milestones,
    })
}

/// berth-init's memory once the guest has been up for [`SETTLED_S`] seconds.
fn read_memory_settled(vm: &mut Vm) -> Result<Memory, String> {
    let e = |e: berth_qemu_tests::HarnessError| e.to_string();
    // berth-init drops the code pages only boot needed 10 s after it starts: its memory is
    // read once the guest has been up for SETTLED_S seconds, with the boot's peak beside it.
    let status = vm
        .run_ok(
            &format!(
                "while [ $(cut -d. -f1 /proc/uptime) -lt {SETTLED_S} ]; do sleep 1; done; \
                 grep -E '^(VmRSS|VmHWM|RssAnon|RssFile):' /proc/1/status"
            ),
            Duration::from_secs(120),
        )
        .map_err(e)?;
    let field = |name: &str| -> Result<u64, String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or(format!("no {name} in {status:?}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
        file_kib: field("RssFile:")?,
    })
}

fn main() -> std::process::ExitCode {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3)
        .max(1);
    let compared = std::env::var("BERTH_TIMELINE_IMAGES").unwrap_or_default();
    let images: Vec<std::path::PathBuf> = if compared.trim().is_empty() {
        vec![fixture::default_image()]
    } else {
        compared
            .split(',')
            .map(|p| std::path::PathBuf::from(p.trim()))
            .collect()
    };
    if let Some(missing) = images.iter().find(|i| !i.is_file()) {
        eprintln!("no image at {} (run: make image)", missing.display());
        return std::process::ExitCode::FAILURE;
    }
    // One vCPU as the tests boot; two as `make run` does.
    let all_machines = [
        (Firmware::Bios, 1),
        (Firmware::Bios, 2),
        (Firmware::Uefi, 1),
        (Firmware::Uefi, 2),
    ];
    let wanted = std::env::var("BERTH_TIMELINE_MACHINES").unwrap_or_default();
    let machines: Vec<(Firmware, u32)> = all_machines
        .into_iter()
        .filter(|(f, c)| wanted.is_empty() || machine_listed(&wanted, *f, *c))
        .collect();
    if machines.is_empty() {
        eprintln!("BERTH_TIMELINE_MACHINES={wanted:?} names none of bios1, bios2, uefi1, uefi2");
        return std::process::ExitCode::FAILURE;
    }
    if !compared.trim().is_empty() {
        return compare(&images, &machines, runs);
    }
    let image = &images[0];
    // Per machine: its label and the median of each setup step, and of each milestone.
    let mut steps: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    let mut milestones: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for (firmware, cpus) in machines {
        let mut all = Vec::new();
        for i in 0..runs {
            match one(image, firmware, cpus, true) {
                Ok(r) => all.push(r),
                Err(err) => {
                    eprintln!("{firmware:?} ({cpus} vCPU) run {i}: {err}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        let m = |f: fn(&Run) -> f64| median(all.iter().map(f).collect());
        println!(
            "{firmware:?}, {cpus} vCPU (median of {runs} boots, seconds since QEMU start unless noted)"
        );
        println!("  GRUB picks the slot          {:6.2}", m(|r| r.grub));
        println!(
            "  kernel starts                {:6.2}",
            m(|r| r.kernel_start)
        );
        println!(
            "  PID 1 starts                 {:6.2}   (kernel time {:.2})",
            m(|r| r.pid1_wall),
            m(|r| r.pid1_kernel)
        );
        println!(
            "  first unit started           {:6.0} ms after PID 1 (guest time)",
            m(|r| (r.first_unit_kernel - r.pid1_kernel) * 1000.0)
        );
        println!(
            "  demo unit started            {:6.0} ms after PID 1 (guest time)",
            m(|r| (r.demo_kernel - r.pid1_kernel) * 1000.0)
        );
        println!("  demo answers HTTP 200        {:6.2}", m(|r| r.http_wall));
        println!(
            "  berth-init RSS               {:6.0} KiB at {SETTLED_S} s uptime ({:.0} anonymous, {:.0} file); boot peak {:.0} KiB",
            m(|r| r.memory.as_ref().map_or(0.0, |m| m.rss_kib as f64)),
            m(|r| r.memory.as_ref().map_or(0.0, |m| m.anon_kib as f64)),
            m(|r| r.memory.as_ref().map_or(0.0, |m| m.file_kib as f64)),
            m(|r| r.memory.as_ref().map_or(0.0, |m| m.peak_kib as f64))
        );
        let label = format!("{firmware:?}, {cpus} vCPU");
        steps.push((label.clone(), medians_by_name(&all, |r| &r.setup)));
        milestones.push((label, medians_by_name(&all, |r| &r.milestones)));
    }
    print_table("demo container setup, guest ms", &steps, runs);
    print_table(
        "berth-init's log lines until the demo container started, guest ms after PID 1",
        &milestones,
        runs,
    );
    std::process::ExitCode::SUCCESS
}

/// One measure of a boot, as a comparison lists it.
type Measure = (&'static str, fn(&Run) -> f64);

/// The measures a comparison lists per boot: name and value.
const COMPARED: [Measure; 7] = [
    // Firmware, GRUB and the kernel: what the guest's own times below do not see.
    ("PID 1 starts, s after QEMU start", |r| r.pid1_wall),
    ("berth-init's first line, ms after PID 1", |r| {
        r.milestones.first().map_or(f64::NAN, |(_, ms)| *ms)
    }),
    ("first unit started, ms after PID 1", |r| {
        (r.first_unit_kernel - r.pid1_kernel) * 1000.0
    }),
    ("setup total, ms", |r| {
        r.setup.first().map_or(f64::NAN, |(_, ms)| *ms)
    }),
    ("demo started, ms after PID 1", |r| {
        (r.demo_kernel - r.pid1_kernel) * 1000.0
    }),
    ("demo started -> HTTP 200, guest ms", |r| {
        // The wall clock of the 200, on the guest's clock through the PID 1 line's two times.
        (r.pid1_kernel + (r.http_wall - r.pid1_wall) - r.demo_kernel) * 1000.0
    }),
    ("HTTP 200, s after QEMU start", |r| r.http_wall),
];

/// Boots each image in turn, `runs` rounds per machine, and prints every boot and the
/// medians per image, then the setup steps and milestones per image.
fn compare(
    images: &[std::path::PathBuf],
    machines: &[(Firmware, u32)],
    runs: usize,
) -> std::process::ExitCode {
    for &(firmware, cpus) in machines {
        let mut all: Vec<Vec<Run>> = images.iter().map(|_| Vec::new()).collect();
        for round in 0..runs {
            for (image, runs_of) in images.iter().zip(all.iter_mut()) {
                match one(image, firmware, cpus, false) {
                    Ok(r) => runs_of.push(r),
                    Err(err) => {
                        eprintln!(
                            "{firmware:?} ({cpus} vCPU) {} round {round}: {err}",
                            image.display()
                        );
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
        }
        println!("{firmware:?}, {cpus} vCPU: {runs} boots per image, alternating");
        for (i, image) in images.iter().enumerate() {
            println!("  [{i}] {}", image.display());
        }
        for (name, f) in COMPARED {
            println!("  {name}");
            for (i, runs_of) in all.iter().enumerate() {
                let values: Vec<f64> = runs_of.iter().map(f).collect();
                let shown: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
                // The host moves between a fast and a slow speed from one boot to the next (see
                // bench/RESULTS.md): the fastest boot says what the image costs where medians
                // of a few boots can differ by how many landed on the slow side.
                let fastest = values.iter().copied().reduce(f64::min).unwrap_or(0.0);
                println!(
                    "    [{i}] median {:8.2}   fastest {:8.2}   boots {}",
                    median(values.clone()),
                    fastest,
                    shown.join(" / ")
                );
            }
        }
        let label = |i: usize| format!("[{i}]");
        let steps: Vec<(String, Vec<(String, f64)>)> = all
            .iter()
            .enumerate()
            .map(|(i, r)| (label(i), medians_by_name(r, |r| &r.setup)))
            .collect();
        let milestones: Vec<(String, Vec<(String, f64)>)> = all
            .iter()
            .enumerate()
            .map(|(i, r)| (label(i), medians_by_name(r, |r| &r.milestones)))
            .collect();
        print_table("demo container setup, guest ms", &steps, runs);
        print_table("log lines, guest ms after PID 1", &milestones, runs);
    }
    std::process::ExitCode::SUCCESS
}

/// Whether the comma-separated `list` names the machine (`bios1`, `uefi2`, ...).
fn machine_listed(list: &str, firmware: Firmware, cpus: u32) -> bool {
    let name = format!("{}{cpus}", format!("{firmware:?}").to_lowercase());
    list.split(',')
        .any(|m| m.trim().eq_ignore_ascii_case(&name))
}

/// Each name of the first run's `series` with the median of its values over all runs.
fn medians_by_name(all: &[Run], series: fn(&Run) -> &Vec<(String, f64)>) -> Vec<(String, f64)> {
    let Some(first) = all.first() else {
        return Vec::new();
    };
    series(first)
        .iter()
        .map(|(name, _)| {
            let values = all
                .iter()
                .filter_map(|r| series(r).iter().find(|(n, _)| n == name).map(|(_, v)| *v));
            (name.clone(), median(values.collect()))
        })
        .collect()
}

/// Named values (rows) per machine (columns), as a Markdown table.
fn print_table(title: &str, steps: &[(String, Vec<(String, f64)>)], runs: usize) {
    println!("{title} (median of {runs} boots)");
    let header: Vec<&str> = steps.iter().map(|(label, _)| label.as_str()).collect();
    println!("| step | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(header.len()));
    let Some((_, first)) = steps.first() else {
        return;
    };
    for (name, _) in first {
        let cells: Vec<String> = steps
            .iter()
            .map(|(_, m)| {
                m.iter()
                    .find(|(n, _)| n == name)
                    .map_or("-".to_string(), |(_, v)| format!("{v:.1}"))
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::{machine_listed, parse_milestones, parse_setup};
    use berth_qemu_tests::Firmware;

    #[test]
    fn machines_are_picked_by_firmware_and_vcpus() {
        assert!(machine_listed("bios1, UEFI2", Firmware::Bios, 1));
        assert!(machine_listed("bios1, UEFI2", Firmware::Uefi, 2));
        assert!(!machine_listed("bios1, UEFI2", Firmware::Bios, 2));
    }

    #[test]
    fn milestones_are_timed_from_pid1_until_the_demo_started() {
        let dmesg = "[    2.000000] berth-init: berth-init 0.1.0 starting (PID 1)\n\
                     [    2.100000] berth-init: boot: mount-tmp done\n\
                     [    2.300000] berth-init: unit network: started, pid 301\n\
                     [    2.700000] berth-init: unit demo-web: setup total 1.0 ms: OCI spec 1.0\n\
                     [    2.750000] berth-init: unit demo-web: started, pid 330\n\
                     [    3.000000] berth-init: unit timesync: started, pid 340\n";
        let m = parse_milestones(dmesg, 1.95);
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "berth-init 0.1.0 starting (PID 1)",
                "boot: mount-tmp done",
                "unit network: started",
                "unit demo-web: setup began",
                "unit demo-web: setup done",
                "unit demo-web: started"
            ]
        );
        assert!((m[3].1 - 749.0).abs() < 1e-6, "{m:?}");
        assert!((m[4].1 - 750.0).abs() < 1e-6, "{m:?}");
        assert!((m[5].1 - 800.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn the_setup_line_parses_into_named_steps() {
        let line = "[    3.100000] berth-init: unit demo-web: setup total 21.1 ms: \
                    leftovers: network 20.1, OCI spec 1.0\r";
        let steps = parse_setup(line.trim_end_matches('\r'));
        assert_eq!(
            steps,
            Some(vec![
                ("total".to_string(), 21.1),
                ("leftovers: network".to_string(), 20.1),
                ("OCI spec".to_string(), 1.0),
            ])
        );
        assert_eq!(parse_setup("unit demo-web: started"), None);
    }
}
