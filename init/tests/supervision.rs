//! Supervision through the real binary in host mode: ordering, restart policies, backoff and
//! the start limit, and reaping of orphans.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{children_of, Host};

#[test]
fn a_unit_after_another_starts_second() {
    // b only counts as up once its health check sees its mark, so the order is certain.
    let host = Host::start(
        "order",
        &[
            ("a", "[unit]\nafter = [\"b\"]\n[container]\ncommand = [\"sh\", \"-c\", \"echo a >> {dir}/order; exec sleep 300\"]\n"),
            (
                "b",
                "[container]\ncommand = [\"sh\", \"-c\", \"echo b >> {dir}/order; exec sleep 300\"]\n\
                 [health]\nexec = [\"grep\", \"-q\", \"b\", \"{dir}/order\"]\ninterval = \"200ms\"\n",
            ),
        ],
    );
    host.wait_state("a", &["running"]);
    assert_eq!(host.unit("b")["health"], "healthy");
    // `running` means a's process exists; its shell may not have written its mark yet.
    host.wait_for("a's mark in the order file", || {
        host.read("order").lines().count() >= 2
    });
    assert_eq!(host.read("order"), "b\na\n");
}

#[test]
fn crash_loop_backs_off_and_fails_at_the_start_limit_while_others_keep_running() {
    let host = Host::start(
        "crash",
        &[
            (
                "crash",
                "[container]\ncommand = [\"sh\", \"-c\", \"echo crashing; exit 3\"]\n\
                 [service]\nrestart = \"always\"\nrestart_delay = \"50ms\"\nrestart_delay_max = \"200ms\"\n\
                 start_limit_burst = 5\nstart_limit_interval = \"10m\"\n",
            ),
            (
                "steady",
                "[container]\ncommand = [\"sleep\", \"300\"]\n[health]\nexec = [\"true\"]\ninterval = \"100ms\"\n",
            ),
        ],
    );
    host.wait_state("steady", &["healthy"]);
    let steady_pid = host.unit("steady")["pid"].as_i64().unwrap();
    host.wait_state("crash", &["failed"]);
    let crash = host.unit("crash");
    assert_eq!(crash["restarts"], 4, "{crash}");
    assert_eq!(crash["last_exit_code"], 3);
    assert!(
        crash["error"]
            .as_str()
            .unwrap()
            .contains("start limit reached: 5 starts within 600s"),
        "{crash}"
    );
    // The delay grew from restart_delay, doubling up to restart_delay_max.
    let delays: Vec<String> = host
        .log()
        .lines()
        .filter_map(|l| l.strip_prefix("berth-init: unit crash: restarting in "))
        .map(str::to_string)
        .collect();
    assert_eq!(delays, ["50ms", "100ms", "200ms", "200ms"]);
    assert_eq!(
        host.read("state/logs/crash.log")
            .matches("crashing")
            .count(),
        5
    );
    // The healthy unit was never touched.
    let steady = host.unit("steady");
    assert_eq!(
        (steady["state"].as_str(), steady["pid"].as_i64()),
        (Some("healthy"), Some(steady_pid))
    );
}

#[test]
fn on_failure_restarts_failures_but_not_a_clean_exit() {
    let host = Host::start(
        "onfailure",
        &[
            ("clean", "[container]\ncommand = [\"sh\", \"-c\", \"exit 0\"]\n[service]\nrestart = \"on-failure\"\n"),
            (
                "failing",
                "[container]\ncommand = [\"sh\", \"-c\", \"exit 1\"]\n\
                 [service]\nrestart = \"on-failure\"\nrestart_delay = \"20ms\"\nstart_limit_burst = 3\n",
            ),
        ],
    );
    host.wait_state("clean", &["exited"]);
    // By the time the failing unit has been restarted twice, a restart of the clean unit
    // would have happened too.
    host.wait_for("failing to restart twice", || {
        host.unit("failing")["restarts"].as_u64() >= Some(2)
    });
    let clean = host.unit("clean");
    assert_eq!(
        (clean["state"].as_str(), clean["restarts"].as_u64()),
        (Some("exited"), Some(0))
    );
    assert_eq!(clean["last_exit_code"], 0);
}

