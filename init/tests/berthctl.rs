//! berthctl against a real berth-init in host mode: every command, tables for people,
//! `--json` for scripts, and exit codes (0 success, 1 failure, 2 usage).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

use common::Host;

fn ctl(host: &Host, args: &[&str]) -> Output {
    Command::new(common::berthctl_bin())
        .arg("--socket")
        .arg(host.socket())
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(o: Output, code: i32) -> String {
    assert_eq!(o.status.code(), Some(code), "{o:?}");
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn every_command_with_tables_json_and_exit_codes() {
    let host = Host::start(
        "ctl",
        &[(
            "hello",
            "[unit]\ndescription = \"says hello\"\n[container]\ncommand = [\"sh\", \"-c\", \"echo hello one; echo hello two; exec sleep 300\"]\n",
        )],
    );
    host.wait_state("hello", &["running"]);

    let status = ok(ctl(&host, &["status"]));
    assert!(status.contains("mode        host"), "{status}");
    assert!(
        status.contains("units       1 (1 running, 0 failed)"),
        "{status}"
    );
    let ps = ok(ctl(&host, &["ps"]));
    let mut lines = ps.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("NAME   KIND    STATE    HEALTH  PID"));
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("hello  system  running  -"),
        "{ps}"
    );
    assert_eq!(ok(ctl(&host, &["units"])).lines().next(), ps.lines().next());
    let show = ok(ctl(&host, &["show", "hello"]));
    assert!(show.contains("description  says hello"), "{show}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(ctl(&host, &["--json", "show", "hello"]))).unwrap();
    assert_eq!(json["state"], "running");

    // apply: create, replace, and an invalid file named by its own path.
    let file = host.dir.join("extra.toml");
    std::fs::write(&file, "[container]\ncommand = [\"sleep\", \"300\"]\n").unwrap();
    let path = file.to_str().unwrap();
    let out = ok(ctl(&host, &["apply", path]));
    assert!(
        out.starts_with("unit extra: created\nextra: running (pid "),
        "{out}"
    );
    let out = ok(ctl(&host, &["apply", path]));
    assert!(
        out.starts_with("unit extra: replaced\nextra: running (pid "),
        "{out}"
    );
    std::fs::write(
        &file,
        "[container]\ncommand = [\"sleep\", \"300\"]\n[service]\nrestart = \"sometimes\"\n",
    )
    .unwrap();
    let err = fails(ctl(&host, &["apply", path]), 1);
    assert!(
        err.contains(&format!(
            "{path}:4:11: key `service.restart`: unknown restart policy"
        )),
        "{err}"
    );

    // A unit that cannot start fails the command, though it waits to be retried.
    let broken = host.dir.join("broken.toml");
    std::fs::write(
        &broken,
        "[container]\ncommand = [\"/nonexistent/program\"]\n",
    )
    .unwrap();
    let err = fails(ctl(&host, &["apply", broken.to_str().unwrap()]), 1);
    assert!(
        err.contains("unit broken did not start: ") && err.contains("/nonexistent/program"),
        "{err}"
    );
    assert!(fails(ctl(&host, &["start", "broken"]), 1).contains("did not start"));
    ok(ctl(&host, &["rm", "broken"]));

    // Actions wait until the unit got there.
    assert!(ok(ctl(&host, &["stop", "extra"])).starts_with("extra: exited"));
    assert!(ok(ctl(&host, &["start", "extra"])).starts_with("extra: running (pid "));
    let before = host.unit("extra")["pid"].as_i64().unwrap();
    let out = ok(ctl(&host, &["restart", "extra"]));
    assert!(!out.contains(&format!("pid {before})")), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(ctl(&host, &["--json", "restart", "extra"]))).unwrap();
    assert_eq!(json["state"], "running");

    assert_eq!(
        ok(ctl(&host, &["logs", "--tail", "1", "hello"])),
        "hello two\n"
    );
    assert_eq!(ok(ctl(&host, &["logs", "hello"])), "hello one\nhello two\n");

    let metrics = ok(ctl(&host, &["metrics"]));
    assert!(
        metrics.contains("# TYPE berth_unit_state gauge"),
        "{metrics}"
    );
    let mine = ok(ctl(&host, &["metrics", "extra"]));
    assert!(mine.lines().count() >= 8, "{mine}");
    assert!(mine.lines().all(|l| l.contains("unit=\"extra\"")), "{mine}");
    assert!(fails(ctl(&host, &["metrics", "nope"]), 1).contains("unknown unit: nope"));

    assert_eq!(ok(ctl(&host, &["rm", "extra"])), "unit extra: removed\n");
    assert!(!host.dir.join("units/extra.toml").exists());
    assert!(fails(ctl(&host, &["show", "extra"]), 1).contains("unknown unit: extra"));

    assert!(ok(ctl(&host, &["image", "ls"])).starts_with("REFERENCE"));
    assert_eq!(ok(ctl(&host, &["--json", "image", "ls"])).trim(), "[]");
    assert!(fails(ctl(&host, &["image", "rm", "nothing:1"]), 1).contains("unknown image"));

    // berth-init in host mode did not boot from a Berth disk: no slots to show.
    let update = fails(ctl(&host, &["update", "status"]), 1);
    assert!(
        update.contains("no A/B slots: not booted from a Berth disk"),
        "{update}"
    );

    // Usage errors (exit 2) and an unreachable API (exit 1): init/ctl/tests/offline.rs.
}
