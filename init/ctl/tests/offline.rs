//! berthctl without a machine: usage errors, an unreachable API, and `check`, which validates
//! unit files with PID 1's own parser. These tests live in berthctl's crate so that
//! `cargo test --workspace` builds the berthctl binary, which berth-init's API tests drive too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

const GOOD: &str = "[container]\ncommand = [\"sleep\", \"300\"]\n";
const BAD: &str = "[unit]\ndescription = \"broken\"\n[container]\ncommand = [\"sleep\", \"300\"]\n\
                   [service]\nrestart = \"sometimes\"\nstop_timout = \"1s\"\n";

fn berthctl(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .args(args)
        .env_remove("BERTH_SOCKET")
        .env_remove("BERTH_HOST")
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// A fresh directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berthctl-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn usage_errors_exit_2_and_an_unreachable_api_exits_1() {
    let none = berthctl(&[]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stdout).starts_with("usage: berthctl"));
    for args in [
        &["frobnicate"][..],
        &["show"],
        &["--tail"],
        &["--bogus", "status"],
    ] {
        let args: Vec<_> = args.iter().map(|a| os(a)).collect();
        let out = berthctl(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage: berthctl"),
            "{args:?}"
        );
    }
    let gone = berthctl(&[os("--socket"), os("/nonexistent/api.sock"), os("status")]);
    assert_eq!(gone.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(stderr.contains("/nonexistent/api.sock"), "{stderr}");
}

#[test]
fn check_reports_every_error_and_exits_nonzero() {
    let dir = temp_dir("check");
    let (good, bad) = (dir.join("good.toml"), dir.join("bad.toml"));
    std::fs::write(&good, GOOD).unwrap();
    std::fs::write(&bad, BAD).unwrap();
    let ok = berthctl(&[os("check"), good.as_os_str()]);
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("good.toml: ok ("));
    let out = berthctl(&[os("check"), good.as_os_str(), bad.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let b = bad.display();
    assert!(
        stderr.contains(&format!("{b}:7:1: key `service.stop_timout`")),
        "{stderr}"
    );
    // Semantic errors are reported together with structural ones.
    assert!(
        stderr.contains(&format!(
            "{b}:6:11: key `service.restart`: unknown restart policy"
        )),
        "{stderr}"
    );
    assert_eq!(berthctl(&[os("check")]).status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_writes_the_unit_cache_pid1_loads_only_when_every_file_is_valid() {
    let dir = temp_dir("check-cache");
    let units = dir.join("units");
    std::fs::create_dir_all(&units).unwrap();
    let (good, bad) = (units.join("good.toml"), dir.join("bad.toml"));
    std::fs::write(&good, GOOD).unwrap();
    std::fs::write(&bad, BAD).unwrap();
    let cache = dir.join("units.cache");
    let out = berthctl(&[
        os("check"),
        os("--cache"),
        cache.as_os_str(),
        good.as_os_str(),
        bad.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!cache.exists(), "a cache written despite an invalid unit");

    let out = berthctl(&[
        os("check"),
        os("--cache"),
        cache.as_os_str(),
        good.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = berth_init::unit::cache::UnitCache::read(&cache);
    assert_eq!(written.len(), 1);
    // PID 1's load finds everything in it: the cache is left as it is.
    use std::os::unix::fs::MetadataExt;
    let stamp = |m: std::fs::Metadata| (m.ino(), m.mtime(), m.mtime_nsec());
    let before = stamp(std::fs::metadata(&cache).unwrap());
    let loaded = berth_init::unit::cache::load_dirs(std::slice::from_ref(&units), &cache);
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        loaded[0].unit.as_ref().unwrap().path,
        good.display().to_string()
    );
    assert_eq!(stamp(std::fs::metadata(&cache).unwrap()), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_escapes_what_file_names_hold() {
    let dir = temp_dir("check-escape");
    let bad = dir.join("bad\x1b[2J\nforged: ok.toml");
    std::fs::write(&bad, BAD).unwrap();
    let out = berthctl(&[os("check"), bad.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    assert!(
        stderr
            .lines()
            .all(|l| l.contains("bad\\x1b[2J\\nforged: ok.toml:")),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn example_units_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/examples");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    let mut args = vec![os("check")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let out = berthctl(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_readme_kubelet_unit_is_the_checked_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example =
        std::fs::read_to_string(root.join("configs/examples/kubelet.toml.container-example"))
            .unwrap();
    let unit: String = example
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("```toml\n")
        .filter_map(|b| b.split_once("```").map(|(body, _)| body))
        .find(|b| b.contains("description = \"Kubernetes node agent\""))
        .expect("the kubelet unit in the README");
    assert_eq!(block, unit);
}

#[test]
fn check_refuses_privileged_and_host_pid_on_a_system_unit() {
    let dir = temp_dir("check-privileged");
    let unit = dir.join("tool.toml");
    std::fs::write(
        &unit,
        "[container]\ncommand = [\"x\"]\nprivileged = true\npid = \"host\"\n",
    )
    .unwrap();
    let out = berthctl(&[os("check"), unit.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let u = unit.display();
    for want in [
        format!("{u}:3:14: key `container.privileged`: only container units"),
        format!("{u}:4:7: key `container.pid`: only container units"),
    ] {
        assert!(stderr.contains(&want), "{want} in {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