#[test]
fn orphaned_grandchildren_are_reaped() {
    let host = Host::start(
        "orphans",
        &[(
            "spawner",
            "[container]\ncommand = [\"sh\", \"-c\", \"for i in 1 2 3 4 5; do (sleep 0.3 &); done; exec sleep 300\"]\n",
        )],
    );
    host.wait_state("spawner", &["running"]);
    let main = host.unit("spawner")["pid"].as_i64().unwrap() as i32;
    // The five sleeps are re-parented to berth-init (the subreaper); once they exit they
    // must be reaped, leaving the unit's main process as the only child.
    host.wait_for("orphans to be reaped", || {
        host.log().matches("reaped orphan").count() >= 5
            && children_of(host.pid).iter().all(|(pid, _, _)| *pid == main)
    });
    let zombies: Vec<_> = children_of(host.pid)
        .into_iter()
        .filter(|(_, state, _)| *state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "{zombies:?}");
}

/// Live processes whose environment holds `TAG=tag` (units of these tests set it).
fn tagged(tag: &str) -> Vec<i32> {
    let want = format!("TAG={tag}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) && common::alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// A unit whose shell leaves a `setsid` process behind: another session and process group,
/// re-parented to berth-init once the main process is gone.
fn escaping_unit(tag: &str) -> String {
    format!(
        "[container]\ncommand = [\"sh\", \"-c\", \"setsid sleep 300 & exec sleep 300\"]\n\
         env = {{ TAG = \"{tag}\" }}\n[service]\nstop_timeout = \"1h\"\n"
    )
}

/// Waits until unit `name` (tagged `tag`) runs its main process and the escaped one; returns
/// the escaped one's pid.
fn escaped_process(host: &Host, name: &str, tag: &str) -> i32 {
    host.wait_state(name, &["running"]);
    let main = host.unit(name)["pid"].as_i64().unwrap() as i32;
    let mut escaped = None;
    host.wait_for("the escaped process", || {
        escaped = tagged(tag).into_iter().find(|&p| p != main);
        escaped.is_some()
    });
    escaped.unwrap()
}

#[test]
fn processes_a_unit_left_behind_die_when_it_stops_or_is_removed() {
    let dir = common::temp_dir("escape");
    let (stop_tag, remove_tag) = (
        format!("{}/stop", dir.display()),
        format!("{}/remove", dir.display()),
    );
    let host = Host::start_in(
        dir,
        &[
            ("stopped", &escaping_unit(&stop_tag)),
            ("removed", &escaping_unit(&remove_tag)),
        ],
    );
    let escaped = escaped_process(&host, "stopped", &stop_tag);
    let (status, _) = host
        .request("POST /v1/units/stopped/stop HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert_eq!(status, 202);
    host.wait_state("stopped", &["exited"]);
    host.wait_for("the escaped process of a stopped unit to die", || {
        !common::alive(escaped)
    });

    let escaped = escaped_process(&host, "removed", &remove_tag);
    let (status, _) = host
        .request("DELETE /v1/units/removed HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(status, 202);
    host.wait_for("the escaped process of a removed unit to die", || {
        tagged(&remove_tag).is_empty() && !common::alive(escaped)
    });
}

#[test]
fn a_units_processes_die_with_berth_init_however_it_ends() {
    let dir = common::temp_dir("escape-kill");
    let tag = format!("{}/killed", dir.display());
    let mut host = Host::start_in(dir, &[("left", &escaping_unit(&tag))]);
    escaped_process(&host, "left", &tag);
    // No ordered stop: berth-init just ends.
    host.signal(libc::SIGKILL);
    host.wait_exit();
    host.wait_for("every process of the unit to die", || {
        tagged(&tag).is_empty()
    });
}

#[test]
fn a_stopped_unit_shows_paused_and_stops_without_waiting_for_its_timeout() {
    let host = Host::start(
        "sigstop",
        &[(
            "frozen",
            "[container]\ncommand = [\"sleep\", \"300\"]\n[service]\nstop_timeout = \"1h\"\n\
             [health]\nexec = [\"true\"]\ninterval = \"100ms\"\n",
        )],
    );
    host.wait_state("frozen", &["healthy"]);
    let pid = host.unit("frozen")["pid"].as_i64().unwrap() as i32;
    let signal = |sig| {
        // SAFETY: kill(2) on the unit's process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    };
    signal(libc::SIGSTOP);
    host.wait_state("frozen", &["paused"]);
    assert_eq!(host.unit("frozen")["detail"], "stopped by SIGSTOP");
    signal(libc::SIGCONT);
    host.wait_state("frozen", &["healthy"]);

    // Stopping a stopped process: the stop signal comes with SIGCONT, so it acts at once
    // instead of after the hour of stop_timeout.
    signal(libc::SIGSTOP);
    host.wait_state("frozen", &["paused"]);
    let (status, _) = host
        .request("POST /v1/units/frozen/stop HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert_eq!(status, 202);
    host.wait_state("frozen", &["exited"]);
    assert_eq!(
        host.unit("frozen")["last_exit"],
        "killed by signal 15 (SIGTERM)"
    );
}

/// Lazily unmounts a test's filesystem when dropped (after the host that used it).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn a_full_disk_costs_one_complaint_and_leaves_a_marker_in_the_units_log() {
    use std::io::Write;
    let dir = common::temp_dir("fulldisk");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    common::run(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "berth-test"])
            .arg(&state),
    );
    let mounted = Mounted(state.clone());
    let wait =
        |f: &str| format!("for i in $(seq 1200); do [ -e {{dir}}/{f} ] && break; sleep 0.05; done");
    let unit = format!(
        "[container]\ncommand = [\"sh\", \"-c\", \"{}; for i in $(seq 50); do echo lost; done; {}; echo back; exec sleep 300\"]\n",
        wait("full"),
        wait("go")
    );
    let host = Host::start_in(dir.clone(), &[("chatty", &unit)]);
    host.wait_state("chatty", &["running"]);
    // Fill the state filesystem, then let the unit talk.
    let mut filler = std::fs::File::create(state.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    while filler.write_all(&chunk).is_ok() {}
    std::fs::write(dir.join("full"), "").unwrap();
    // All 50 lines are read and lost before space comes back (the unit is slow under load;
    // space freed while it still talks would let the rest through).
    host.wait_for("berth-init to lose all 250 bytes", || {
        host.unit("chatty")["log_dropped"] == 250
    });
    assert!(host.log().contains("cannot write log"), "{}", host.log());
    let (status, _, metrics) = common::raw(
        &host.socket(),
        b"GET /v1/metrics HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        status == 200
            && metrics
                .lines()
                .any(|l| l == "berth_unit_log_dropped_bytes{unit=\"chatty\"} 250"),
        "{metrics}"
    );
    // Space comes back; the next output brings the marker.
    drop(filler);
    std::fs::remove_file(state.join("filler")).unwrap();
    std::fs::write(dir.join("go"), "").unwrap();
    host.wait_for("the unit's output after the full disk", || {
        host.read("state/logs/chatty.log").contains("back")
    });
    assert_eq!(
        host.read("state/logs/chatty.log"),
        "[berth: 250 bytes of output dropped: no space]\nback\n"
    );
    assert_eq!(
        host.log().matches("cannot write log").count(),
        1,
        "{}",
        host.log()
    );
    drop(host);
    drop(mounted);
}

#[test]
fn the_api_is_served_before_units_start_and_while_many_do() {
    let names: Vec<String> = (0..600).map(|i| format!("u{i:03}")).collect();
    let units: Vec<(&str, &str)> = names
        .iter()
        .map(|n| (n.as_str(), "[container]\ncommand = [\"sleep\", \"300\"]\n"))
        .collect();
    let host = Host::start("many", &units);
    host.wait_for("every unit to run", || {
        let list = host.try_get("/v1/units").unwrap_or_default();
        let running = list
            .as_array()
            .map_or(0, |l| l.iter().filter(|u| u["state"] == "running").count());
        running == names.len()
    });
    // The socket is bound before the first unit starts; the units start in batches, with the
    // loop's other events (the API) served between them.
    let log = host.log();
    let api = log.find("berth-init: control API on").expect("API line");
    let first_start = log.find(": started, pid").expect("a start");
    assert!(api < first_start, "{log}");
}

#[test]
fn an_exec_that_fails_after_the_fork_is_an_exit_126_with_a_line_in_the_log() {
    let dir = common::temp_dir("enoexec");
    // Executable, but no format the kernel runs (no `#!`): found, then refused by exec.
    let script = dir.join("not-a-program");
    std::fs::write(&script, "echo hi\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let host = Host::start_in(
        dir,
        &[(
            "broken",
            "[container]\ncommand = [\"{dir}/not-a-program\"]\n[service]\nrestart = \"never\"\n",
        )],
    );
    host.wait_state("broken", &["failed"]);
    assert_eq!(host.unit("broken")["last_exit_code"], 126);
    assert_eq!(
        host.read("state/logs/broken.log"),
        format!(
            "berth-init: cannot start unit: exec: errno {}\n",
            libc::ENOEXEC
        )
    );
}
