//! SIGTERM to berth-init: units stop in reverse dependency order with their stop signal; a
//! unit that ignores it is killed after its stop_timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{alive, Host};

fn polite(name: &str, after: Option<&str>) -> String {
    let after = after
        .map(|a| format!("[unit]\nafter = [\"{a}\"]\n"))
        .unwrap_or_default();
    format!(
        "{after}[container]\ncommand = [\"sh\", \"-c\", \"trap 'echo {name} >> {{dir}}/stopped; exit 0' TERM; echo {name} >> {{dir}}/ready; sleep 300 & wait\"]\n"
    )
}

#[test]
fn sigterm_stops_units_in_reverse_order_and_escalates_to_sigkill() {
    let (a, b, c) = (
        polite("a", None),
        polite("b", Some("a")),
        polite("c", Some("b")),
    );
    let stubborn =
        "[container]\ncommand = [\"sh\", \"-c\", \"trap '' TERM; echo stubborn >> {dir}/ready; sleep 300 & wait; sleep 300\"]\n\
                    [service]\nstop_timeout = \"1s\"\n";
    let mut host = Host::start(
        "shutdown",
        &[("a", &a), ("b", &b), ("c", &c), ("stubborn", stubborn)],
    );
    for u in ["a", "b", "c", "stubborn"] {
        host.wait_state(u, &["running"]);
    }
    // `running` means the processes exist; SIGTERM must wait until their traps are set.
    host.wait_for("every unit's trap", || {
        host.read("ready").lines().count() == 4
    });
    let pids: Vec<i32> = ["a", "b", "c", "stubborn"]
        .iter()
        .map(|u| host.unit(u)["pid"].as_i64().unwrap() as i32)
        .collect();
    host.signal(libc::SIGTERM);
    assert_eq!(host.wait_exit(), Some(0));
    assert_eq!(host.read("stopped"), "c\nb\na\n");
    let log = host.log();
    assert!(
        log.contains("unit stubborn: still running 1s after stop signal, sending SIGKILL"),
        "{log}"
    );
    assert!(
        log.contains("unit stubborn: killed by signal 9 (SIGKILL)"),
        "{log}"
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived");
    }
}
