//! What the A/B update tests share: bundles of another build of the image, and the steps of
//! an update seen from the guest's admin shell.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{HarnessError, Result, Vm};

pub const BOOT: Duration = Duration::from_secs(300);
pub const CMD: Duration = Duration::from_secs(60);
pub const APPLY: Duration = Duration::from_secs(600);
/// Room for the state partition to grow: tests write files there.
pub const DISK_SIZE: u64 = 1 << 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The version in the workspace's Cargo.toml: the one the image under test runs.
pub fn running_version() -> String {
    std::fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .map(|v| v.trim_end_matches('"').to_string())
        .unwrap_or_default()
}

/// `v` with its patch number raised by `by` ("0.1.0", 1 gives "0.1.1").
pub fn later_version(v: &str, by: u64) -> String {
    let mut parts: Vec<u64> = v.split('.').filter_map(|p| p.parse().ok()).collect();
    if let Some(last) = parts.last_mut() {
        *last += by;
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// Another build of the image under test: its root tree with another version in os-release,
/// assembled again the way `make image` recorded it (out/assemble.args). Bundles of it are
/// signed with the repository's test key.
pub struct OtherBuild {
    dir: PathBuf,
    tool: PathBuf,
    kernel: String,
    pub version: String,
    pub build_id: String,
}

impl OtherBuild {
    /// Assembles the build in `dir` (which it owns from then on).
    pub fn assemble(dir: &Path, image: &Path, version: &str, build_id: &str) -> Result<Self> {
        Self::assemble_with(dir, image, version, build_id, &[])
    }

    /// Like [`OtherBuild::assemble`], with assembly options replaced (`(option, value)`, e.g.
    /// another `--extension`).
    pub fn assemble_with(
        dir: &Path,
        image: &Path,
        version: &str,
        build_id: &str,
        overrides: &[(&str, String)],
    ) -> Result<Self> {
        let out_dir = image
            .parent()
            .ok_or_else(|| HarnessError::Setup("image has no directory".into()))?;
        let recorded = std::fs::read_to_string(out_dir.join("assemble.args")).map_err(|e| {
            HarnessError::Setup(format!("assemble.args (written by make image): {e}"))
        })?;
        let mut args: Vec<String> = recorded.lines().map(str::to_string).collect();
        let value = |args: &[String], k: &str| {
            args.iter()
                .position(|a| a == k)
                .and_then(|i| args.get(i + 1).cloned())
                .ok_or_else(|| HarnessError::Setup(format!("assemble.args has no {k}")))
        };
        std::fs::create_dir_all(dir).map_err(crate::io_err(dir.display().to_string()))?;
        let rootfs = dir.join("rootfs");
        crate::run_tool(
            Command::new("cp")
                .arg("-a")
                .arg(value(&args, "--rootfs")?)
                .arg(&rootfs),
        )?;
        let os_release = rootfs.join("etc/os-release");
        let text = std::fs::read_to_string(&os_release).map_err(crate::io_err("os-release"))?;
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("VERSION_ID=") {
                    format!("VERSION_ID={version}\n")
                } else if l.starts_with("BUILD_ID=") {
                    format!("BUILD_ID={build_id}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        // The copy's os-release may be read-only (copied with its mode).
        let _ = std::fs::remove_file(&os_release);
        std::fs::write(&os_release, text).map_err(crate::io_err("write os-release"))?;
        let set = |args: &mut Vec<String>, k: &str, v: &str| match args.iter().position(|a| a == k)
        {
            Some(i) => args[i + 1] = v.to_string(),
            None => {
                args.push(k.to_string());
                args.push(v.to_string());
            }
        };
        let work = dir.join("work");
        let out = dir.join("out");
        set(&mut args, "--rootfs", &rootfs.display().to_string());
        set(&mut args, "--version", version);
        set(&mut args, "--work", &work.display().to_string());
        set(&mut args, "--out", &out.display().to_string());
        set(&mut args, "--formats", "raw");
        for (k, v) in overrides {
            set(&mut args, k, v);
        }
        // out/bin beside the image, or one level up for a profile's image (out/node/).
        let tool = [
            out_dir.join("bin/berth-image"),
            out_dir.join("../bin/berth-image"),
        ]
        .into_iter()
        .find(|t| t.is_file())
        .unwrap_or_else(|| out_dir.join("bin/berth-image"));
        crate::run_tool(Command::new(&tool).args(&args).current_dir(repo()))?;
        let kernel = value(&args, "--kernel")?;
        // Only the root and the manifest are needed from here on; the assembled disk is large.
        let _ = std::fs::remove_file(out.join("berth.img"));
        let _ = std::fs::remove_dir_all(&rootfs);
        Ok(OtherBuild {
            dir: dir.to_path_buf(),
            tool,
            kernel,
            version: version.to_string(),
            build_id: build_id.to_string(),
        })
    }

    /// The kernel the build boots.
    pub fn kernel(&self) -> &Path {
        Path::new(&self.kernel)
    }

    /// The build's root payload (erofs + verity hash tree), as a slot holds it.
    pub fn root(&self) -> PathBuf {
        self.dir.join("work/root-a.img")
    }

    /// A signed bundle of the build whose kernel arguments are the image's with `edit`
    /// applied to them (the identity for a normal update). Padded to whole sectors, to be
    /// attached as a disk; returns the path and the bundle's real length.
    pub fn bundle(&self, name: &str, edit: impl Fn(&str) -> String) -> Result<(PathBuf, u64)> {
        let key = repo().join("configs/keys/test-key.key");
        let root = self.dir.join("work/root-a.img");
        self.bundle_of(name, &key, &root, &self.version, edit)
    }

    /// A bundle of the build signed with `key` and claiming `version`, unpadded; returns its
    /// path.
    pub fn bundle_signed(&self, name: &str, key: &Path, version: &str) -> Result<PathBuf> {
        let root = self.dir.join("work/root-a.img");
        let (path, len) = self.bundle_of(name, key, &root, version, str::to_string)?;
        truncate(&path, len)?;
        Ok(path)
    }

    /// A validly signed bundle whose root payload (an empty filesystem of `data_bytes`, with
    /// its verity tree) is larger than the build's; unpadded. Only its header and manifest
    /// matter to an update that refuses it for its size.
    pub fn bundle_with_root_of(&self, name: &str, data_bytes: u64) -> Result<PathBuf> {
        let root = self.dir.join(format!("{name}.root"));
        let data_blocks = data_bytes.div_ceil(4096);
        // Sparse: the data is all zeros, and only the tree is written.
        let f = std::fs::File::create(&root).map_err(crate::io_err("create root"))?;
        f.set_len(data_blocks * 4096)
            .map_err(crate::io_err("size root"))?;
        drop(f);
        let out = Command::new("veritysetup")
            .arg("format")
            .arg(format!("--hash={}", berth_image::verity::HASH))
            .arg(format!("--data-blocks={data_blocks}"))
            .arg(format!("--hash-offset={}", data_blocks * 4096))
            .arg(&root)
            .arg(&root)
            .output()
            .map_err(crate::io_err("veritysetup"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .ok_or_else(|| {
                    HarnessError::Setup(format!("veritysetup format: no {name} in {text}"))
                })
        };
        let built: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.join("out/manifest.json"))
                .map_err(crate::io_err("manifest.json"))?,
        )
        .map_err(|e| HarnessError::Setup(format!("manifest.json: {e}")))?;
        let manifest = serde_json::json!({
            "version": self.version,
            "kernel_release": built["kernel_release"],
            "root": {
                "data_blocks": data_blocks,
                "hash_offset_blocks": data_blocks,
                "root_hash": field("Root hash:")?,
                "salt": field("Salt:")?,
            },
        });
        let manifest_path = self.dir.join(format!("{name}.manifest.json"));
        std::fs::write(&manifest_path, manifest.to_string())
            .map_err(crate::io_err("write manifest"))?;
        let key = repo().join("configs/keys/test-key.key");
        let bundle = self.dir.join(format!("{name}.bundle"));
        self.run_bundle(
            &key,
            &root,
            &manifest_path,
            &self.cmdline(name, str::to_string)?,
            &self.version,
            &bundle,
        )?;
        let _ = std::fs::remove_file(&root);
        Ok(bundle)
    }

    /// The image's kernel arguments with `edit` applied, in a file.
    fn cmdline(&self, name: &str, edit: impl Fn(&str) -> String) -> Result<PathBuf> {
        let cmdline = std::fs::read_to_string(repo().join("configs/grub/cmdline"))
            .map_err(crate::io_err("configs/grub/cmdline"))?;
        let edited: String = cmdline
            .lines()
            .map(|l| {
                if l.starts_with('#') || l.trim().is_empty() {
                    format!("{l}\n")
                } else {
                    format!("{}\n", edit(l))
                }
            })
            .collect();
        let cmdline_file = self.dir.join(format!("{name}.cmdline"));
        std::fs::write(&cmdline_file, edited).map_err(crate::io_err("write cmdline"))?;
        Ok(cmdline_file)
    }

    fn run_bundle(
        &self,
        key: &Path,
        root: &Path,
        manifest: &Path,
        cmdline: &Path,
        version: &str,
        out: &Path,
    ) -> Result<()> {
        crate::run_tool(
            Command::new(&self.tool)
                .arg("bundle")
                .arg("--key")
                .arg(key)
                .arg("--root")
                .arg(root)
                .arg("--kernel")
                .arg(&self.kernel)
                .arg("--manifest")
                .arg(manifest)
                .arg("--cmdline")
                .arg(cmdline)
                .args(["--build-id", &self.build_id, "--version", version])
                .arg("--out")
                .arg(out)
                .current_dir(repo()),
        )
        .map(drop)
    }

    fn bundle_of(
        &self,
        name: &str,
        key: &Path,
        root: &Path,
        version: &str,
        edit: impl Fn(&str) -> String,
    ) -> Result<(PathBuf, u64)> {
        let cmdline_file = self.cmdline(name, edit)?;
        let bundle = self.dir.join(format!("{name}.bundle"));
        self.run_bundle(
            key,
            root,
            &self.dir.join("out/manifest.json"),
            &cmdline_file,
            version,
            &bundle,
        )?;
        let len = std::fs::metadata(&bundle)
            .map_err(crate::io_err("bundle"))?
            .len();
        truncate(&bundle, len.div_ceil(512) * 512)?;
        Ok((bundle, len))
    }
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(crate::io_err(path.display().to_string()))?;
    f.set_len(len)
        .map_err(crate::io_err(format!("size {}", path.display())))
}

/// Where the parts of a bundle file are (see berth_image::bundle): the manifest's bytes and
/// the payloads' offsets and sizes.
#[derive(Debug, Clone)]
pub struct BundleLayout {
    pub manifest_offset: u64,
    pub manifest: Vec<u8>,
    pub root_offset: u64,
    pub root_size: u64,
    pub kernel_offset: u64,
    pub kernel_size: u64,
}

impl BundleLayout {
    pub fn read(path: &Path) -> Result<BundleLayout> {
        use berth_image::bundle::{Manifest, HEADER_LEN};
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(crate::io_err(path.display().to_string()))?;
        let mut header = [0u8; HEADER_LEN];
        f.read_exact(&mut header)
            .map_err(crate::io_err("bundle header"))?;
        let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
        let mut manifest = vec![0u8; len];
        f.read_exact(&mut manifest)
            .map_err(crate::io_err("bundle manifest"))?;
        let parsed: Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| HarnessError::Setup(format!("bundle manifest: {e}")))?;
        let root_offset = (HEADER_LEN + len) as u64;
        Ok(BundleLayout {
            manifest_offset: HEADER_LEN as u64,
            manifest,
            root_offset,
            root_size: parsed.root().size,
            kernel_offset: root_offset + parsed.root().size,
            kernel_size: parsed.kernel().size,
        })
    }
}

/// `v` made older: its last non-zero component lowered by one ("0.1.0" gives "0.0.0").
pub fn earlier_version(v: &str) -> Option<String> {
    let mut parts: Vec<u64> = v
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let last = parts.iter().rposition(|&p| p > 0)?;
    parts[last] -= 1;
    Some(
        parts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// Publishes `bundle` as `reference` in a registry with `berth-runtime image push-bundle`,
/// speaking plain HTTP to `insecure` (host:port).
pub fn push_bundle(bundle: &Path, insecure: &str, reference: &str, scratch: &Path) -> Result<()> {
    let config = scratch.join("push.toml");
    std::fs::write(
        &config,
        format!("[registries]\ninsecure = [\"{insecure}\"]\n"),
    )
    .map_err(crate::io_err("write push config"))?;
    let tool = crate::fixture::default_image()
        .parent()
        .map(|d| d.join("bin/berth-runtime"))
        .ok_or_else(|| HarnessError::Setup("image has no directory".into()))?;
    crate::run_tool(
        Command::new(tool)
            .arg("image")
            .arg("--config")
            .arg(&config)
            .arg("push-bundle")
            .arg(bundle)
            .arg(reference),
    )
    .map(drop)
}

/// The guest command that applies a bundle attached as `device` (exactly `len` bytes of it)
/// with `args` for update-apply.
pub fn apply_command(device: &str, len: u64, args: &str) -> String {
    format!("head -c {len} {device} | /sbin/init update-apply - {args}")
}

/// Waits until berth-init logged that the boot of `slot` was marked good.
pub fn wait_marked_good(vm: &mut Vm, slot: &str) -> Result<()> {
    let want = format!("boot of slot {slot} marked good");
    vm.run_until("dmesg | grep 'marked good'", BOOT, |out| {
        out.contains(&want)
    })
    .map(drop)
}

/// Ordered poweroff through the ACPI power button.
pub fn power_off(vm: &mut Vm) -> Result<()> {
    vm.power_button()?;
    let status = vm.wait_exit(Duration::from_secs(120))?;
    if !status.success() {
        return Err(HarnessError::Setup(format!("QEMU exited with {status}")));
    }
    Ok(())
}

/// `GET /v1/update` through berthctl in the guest.
pub fn update_status(vm: &mut Vm) -> Result<serde_json::Value> {
    let out = vm.run_ok("berthctl --json update status", CMD)?;
    let start = out.find('{').unwrap_or(0);
    serde_json::from_str(out[start..].trim())
        .map_err(|e| HarnessError::Setup(format!("{e}: {out}")))
}

pub fn os_release_field(vm: &mut Vm, key: &str) -> Result<String> {
    let out = vm.run_ok(&format!("sed -n 's/^{key}=//p' /etc/os-release"), CMD)?;
    Ok(out.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_go_up_and_down() {
        assert_eq!(later_version("0.1.0", 2), "0.1.2");
        assert_eq!(earlier_version("0.1.0").as_deref(), Some("0.0.0"));
        assert_eq!(earlier_version("1.0.3").as_deref(), Some("1.0.2"));
        assert_eq!(earlier_version("0.0.0"), None);
        assert_eq!(earlier_version("x.1"), None);
    }
}
