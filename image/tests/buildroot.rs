//! Structural checks of the Buildroot external tree (Buildroot itself cannot be fetched here):
//! every file exists, every path it names exists, it reuses `configs/` instead of copying it,
//! the package follows cargo-package conventions, and genimage.cfg is the layout of
//! configs/layout/disk.toml.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_image::layout::{parse_size, Layout};

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
        "board/berth/genimage.cfg",
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
    let manifests: String = ["init", "runtime", "image"]
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

#[test]
fn genimage_layout_matches_the_shared_layout() {
    let layout = Layout::load(&repo().join("configs/layout/disk.toml")).unwrap();
    let cfg = read("board/berth/genimage.cfg");
    let mut parts = Vec::new();
    for block in cfg.split("\tpartition ").skip(1) {
        let name = block.split_whitespace().next().unwrap().to_string();
        let field = |k: &str| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix(k)?.trim().strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        parts.push((
            name,
            field("size").unwrap(),
            field("partition-type-uuid").unwrap(),
        ));
    }
    assert_eq!(parts.len(), layout.partitions.len());
    for ((name, size, type_uuid), spec) in parts.iter().zip(&layout.partitions) {
        assert_eq!(name, &spec.name);
        assert_eq!(parse_size(size).unwrap(), spec.size, "{name}");
        assert_eq!(type_uuid, spec.role.type_guid(), "{name}");
    }
    // post-image refers to root A by the PARTUUID genimage gives it.
    let image = read("board/berth/post-image.sh");
    let uuid = cfg
        .lines()
        .find_map(|l| l.trim().strip_prefix("partition-uuid = "))
        .unwrap()
        .trim_matches('"');
    assert!(image.contains(&format!("ROOT_A_UUID={uuid}")));
    // The ESP label GRUB searches for is the layout's.
    let label = layout.partitions[1].label.clone().unwrap();
    assert!(image.contains(&format!("--label --set=root {label}")));
    assert!(image.contains(&format!("-n {label}")));
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
