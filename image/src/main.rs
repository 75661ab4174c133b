//! `berth-image disk ...`: assembles Berth's bootable disk image and its conversions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_image::assemble::{self, DiskInputs};
use berth_image::convert::Format;
use berth_image::layout::Layout;

const USAGE: &str = "usage:
  berth-image disk --layout FILE --grub-cfg FILE --cmdline FILE --kernel BZIMAGE \
      --kernel-release REL --rootfs DIR --state DIR --version V --out DIR \
      [--work DIR] [--epoch SECONDS] [--formats raw,qcow2,vhd,vmdk] [--key A.pub,B.pub]
  berth-image cidata --user-data FILE --out FILE
  berth-image bios-install --disk FILE [--core core.img] [--boot boot.img]
      (points the MBR at GRUB's core image in the bios-boot partition of a finished disk)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-image: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("disk") => disk(&args[1..]),
        Some("cidata") => {
            let opts = options(&args[1..], &["user-data", "out"])?;
            let get = |k: &str| {
                opts.get(k)
                    .ok_or_else(|| format!("--{k} is required\n{USAGE}"))
            };
            berth_image::cidata::build(Path::new(get("user-data")?), Path::new(get("out")?))
                .map_err(|e| e.to_string())
        }
        Some("bios-install") => bios_install(&args[1..]),
        Some("keygen") => berth_image::bundle::cli::keygen(&args[1..]),
        Some("bundle") => berth_image::bundle::cli::bundle(&args[1..]),
        Some("verify-bundle") => berth_image::bundle::cli::verify(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}\n{}", berth_image::bundle::cli::USAGE);
            Ok(())
        }
        _ => Err(format!("{USAGE}\n{}", berth_image::bundle::cli::USAGE)),
    }
}

/// Parses `--key value` pairs; every key must be one of `known`.
fn options(args: &[String], known: &[&str]) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    let mut it = args.iter();
    while let Some(key) = it.next() {
        let name = key
            .strip_prefix("--")
            .filter(|k| known.contains(k))
            .ok_or_else(|| format!("unknown argument {key:?}\n{USAGE}"))?;
        let value = it.next().ok_or_else(|| format!("{key} needs a value"))?;
        map.insert(name.to_string(), value.clone());
    }
    Ok(map)
}

fn disk(args: &[String]) -> Result<(), String> {
    let opts = options(
        args,
        &[
            "layout",
            "grub-cfg",
            "cmdline",
            "kernel",
            "kernel-release",
            "rootfs",
            "state",
            "version",
            "out",
            "work",
            "epoch",
            "formats",
            "key",
        ],
    )?;
    let get = |k: &str| {
        opts.get(k)
            .cloned()
            .ok_or_else(|| format!("--{k} is required\n{USAGE}"))
    };
    let path = |k: &str| get(k).map(PathBuf::from);
    let layout = Layout::load(&path("layout")?).map_err(|e| e.to_string())?;
    let cmdline_file = path("cmdline")?;
    let cmdline = std::fs::read_to_string(&cmdline_file)
        .map_err(|e| format!("{}: {e}", cmdline_file.display()))?;
    let cmdline = cmdline
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let epoch = match opts.get("epoch") {
        Some(e) => e
            .parse()
            .map_err(|_| format!("--epoch {e:?} is not a number"))?,
        None => 0,
    };
    let formats = match opts.get("formats") {
        Some(list) => list
            .split(',')
            .map(|f| Format::parse(f.trim()).ok_or_else(|| format!("unknown format {f:?}")))
            .collect::<Result<Vec<_>, _>>()?,
        None => Format::CONVERTED.to_vec(),
    };
    let out = path("out")?;
    let work = opts
        .get("work")
        .map(PathBuf::from)
        .unwrap_or_else(|| out.join("work"));
    let inputs = DiskInputs {
        layout,
        grub_cfg: path("grub-cfg")?,
        cmdline,
        kernel: path("kernel")?,
        kernel_release: get("kernel-release")?,
        rootfs: path("rootfs")?,
        state: path("state")?,
        version: get("version")?,
        epoch,
    };
    for p in [
        &inputs.grub_cfg,
        &inputs.kernel,
        &inputs.rootfs,
        &inputs.state,
    ] {
        if !Path::new(p).exists() {
            return Err(format!("{} does not exist", p.display()));
        }
    }
    // Public keys the root trusts for update bundles.
    if let Some(keys) = opts.get("key") {
        berth_image::bundle::cli::embed_keys(&inputs.rootfs, keys)?;
    }
    let manifest = assemble::build(&inputs, &work, &out, &formats).map_err(|e| e.to_string())?;
    for o in &manifest.outputs {
        println!(
            "{:<12} {:>6.1} MiB ({:.1} MiB allocated)",
            o.file,
            o.size as f64 / 1048576.0,
            o.allocated as f64 / 1048576.0
        );
    }
    println!("root hash    {}", manifest.root.root_hash);
    Ok(())
}

fn bios_install(args: &[String]) -> Result<(), String> {
    use berth_image::{gpt::Gpt, grub};
    let opts = options(args, &["disk", "core", "boot"])?;
    let disk_path = opts
        .get("disk")
        .ok_or_else(|| format!("--disk is required\n{USAGE}"))?;
    let core = opts.get("core").map(String::as_str).unwrap_or("core.img");
    let boot = opts
        .get("boot")
        .map(String::as_str)
        .unwrap_or(grub::BOOT_IMG);
    let mut disk = std::fs::File::options()
        .read(true)
        .write(true)
        .open(disk_path)
        .map_err(|e| format!("{disk_path}: {e}"))?;
    let gpt = Gpt::read(&mut disk).map_err(|e| format!("{disk_path}: {e}"))?;
    let bios_type = berth_image::guid::Guid::parse(berth_image::gpt::types::BIOS_BOOT)
        .map_err(|e| e.to_string())?;
    let part = gpt
        .partitions
        .iter()
        .find(|p| p.type_guid == bios_type)
        .ok_or_else(|| format!("{disk_path}: no BIOS boot partition"))?;
    let core_img = grub::read(Path::new(core)).map_err(|e| e.to_string())?;
    let boot_img = grub::read(Path::new(boot)).map_err(|e| e.to_string())?;
    grub::install_bios(&disk, &boot_img, &core_img, part.first_lba, part.size())
        .map_err(|e| e.to_string())?;
    disk.sync_all().map_err(|e| format!("{disk_path}: {e}"))
}
