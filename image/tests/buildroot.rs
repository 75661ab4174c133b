//! Checks of the Buildroot external tree without Buildroot itself: the defconfig evaluated with
//! kconfiglib against a model of the Buildroot symbols it relies on (tests/fixtures/
//! buildroot-model.in, checked against the release named in buildroot/README.md) keeps every
//! setting and is what savedefconfig writes back; every file and path exists; it reuses
//! `configs/` instead of copying it; the package follows cargo-package conventions; and
//! post-image assembles the disk with berth-image exactly like `make image`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn br() -> PathBuf {
    repo().join("buildroot")
}

fn read(rel: &str) -> String {
    let p = br().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn defconfig() -> BTreeMap<String, String> {
    read("configs/berth_x86_64_defconfig")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// Resolves `$(BR2_EXTERNAL_BERTH_PATH)/x` and `$BR2_EXTERNAL_BERTH_PATH/x` to files.
fn external_paths(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for marker in ["$(BR2_EXTERNAL_BERTH_PATH)", "$BR2_EXTERNAL_BERTH_PATH"] {
        for (i, _) in text.match_indices(marker) {
            let rest = &text[i + marker.len()..];
            let end = rest
                .find(|c: char| c == '"' || c.is_whitespace() || c == ')')
                .unwrap_or(rest.len());
            let rel = &rest[..end];
            // Globs (external.mk) and bare prefixes are checked elsewhere.
            if rel.contains('*') || rel.is_empty() || rel == "/" {
                continue;
            }
            out.push(br().join(rel.trim_start_matches('/')));
        }
    }
    out
}

#[test]
fn every_file_of_the_external_tree_exists() {
    for f in [
        "external.desc",
        "Config.in",
        "external.mk",
        "configs/berth_x86_64_defconfig",
        "package/berth/Config.in",
        "package/berth/berth.mk",
        "board/berth/post-build.sh",
        "board/berth/post-image.sh",
        "board/berth/device_table.txt",
    ] {
        assert!(br().join(f).is_file(), "buildroot/{f} missing");
    }
    assert!(read("external.desc").lines().any(|l| l == "name: BERTH"));
    assert!(read("external.mk").contains("$(BR2_EXTERNAL_BERTH_PATH)/package/*/*.mk"));
}

#[test]
fn every_referenced_path_exists() {
    let mut checked = 0;
    for rel in [
        "Config.in",
        "configs/berth_x86_64_defconfig",
        "board/berth/post-build.sh",
        "board/berth/post-image.sh",
        "package/berth/berth.mk",
    ] {
        for p in external_paths(&read(rel)) {
            assert!(
                p.exists(),
                "{rel} names {} which does not exist",
                p.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "only {checked} paths found: the check itself is broken"
    );
    // Paths the board scripts read from configs/.
    for rel in ["grub/cmdline", "grub/grub.cfg", "units", "rootfs"] {
        assert!(repo().join("configs").join(rel).exists(), "configs/{rel}");
    }
}

#[test]
fn defconfig_reuses_the_shared_configs() {
    let d = defconfig();
    let expect = [
        (
            "BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES",
            "configs/kernel/berth.config",
        ),
        (
            "BR2_PACKAGE_BUSYBOX_CONFIG_FRAGMENT_FILES",
            "configs/busybox/berth.config",
        ),
        ("BR2_ROOTFS_OVERLAY", "configs/rootfs"),
    ];
    for (key, target) in expect {
        let v = d.get(key).unwrap_or_else(|| panic!("{key} not set"));
        assert_eq!(
            v,
            &format!("$(BR2_EXTERNAL_BERTH_PATH)/../{target}"),
            "{key} must point at the shared {target}"
        );
    }
    for key in [
        "BR2_PACKAGE_BERTH",
        "BR2_TARGET_ROOTFS_EROFS",
        "BR2_TARGET_GRUB2_I386_PC",
        "BR2_TARGET_GRUB2_X86_64_EFI",
        "BR2_INIT_NONE",
    ] {
        assert_eq!(d.get(key).map(String::as_str), Some("y"), "{key}");
    }
    // The kernel is the same version line as the offline build's linux-source-6.12.
    assert!(d["BR2_LINUX_KERNEL_CUSTOM_VERSION_VALUE"].starts_with("6.12."));
}

#[test]
fn nothing_from_configs_is_copied_into_the_tree() {
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let (mut shared, mut ours) = (Vec::new(), Vec::new());
    files(&repo().join("configs"), &mut shared);
    files(&br(), &mut ours);
    for o in &ours {
        let content = std::fs::read(o).unwrap();
        for s in &shared {
            assert_ne!(
                content,
                std::fs::read(s).unwrap(),
                "{} copies {}",
                o.display(),
                s.display()
            );
        }
    }
}

#[test]
fn package_follows_cargo_package_conventions() {
    let mk = read("package/berth/berth.mk");
    let config_in = read("package/berth/Config.in");
    assert!(config_in.contains("config BR2_PACKAGE_BERTH\n"));
    assert!(config_in.contains("depends on BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS"));
    assert!(mk.trim_end().ends_with("$(eval $(host-cargo-package))"));
    assert!(mk.contains("$(eval $(cargo-package))"));
    assert!(mk.contains("BERTH_SITE_METHOD = local"));
    // Variables are prefixed with the upper-cased package name.
    for line in mk
        .lines()
        .filter(|l| l.contains(" = ") && !l.starts_with('\t'))
    {
        let var = line.split(" = ").next().unwrap();
        assert!(
            var.starts_with("BERTH_") || var.starts_with("HOST_BERTH_"),
            "{var} is not a BERTH_ variable"
        );
    }
    // The version is the workspace's.
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .map(|v| v.trim_end_matches('"'))
        .unwrap();
    assert!(mk.contains(&format!("BERTH_VERSION = {version}\n")));
    // Every binary it builds exists in the workspace.
    let manifests: String = ["init", "init/ctl", "runtime", "image"]
        .iter()
        .map(|c| std::fs::read_to_string(repo().join(c).join("Cargo.toml")).unwrap())
        .collect();
    for bin in ["berth-init", "berthctl", "berth-runtime", "berth-image"] {
        assert!(mk.contains(&format!("--bin {bin}")) || mk.contains(&format!("/{bin} ")));
        assert!(
            manifests.contains(&format!("name = \"{bin}\"")),
            "no binary {bin}"
        );
    }
}

/// The `--flag value` pairs of the `berth-image disk` call in a shell script: a command
/// continued with backslashes, or a bash array `ASSEMBLE=(disk ...)`.
fn disk_flags(script: &str) -> BTreeMap<String, String> {
    let call = if let Some(at) = script.find("ASSEMBLE=(disk") {
        let rest = &script[at..];
        rest[..rest.find(")\n").unwrap_or(rest.len())].to_string()
    } else {
        script
            .replace("\\\n", " ")
            .lines()
            .find(|l| l.contains("berth-image\" disk"))
            .unwrap_or_else(|| panic!("no berth-image disk call in:\n{script}"))
            .to_string()
    };
    let words: Vec<&str> = call.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0].starts_with("--"))
        .map(|w| (w[0].to_string(), w[1].trim_matches('"').to_string()))
        .collect()
}

#[test]
fn post_image_assembles_with_berth_image_like_make_image() {
    let post = read("board/berth/post-image.sh");
    let code: String = post
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    // One assembly path: no step of it is done in shell.
    for tool in [
        "veritysetup",
        "grub-mkimage",
        "mkfs.vfat",
        "mcopy",
        "mke2fs",
        "genimage",
        "grubenv",
        "boot.cfg",
    ] {
        assert!(!code.contains(tool), "post-image.sh runs {tool} itself");
    }
    let ours = disk_flags(&post);
    let theirs =
        disk_flags(&std::fs::read_to_string(repo().join("scripts/build-image.sh")).unwrap());
    for (flag, shared) in [
        ("--layout", "configs/layout/disk.toml"),
        ("--grub-cfg", "configs/grub/grub.cfg"),
        ("--cmdline", "configs/grub/cmdline"),
    ] {
        assert_eq!(
            theirs.get(flag).map(String::as_str),
            Some(shared),
            "build-image.sh {flag}"
        );
        let v = ours
            .get(flag)
            .unwrap_or_else(|| panic!("post-image.sh lacks {flag}"));
        assert_eq!(
            v.replace("$BERTH_CONFIGS/", "configs/"),
            shared,
            "post-image.sh {flag}"
        );
    }
    for flag in ["--kernel", "--state", "--version", "--epoch", "--out"] {
        assert!(ours.contains_key(flag), "post-image.sh lacks {flag}");
    }
    assert_eq!(
        ours.get("--root-image").map(String::as_str),
        Some("$BINARIES_DIR/rootfs.erofs")
    );
    // berth-image is there when post-image runs: the target package depends on the host one.
    let mk = read("package/berth/berth.mk");
    assert!(mk.contains("\nBERTH_DEPENDENCIES = host-berth\n"));
    assert!(post.contains("\"$HOST_DIR/bin/berth-image\" disk"));
}

fn python() -> &'static str {
    // Debian's interpreter, where python3-kconfiglib is installed.
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Runs the Kconfig check on `defconfig`; (success, output).
fn kconfig_check(defconfig: &Path) -> (bool, String) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let out = Command::new(python())
        .arg(here.join("buildroot_kconfig.py"))
        .arg(here.join("fixtures/buildroot-model.in"))
        .arg(br())
        .arg(defconfig)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named 'kconfiglib'"),
        "python3-kconfiglib is missing (run: make deps)"
    );
    (out.status.success(), text)
}

