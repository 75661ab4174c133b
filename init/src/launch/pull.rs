//! The command lines berth-init runs for images: `berth-runtime image … pull REF` from a
//! container unit's preparation task and from an API pull job, `… prune` from a prune job.
//! Built here only, so both pulls see the same arguments and the same clean environment.

use std::path::Path;
use std::process::Command;

use berth_store::registry::Reference;

use super::process::DEFAULT_PATH;

/// `program` with nothing of berth-init's environment but a default `PATH`, in `/`: a helper
/// process gets its settings from its arguments and the machine config, never from whatever
/// PID 1 was started with (a proxy variable, a stray `HOME`).
pub fn clean_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", DEFAULT_PATH).current_dir("/");
    cmd
}

/// `RUNTIME image --store STORE --config MACHINE_CONFIG`, a verb to follow. The runtime, a
/// process of its own, reads the `[registries]` section of the machine config itself.
pub fn image_command(runtime: &Path, store: &Path, machine_config: &Path) -> Command {
    let mut cmd = clean_command(runtime);
    cmd.arg("image")
        .arg("--store")
        .arg(store)
        .arg("--config")
        .arg(machine_config);
    cmd
}

/// `RUNTIME image --store STORE --config MACHINE_CONFIG pull REFERENCE`.
pub fn pull_command(
    runtime: &Path,
    store: &Path,
    machine_config: &Path,
    reference: &Reference,
) -> Command {
    let mut cmd = image_command(runtime, store, machine_config);
    cmd.arg("pull").arg(reference.to_string());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in runtime that prints its arguments and its whole environment.
    #[test]
    fn a_pull_gets_its_arguments_and_a_clean_environment() {
        let dir = std::env::temp_dir().join(format!("berth-pull-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let runtime = dir.join("runtime");
        std::fs::write(&runtime, "#!/bin/sh\necho \"args: $*\"\n/usr/bin/env\n").unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
        let reference = Reference::parse("busybox").unwrap();
        let out = pull_command(
            &runtime,
            Path::new("/s/images"),
            Path::new("/s/machine.toml"),
            &reference,
        )
        .output()
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "args: image --store /s/images --config /s/machine.toml \
                 pull docker.io/library/busybox:latest"
            )
        );
        // The test runs with cargo's variables (CARGO_PKG_NAME, …) and a HOME; none of them
        // reaches the pull (the shell's own PWD, SHLVL and _ aside).
        let env: Vec<&str> = lines
            .filter(|l| !["PWD=", "SHLVL=", "_="].iter().any(|p| l.starts_with(p)))
            .collect();
        assert_eq!(env, [format!("PATH={DEFAULT_PATH}")], "{text}");
    }
}
