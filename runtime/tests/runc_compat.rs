//! The runc-style shell script passes unchanged against runc (Debian's) and berth-runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn run_script(runtime: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/runc-compat.sh");
    let out = Command::new("sh")
        .arg(script)
        .env("RUNTIME", runtime)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{runtime}: {text}");
    text
}

#[test]
fn script_passes_with_berth_runtime() {
    assert!(run_script(env!("CARGO_BIN_EXE_berth-runtime")).contains("PASS"));
}

#[test]
fn script_passes_with_runc() {
    assert!(run_script("runc").contains("PASS"));
}