#[test]
fn defconfig_survives_buildroot_kconfig_and_savedefconfig() {
    let (ok, text) = kconfig_check(&br().join("configs/berth_x86_64_defconfig"));
    assert!(ok, "{text}");
    assert!(text.contains("savedefconfig round-trips"), "{text}");
}

#[test]
fn kconfig_check_names_a_dropped_setting_and_its_unmet_dependency() {
    // Without the kernel headers series, Buildroot takes "older than 3.2" for the kernel's own
    // headers: no glibc, hence uClibc, no wide characters, no GRUB, no Rust, no berth.
    let dir = std::env::temp_dir().join(format!("berth-kconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("defconfig");
    let text: String = read("configs/berth_x86_64_defconfig")
        .lines()
        .filter(|l| !l.starts_with("BR2_PACKAGE_HOST_LINUX_HEADERS_CUSTOM_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&broken, format!("BR2_TOOLCHAIN_BUILDROOT_GLIBC=y\n{text}")).unwrap();
    let (ok, out) = kconfig_check(&broken);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "{out}");
    for dropped in [
        "BR2_TOOLCHAIN_BUILDROOT_GLIBC='y' is dropped",
        "BR2_PACKAGE_BERTH='y' is dropped",
        "BR2_TARGET_GRUB2='y' is dropped",
        "BR2_TARGET_GRUB2_I386_PC='y' is dropped",
        "BR2_TARGET_GRUB2_X86_64_EFI='y' is dropped",
    ] {
        assert!(out.contains(dropped), "{dropped}:\n{out}");
    }
    assert!(
        out.contains("unmet: depends on BR2_TOOLCHAIN_HEADERS_AT_LEAST_3_2"),
        "{out}"
    );
    assert!(
        out.contains("the choice took BR2_TOOLCHAIN_BUILDROOT_UCLIBC instead"),
        "{out}"
    );
}

#[test]
fn board_scripts_are_executable_shell() {
    use std::os::unix::fs::PermissionsExt;
    for s in ["board/berth/post-build.sh", "board/berth/post-image.sh"] {
        let p = br().join(s);
        assert!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o111 != 0,
            "{s}"
        );
        let ok = std::process::Command::new("sh")
            .arg("-n")
            .arg(&p)
            .status()
            .unwrap();
        assert!(ok.success(), "{s} has shell syntax errors");
    }
}
