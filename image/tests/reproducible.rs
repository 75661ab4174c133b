//! Reproducible images: two assemblies of the same inputs give the same bytes in every output,
//! although their build trees were written in another order, with other file times, into other
//! directories, and the second runs with the clock more than a year ahead (libfaketime, so
//! every tool the builder calls sees that clock).
//!
//! The second test does the same with the real image of `make image`: it re-runs the assembly
//! `scripts/build-image.sh` recorded (out/assemble.args) in a scratch directory at the faked
//! time and compares the outputs with the hashes in out/manifest.json.
//!
//! qemu-img draws a new random VMDK CID and VHD ID on every conversion; one test converts the
//! same disk many times, so that every way those values are written is met.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use berth_image::convert::{convert, Format};

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-repro-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// berth-image with `args`: `shifted`, the clock more than a year ahead for it and every tool it
/// runs; otherwise the present, with SOURCE_DATE_EPOCH exported as `make image` does (tools
/// read it).
fn berth_image(args: &[String], shifted: bool, cwd: &Path) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-image"));
    cmd.args(args).current_dir(cwd);
    cmd.env_remove("SOURCE_DATE_EPOCH");
    if !shifted {
        cmd.env("SOURCE_DATE_EPOCH", "1700000000");
    }
    if shifted {
        assert!(
            Path::new(FAKETIME_LIB).exists(),
            "{FAKETIME_LIB} missing (Debian package faketime; run: make deps)"
        );
        cmd.env("LD_PRELOAD", FAKETIME_LIB)
            .env("FAKETIME", "+400d")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "berth-image {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn set_mtime(path: &Path, secs: u64) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    std::fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| std::fs::File::open(path))
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// A root and a state tree with the same content; `reverse` writes them in the opposite order
/// and with other file times.
fn trees(dir: &Path, reverse: bool) -> (PathBuf, PathBuf) {
    let rootfs = dir.join("rootfs");
    let state = dir.join("state");
    let mut names: Vec<&str> = vec!["alpha", "beta", "gamma", "delta", "epsilon"];
    if reverse {
        names.reverse();
    }
    for n in &names {
        for (top, sub) in [(&rootfs, "usr/lib/berth"), (&state, "units")] {
            let d = top.join(sub).join(n);
            std::fs::create_dir_all(&d).unwrap();
            let f = d.join(format!("{n}.toml"));
            std::fs::write(&f, format!("[unit]\ndescription = \"{n}\"\n")).unwrap();
            set_mtime(
                &f,
                if reverse {
                    2_000_000_000
                } else {
                    1_000_000_000
                },
            );
        }
    }
    std::fs::create_dir_all(rootfs.join("sbin")).unwrap();
    std::fs::write(rootfs.join("sbin/init"), vec![0x7fu8; 3 * 4096 + 17]).unwrap();
    symlink("../sbin/init", rootfs.join("usr/init")).unwrap();
    std::fs::create_dir_all(state.join("logs")).unwrap();
    (rootfs, state)
}

fn assemble_args(dir: &Path, rootfs: &Path, state: &Path, out: &Path) -> Vec<String> {
    let kernel = dir.join("bzImage");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    let cmdline = dir.join("cmdline");
    std::fs::write(&cmdline, "# shared\nconsole=ttyS0 panic=5\n").unwrap();
    let r = repo();
    [
        "disk",
        "--layout",
        &r.join("configs/layout/disk.toml").display().to_string(),
        "--grub-cfg",
        &r.join("configs/grub/grub.cfg").display().to_string(),
        "--cmdline",
        &cmdline.display().to_string(),
        "--kernel",
        &kernel.display().to_string(),
        "--kernel-release",
        "6.12.0-test",
        "--rootfs",
        &rootfs.display().to_string(),
        "--state",
        &state.display().to_string(),
        "--version",
        "0.0.0-test",
        "--epoch",
        "1700000000",
        "--formats",
        "raw,qcow2,vhd,vmdk",
        "--work",
        &dir.join("work").display().to_string(),
        "--out",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

const OUTPUTS: &[&str] = &["berth.img", "berth.qcow2", "berth.vhd", "berth.vmdk"];

#[test]
fn same_inputs_give_the_same_bytes_at_another_time_in_another_directory() {
    let a = scratch("a");
    let b = scratch("b");
    let (root_a, state_a) = trees(&a, false);
    let (root_b, state_b) = trees(&b, true);
    berth_image(
        &assemble_args(&a, &root_a, &state_a, &a.join("out")),
        false,
        &a,
    );
    berth_image(
        &assemble_args(&b, &root_b, &state_b, &b.join("out")),
        true,
        &b,
    );
    let mut differ = Vec::new();
    for f in OUTPUTS {
        if sha256(&a.join("out").join(f)) != sha256(&b.join("out").join(f)) {
            differ.push(*f);
        }
    }
    if sha256(&a.join("work/root-a.img")) != sha256(&b.join("work/root-a.img")) {
        differ.push("root (erofs + hash tree)");
    }
    assert!(differ.is_empty(), "not reproducible: {differ:?}");
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn converting_a_disk_again_and_again_gives_the_same_bytes() {
    // qemu-img's VMDK CID is 7 digits or fewer in 1 of 16 draws, and it leaves bytes behind
    // in the descriptor when its second draw is shorter than its first: 1 conversion in ~150
    // came out different before the descriptor was rewritten whole. ~5 s.
    let dir = scratch("convert");
    let raw = dir.join("disk.raw");
    let disk: Vec<u8> = (0..1u32 << 20)
        .map(|i| if i % 8192 < 600 { (i % 251) as u8 } else { 0 })
        .collect();
    std::fs::write(&raw, disk).unwrap();
    let seed = berth_image::derive::Seed::new(["converted again"]);
    for (format, times) in [(Format::Vmdk, 300), (Format::Vhd, 20)] {
        let out = dir.join(format!("disk.{}", format.extension()));
        let mut seen = BTreeMap::<String, u32>::new();
        for _ in 0..times {
            convert(&raw, &out, format, &seed).unwrap();
            *seen.entry(sha256(&out)).or_default() += 1;
        }
        assert_eq!(seen.len(), 1, "{format:?}: outputs and counts {seen:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn built_image_reassembles_to_the_hashes_in_its_manifest() {
    // Only where `make image` ran first (`make test` sets BERTH_IMAGE).
    let Ok(image) = std::env::var("BERTH_IMAGE") else {
        eprintln!("skipped: BERTH_IMAGE is not set (make test sets it after make image)");
        return;
    };
    let out_dir = Path::new(&image).parent().unwrap().to_path_buf();
    let args_file = out_dir.join("assemble.args");
    let text = std::fs::read_to_string(&args_file)
        .unwrap_or_else(|e| panic!("{}: {e} (written by make image)", args_file.display()));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap())
            .unwrap();
    let recorded: BTreeMap<String, String> = manifest["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["file"].as_str().unwrap().to_string(),
                o["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();

    let dir = scratch("rebuild");
    let mut args: Vec<String> = text.lines().map(str::to_string).collect();
    for (flag, value) in [("--out", dir.join("out")), ("--work", dir.join("work"))] {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{} has no {flag}", args_file.display()));
        args[i + 1] = value.display().to_string();
    }
    let root = args_file
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    berth_image(&args, true, &root);
    let mut differ = Vec::new();
    for (file, hash) in &recorded {
        let again = sha256(&dir.join("out").join(file));
        if &again != hash {
            differ.push(format!("{file}: recorded {hash}, again {again}"));
        }
    }
    let root_again = sha256(&dir.join("work/root-a.img"));
    if manifest["root_image_sha256"] != root_again.as_str() {
        differ.push(format!("root: again {root_again}"));
    }
    assert!(
        differ.is_empty(),
        "not reproducible:\n{}",
        differ.join("\n")
    );
    assert!(recorded.contains_key("berth.img") && recorded.contains_key("berth.qcow2"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn built_image_has_an_sbom_of_its_components_and_crates() {
    let Ok(image) = std::env::var("BERTH_IMAGE") else {
        eprintln!("skipped: BERTH_IMAGE is not set (make test sets it after make image)");
        return;
    };
    let path = Path::new(&image).parent().unwrap().join("sbom.spdx.json");
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let packages = doc["packages"].as_array().unwrap();
    let find = |name: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {}", path.display()))
    };
    for (name, license) in [
        ("linux", "GPL-2.0-only WITH Linux-syscall-note"),
        ("busybox", "GPL-2.0-only"),
        ("berth-init", "Apache-2.0"),
        ("berth-runtime", "Apache-2.0"),
        ("serde", "MIT OR Apache-2.0"),
    ] {
        let p = find(name);
        assert_eq!(p["licenseDeclared"], license, "{name}");
        assert!(
            p["versionInfo"].as_str().is_some_and(|v| !v.is_empty()),
            "{name}"
        );
    }
    // Every crate of Cargo.lock that is in the SBOM carries the locked version.
    let lock = std::fs::read_to_string(repo().join("Cargo.lock")).unwrap();
    let crates: Vec<&serde_json::Value> = packages
        .iter()
        .filter(|p| {
            p["SPDXID"]
                .as_str()
                .is_some_and(|id| id.starts_with("SPDXRef-crate-"))
        })
        .collect();
    assert!(crates.len() > 20, "only {} crates", crates.len());
    for c in crates {
        let entry = format!(
            "name = \"{}\"\nversion = \"{}\"",
            c["name"].as_str().unwrap(),
            c["versionInfo"].as_str().unwrap()
        );
        assert!(lock.contains(&entry), "{entry} not in Cargo.lock");
    }
}

#[test]
fn a_prebuilt_erofs_root_gives_the_same_disk_as_the_tree() {
    // Buildroot's post-image hands berth-image its rootfs.erofs (and GRUB's module directories)
    // instead of a tree: the rest of the assembly is the same, and so are the bytes.
    let a = scratch("tree");
    let b = scratch("image");
    let (root_a, state_a) = trees(&a, false);
    let (root_b, state_b) = trees(&b, false);
    berth_image(
        &assemble_args(&a, &root_a, &state_a, &a.join("out")),
        false,
        &a,
    );
    let erofs = b.join("rootfs.erofs");
    let made = Command::new("mkfs.erofs")
        .args(["--quiet", "--all-root", "-T1700000000"])
        .arg("-U00000000-0000-0000-0000-000000000000")
        .arg(&erofs)
        .arg(&root_b)
        .status()
        .unwrap();
    assert!(made.success());
    let mut args = assemble_args(&b, &root_b, &state_b, &b.join("out"));
    let i = args.iter().position(|x| x == "--rootfs").unwrap();
    args[i] = "--root-image".into();
    args[i + 1] = erofs.display().to_string();
    args.extend(
        [
            "--grub-pc-dir",
            "/usr/lib/grub/i386-pc",
            "--grub-efi-dir",
            "/usr/lib/grub/x86_64-efi",
        ]
        .map(String::from),
    );
    berth_image(&args, true, &b);
    for f in ["berth.img", "berth.qcow2"] {
        assert_eq!(
            sha256(&a.join("out").join(f)),
            sha256(&b.join("out").join(f)),
            "{f}"
        );
    }
    assert!(
        erofs.exists(),
        "the prebuilt root is copied, never consumed"
    );
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}
