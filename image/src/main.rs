//! `berth-image disk ...`: assembles Berth's bootable disk image and its conversions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_image::assemble::{self, DiskInputs, GrubDirs, RootSource};
use berth_image::convert::Format;
use berth_image::extensions::ExtensionSource;
use berth_image::layout::Layout;

const USAGE: &str = "usage:
  berth-image disk --layout FILE --grub-cfg FILE --cmdline FILE --kernel BZIMAGE \
      (--rootfs DIR | --root-image EROFS) --state DIR --version V --out DIR \
      [--kernel-release REL] [--work DIR] [--epoch SECONDS] [--formats raw,qcow2,vhd,vmdk] \
      [--grub-pc-dir DIR] [--grub-efi-dir DIR] [--input NAME=FILE]... [--source-commit C]
      [--extension NAME=EROFS]... (system extensions in slot A, after the root, under its verity tree)
  berth-image sbom --metadata CARGO_METADATA_JSON --version V --out FILE \
      [--epoch SECONDS] [--source-commit C] [--component NAME=VERSION=LICENSE]...
      [--key A.pub,B.pub]
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
        Some("sbom") => sbom(&args[1..]),
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

/// Options that may be given more than once.
const REPEATABLE: &[&str] = &["input", "component", "extension"];

/// `--key value` options of a command (see [`berth_image::args`]).
fn options_multi(args: &[String], known: &[&str]) -> Result<HashMap<String, Vec<String>>, String> {
    berth_image::args::options_multi(args, known, REPEATABLE, USAGE)
}

/// Like [`options_multi`] for commands without repeatable options.
fn options(args: &[String], known: &[&str]) -> Result<HashMap<String, String>, String> {
    berth_image::args::options(args, known, USAGE)
}

