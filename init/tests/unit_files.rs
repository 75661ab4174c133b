//! Bad unit files next to good ones and the control API's answers (`berthctl check` is
//! tested in berthctl's crate).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::Host;

const GOOD: &str = "[container]\ncommand = [\"sleep\", \"300\"]\n";
const BAD: &str = "[unit]\ndescription = \"broken\"\n[container]\ncommand = [\"sleep\", \"300\"]\n\
                   [service]\nrestart = \"sometimes\"\nstop_timout = \"1s\"\n";

#[test]
fn a_malformed_unit_does_not_stop_the_good_ones() {
    let host = Host::start(
        "malformed",
        &[("good", GOOD), ("bad", BAD), ("also-good", GOOD)],
    );
    host.wait_state("good", &["running"]);
    host.wait_state("also-good", &["running"]);
    let bad = host.unit("bad");
    assert_eq!(
        (bad["state"].as_str(), bad["detail"].as_str()),
        (Some("failed"), Some("invalid"))
    );
    let error = bad["error"].as_str().unwrap();
    let file = host.dir.join("units/bad.toml").display().to_string();
    assert!(
        error.contains(&format!(
            "{file}:7:1: key `service.stop_timout`: unknown field"
        )),
        "{error}"
    );
    assert!(host
        .log()
        .contains(&format!("{file}:7:1: key `service.stop_timout`")));
}

#[test]
fn api_answers_json_and_json_errors() {
    let host = Host::start("api", &[("good", GOOD)]);
    host.wait_state("good", &["running"]);
    let units = host.try_get("/v1/units").unwrap();
    assert_eq!(units.as_array().unwrap().len(), 1);
    let system = host.try_get("/v1/system").unwrap();
    assert_eq!(
        (system["mode"].as_str(), system["units"]["running"].as_u64()),
        (Some("host"), Some(1))
    );
    let (status, body) = host.request("GET /v1/units/nope HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(
        (status, body["error"].as_str(), body["detail"].as_str()),
        (404, Some("unknown unit"), Some("nope"))
    );
    let (status, _) = host.request("DELETE /v1/system HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(status, 405);
    let (status, _) = host.request("GET /elsewhere HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(status, 404);
    let mode = std::fs::metadata(host.socket())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.unwrap(), 0o600);
    // berthctl reads the same API.
    let out = Command::new(common::berthctl_bin())
        .arg("--socket")
        .arg(host.socket())
        .arg("--json")
        .arg("show")
        .arg("good")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"state\": \"running\""));
}

#[test]
fn a_slow_client_does_not_stall_the_api_and_times_out() {
    use std::io::{Read, Write};
    let host = Host::start("slow", &[("good", GOOD)]);
    let mut slow = std::os::unix::net::UnixStream::connect(host.socket()).unwrap();
    slow.write_all(b"GET /v1/sys").unwrap();
    // Another request is answered while the slow one is pending.
    assert_eq!(host.try_get("/v1/units/good").unwrap()["name"], "good");
    slow.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "{answer}"
    );
}

#[test]
fn unit_names_cannot_forge_log_lines_or_reach_the_terminal() {
    // File names are chosen by whoever can write the units directory: a newline starts a
    // forged line, ESC sequences recolour or retitle the operator's terminal.
    let evil = "x\nberth-init: unit web: healthy\x1b[2J\x1b]0;owned\x07";
    let host = Host::start("escaped-names", &[(evil, GOOD), ("bad\x1b[31m", BAD)]);
    // Such names are invalid, and the error that says so names them.
    host.wait_for("the oddly named unit to be listed as invalid", || {
        let units = host.try_get("/v1/units").unwrap_or_default();
        units.as_array().is_some_and(|l| {
            l.iter()
                .any(|u| u["name"] == evil && u["state"] == "failed")
        })
    });
    let log = host.log();
    assert!(!log.contains('\x1b') && !log.contains('\x07'), "{log:?}");
    assert!(
        !log.lines().any(|l| l == "berth-init: unit web: healthy"),
        "forged line in:\n{log}"
    );
    assert!(
        log.contains("unit x\\nberth-init: unit web: healthy\\x1b[2J"),
        "{log}"
    );
    assert!(log.contains("unit bad\\x1b[31m:"), "{log}");
}
