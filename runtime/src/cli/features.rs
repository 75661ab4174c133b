//! `features`: what this runtime implements, as the document of the OCI runtime-spec's
//! features.md, so a client can check before it asks.

use super::{parse, CliResult, Global};
use serde_json::json;

/// Time namespaces are refused at create (see namespaces.rs), so they are not listed.
const NAMESPACES: &[&str] = &["cgroup", "ipc", "mount", "network", "pid", "user", "uts"];

const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

/// The capabilities this build knows by name (`CAP_CHOWN` ... `CAP_CHECKPOINT_RESTORE`).
fn capabilities() -> Vec<String> {
    berth_runtime::process::ALL_CAPABILITIES
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect()
}

/// The features document.
pub fn document() -> serde_json::Value {
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": berth_runtime::rootfs::MOUNT_OPTIONS,
        "linux": {
            "namespaces": NAMESPACES,
            "capabilities": capabilities(),
            "cgroup": {
                "v1": false,
                "v2": true,
                "systemd": false,
                "systemdUser": false,
                "rdma": false
            },
            "seccomp": {
                "enabled": true,
                "actions": SECCOMP_ACTIONS,
                "operators": SECCOMP_OPERATORS,
                "archs": ["SCMP_ARCH_X86_64"],
                "knownFlags": [],
                "supportedFlags": []
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false },
            "mountExtensions": { "idmap": { "enabled": false } }
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features.implementation": "berth-runtime",
            "berth.runtime.version": env!("CARGO_PKG_VERSION")
        }
    })
}

pub fn run(_g: &Global, args: &[String]) -> CliResult {
    parse(args, &[], false)?;
    println!("{}", serde_json::to_string_pretty(&document())?);
    Ok(0)
}