fn disk(args: &[String]) -> Result<(), String> {
    let multi = options_multi(
        args,
        &[
            "layout",
            "grub-cfg",
            "cmdline",
            "kernel",
            "kernel-release",
            "rootfs",
            "root-image",
            "state",
            "version",
            "out",
            "work",
            "epoch",
            "formats",
            "grub-pc-dir",
            "grub-efi-dir",
            "input",
            "source-commit",
            "key",
            "extension",
        ],
    )?;
    let opts: HashMap<&str, &str> = multi
        .iter()
        .filter(|(k, _)| !REPEATABLE.contains(&k.as_str()))
        .filter_map(|(k, v)| v.first().map(|v| (k.as_str(), v.as_str())))
        .collect();
    let get = |k: &str| {
        opts.get(k)
            .map(|v| v.to_string())
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
    let epoch = epoch(opts.get("epoch").copied())?;
    let formats = match opts.get("formats") {
        Some(list) => list
            .split(',')
            .map(|f| Format::parse(f.trim()).ok_or_else(|| format!("unknown format {f:?}")))
            .collect::<Result<Vec<_>, _>>()?,
        None => Format::CONVERTED.to_vec(),
    };
    let root = match (opts.get("rootfs"), opts.get("root-image")) {
        (Some(dir), None) => RootSource::Tree(PathBuf::from(dir)),
        (None, Some(img)) => RootSource::Image(PathBuf::from(img)),
        _ => return Err(format!("give one of --rootfs and --root-image\n{USAGE}")),
    };
    let kernel = path("kernel")?;
    let kernel_release = match opts.get("kernel-release") {
        Some(r) => r.to_string(),
        None => berth_image::kernel::release(&kernel).map_err(|e| e.to_string())?,
    };
    let mut recorded_inputs = BTreeMap::new();
    for spec in multi.get("input").into_iter().flatten() {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| format!("--input {spec:?}: expected NAME=FILE"))?;
        let hash = berth_image::derive::sha256_file(Path::new(file)).map_err(|e| e.to_string())?;
        recorded_inputs.insert(name.to_string(), hash);
    }
    let extensions = multi
        .get("extension")
        .into_iter()
        .flatten()
        .map(|spec| ExtensionSource::parse(spec))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let out = path("out")?;
    let work = opts
        .get("work")
        .map(PathBuf::from)
        .unwrap_or_else(|| out.join("work"));
    let defaults = GrubDirs::default();
    let inputs = DiskInputs {
        layout,
        grub_cfg: path("grub-cfg")?,
        cmdline,
        kernel,
        kernel_release,
        root,
        extensions,
        state: path("state")?,
        version: get("version")?,
        epoch,
        grub: GrubDirs {
            pc: opts.get("grub-pc-dir").map_or(defaults.pc, PathBuf::from),
            efi: opts.get("grub-efi-dir").map_or(defaults.efi, PathBuf::from),
        },
        recorded_inputs,
        source_commit: opts.get("source-commit").map(|c| c.to_string()),
    };
    let root_path = match &inputs.root {
        RootSource::Tree(p) | RootSource::Image(p) => p,
    };
    for p in inputs.extensions.iter().map(|e| &e.image).chain([
        &inputs.grub_cfg,
        &inputs.kernel,
        root_path,
        &inputs.state,
        &inputs.grub.pc,
        &inputs.grub.efi,
    ]) {
        if !Path::new(p).exists() {
            return Err(format!("{} does not exist", p.display()));
        }
    }
    // Public keys the root trusts for update bundles.
    if let Some(keys) = opts.get("key") {
        match &inputs.root {
            RootSource::Tree(tree) => berth_image::bundle::cli::embed_keys(tree, keys)?,
            // A prebuilt root already holds what its own build put under /usr/share/berth/keys.
            RootSource::Image(img) => {
                return Err(format!(
                    "--key needs --rootfs: {} is already built; put the keys into its tree",
                    img.display()
                ))
            }
        }
    }
    let manifest = assemble::build(&inputs, &work, &out, &formats).map_err(|e| e.to_string())?;
    for o in &manifest.outputs {
        println!(
            "{:<12} {:>6.1} MiB ({:.1} MiB allocated)  sha256 {}",
            o.file,
            o.size as f64 / 1048576.0,
            o.allocated as f64 / 1048576.0,
            o.sha256
        );
    }
    for e in &manifest.extensions {
        println!(
            "extension    {} {:.1} MiB at offset {}  sha256 {}",
            e.name,
            e.size as f64 / 1048576.0,
            e.offset,
            e.sha256
        );
    }
    println!("root hash    {}", manifest.root.root_hash);
    Ok(())
}

fn epoch(text: Option<&str>) -> Result<u64, String> {
    match text {
        Some(e) => e
            .parse()
            .map_err(|_| format!("--epoch {e:?} is not a number")),
        None => Ok(0),
    }
}

/// The binaries' packages: what the SBOM lists crates for.
const SBOM_ROOTS: &[&str] = &["berth-init", "berth-runtime", "berth-image"];

fn sbom(args: &[String]) -> Result<(), String> {
    use berth_image::sbom;
    let multi = options_multi(
        args,
        &[
            "metadata",
            "version",
            "out",
            "epoch",
            "source-commit",
            "component",
        ],
    )?;
    let one = |k: &str| multi.get(k).and_then(|v| v.first()).map(String::as_str);
    let need = |k: &str| one(k).ok_or_else(|| format!("--{k} is required\n{USAGE}"));
    let metadata_path = need("metadata")?;
    let metadata =
        std::fs::read_to_string(metadata_path).map_err(|e| format!("{metadata_path}: {e}"))?;
    let crates = sbom::crates(&metadata, SBOM_ROOTS).map_err(|e| e.to_string())?;
    let components = multi
        .get("component")
        .into_iter()
        .flatten()
        .map(|c| sbom::Component::parse(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let what = sbom::Describe {
        version: need("version")?,
        epoch: epoch(one("epoch"))?,
        source_commit: one("source-commit"),
    };
    let out = need("out")?;
    std::fs::write(out, sbom::spdx(&what, &components, &crates))
        .map_err(|e| format!("{out}: {e}"))?;
    println!(
        "{out}: {} components, {} crates",
        components.len(),
        crates.len()
    );
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
