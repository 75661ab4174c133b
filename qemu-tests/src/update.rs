//! What the A/B update tests share: bundles of another build of the image, and the steps of
//! an update seen from the guest's admin shell.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{HarnessError, Result, Vm};

pub const BOOT: Duration = Duration::from_secs(300);
pub const CMD: Duration = Duration::from_secs(60);
pub const APPLY: Duration = Duration::from_secs(600);
/// Room for the state partition to grow: tests write files there.
pub const DISK_SIZE: u64 = 1 << 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| HarnessError::Setup(format!("{cmd:?}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(HarnessError::Setup(format!(
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
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
        run_tool(
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
        let tool = out_dir.join("bin/berth-image");
        run_tool(Command::new(&tool).args(&args).current_dir(repo()))?;
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
        let bundle = self.dir.join(format!("{name}.bundle"));
        run_tool(
            Command::new(&self.tool)
                .arg("bundle")
                .arg("--key")
                .arg(repo().join("configs/keys/test-key.key"))
                .arg("--root")
                .arg(self.dir.join("work/root-a.img"))
                .arg("--kernel")
                .arg(&self.kernel)
                .arg("--manifest")
                .arg(self.dir.join("out/manifest.json"))
                .arg("--cmdline")
                .arg(&cmdline_file)
                .args(["--build-id", &self.build_id, "--version", &self.version])
                .arg("--out")
                .arg(&bundle)
                .current_dir(repo()),
        )?;
        let len = std::fs::metadata(&bundle)
            .map_err(crate::io_err("bundle"))?
            .len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&bundle)
            .map_err(crate::io_err("bundle"))?;
        f.set_len(len.div_ceil(512) * 512)
            .map_err(crate::io_err("pad bundle"))?;
        Ok((bundle, len))
    }
}

/// The guest command that applies a bundle attached as `device` (exactly `len` bytes of it)
/// with `args` for update-apply.
pub fn apply_command(device: &str, len: u64, args: &str) -> String {
    format!("head -c {len} {device} | /sbin/init update-apply - {args}")
}

/// Waits until berth-init logged that the boot of `slot` was marked good.
pub fn wait_marked_good(vm: &mut Vm, slot: &str) -> Result<()> {
    let deadline = Instant::now() + BOOT;
    let want = format!("boot of slot {slot} marked good");
    loop {
        let (_, out) = vm.run("dmesg | grep 'marked good'", CMD)?;
        if out.contains(&want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Setup(format!(
                "boot of {slot} never marked good"
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
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
