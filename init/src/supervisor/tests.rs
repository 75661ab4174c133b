//! The state machine driven by hand: a launcher double that records what it was asked and a
//! reactor double that records timers. Real processes are covered by the host tests.

use std::cell::RefCell;
use std::os::fd::BorrowedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::deps::START_BATCH;
use super::health::FIRST_CHECK_DELAY;
use super::*;
use crate::event::{Key, Reactor, Timer};
use crate::launch::{LaunchError, Launcher, Spawned, Step};
use crate::unit::{self, Loaded};

#[derive(Default)]
struct Record {
    next_pid: i32,
    /// (unit, pid) of every main process started.
    started: Vec<(String, i32)>,
    health: Vec<(String, i32)>,
    signals: Vec<(String, i32, i32, bool)>,
    cleaned: Vec<String>,
    /// (unit, pid) of every cleanup task started.
    cleanups: Vec<(String, i32)>,
    /// Write ends of the `done` pipes of "prepare-done" setups, in order.
    done_pipes: Vec<std::os::fd::OwnedFd>,
    /// Units the launcher was told are removed.
    removed: Vec<String>,
}

struct FakeLauncher(Rc<RefCell<Record>>);

impl Launcher for FakeLauncher {
    fn handles(&self, _: &Unit) -> bool {
        true
    }
    fn start(&mut self, unit: &Unit, prepared: u32) -> Result<Step, LaunchError> {
        if unit.container.command[0] == "missing" {
            return Err(LaunchError::NotFound {
                command: "missing".into(),
            });
        }
        let mut r = self.0.borrow_mut();
        r.next_pid += 1;
        let pid = r.next_pid;
        if unit.container.command[0] == "prepare" && prepared == 0 {
            return Ok(Step::Prepare {
                task: Spawned { pid, output: None },
                done: None,
            });
        }
        if unit.container.command[0] == "prepare-done" && prepared == 0 {
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| LaunchError::Pipe(e.into()))?;
            r.done_pipes.push(write);
            return Ok(Step::Prepare {
                task: Spawned { pid, output: None },
                done: Some(read),
            });
        }
        r.started.push((unit.name.clone(), pid));
        Ok(Step::Main(Spawned { pid, output: None }))
    }
    fn signal(&mut self, unit: &Unit, pid: i32, signal: i32, all: bool) -> Result<(), LaunchError> {
        self.0
            .borrow_mut()
            .signals
            .push((unit.name.clone(), pid, signal, all));
        Ok(())
    }
    fn health_check(&mut self, unit: &Unit) -> Result<Spawned, LaunchError> {
        if unit.health.as_ref().is_some_and(|h| h.exec[0] == "missing") {
            return Err(LaunchError::NotFound {
                command: "missing".into(),
            });
        }
        let mut r = self.0.borrow_mut();
        r.next_pid += 1;
        let pid = r.next_pid;
        r.health.push((unit.name.clone(), pid));
        Ok(Spawned { pid, output: None })
    }
    fn cleanup(&mut self, unit: &Unit, _: Option<i32>) -> Option<Spawned> {
        let mut r = self.0.borrow_mut();
        r.cleaned.push(unit.name.clone());
        if !unit.description.contains("slow cleanup") {
            return None;
        }
        r.next_pid += 1;
        let pid = r.next_pid;
        r.cleanups.push((unit.name.clone(), pid));
        Some(Spawned { pid, output: None })
    }
    fn removed(&mut self, name: &str) {
        self.0.borrow_mut().removed.push(name.to_string());
    }
}

#[derive(Default)]
struct Timers(Vec<(Instant, Timer)>);

impl Reactor for Timers {
    fn watch(&mut self, _: BorrowedFd<'_>, _: Key, _: bool) -> std::io::Result<()> {
        Ok(())
    }
    fn unwatch(&mut self, _: BorrowedFd<'_>) {}
    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.0.push((at, timer));
    }
}

struct Harness {
    sup: Supervisor,
    rec: Rc<RefCell<Record>>,
    timers: Timers,
    now: Instant,
}

impl Harness {
    fn new(units: &[(&str, &str)]) -> Harness {
        let loaded = units
            .iter()
            .map(|(name, text)| Loaded {
                name: name.to_string(),
                path: format!("{name}.toml").into(),
                unit: unit::parse(name, &format!("{name}.toml"), text),
            })
            .collect();
        let rec = Rc::new(RefCell::new(Record::default()));
        let policy = LogPolicy::new(std::env::temp_dir());
        let sup = Supervisor::new(loaded, vec![Box::new(FakeLauncher(rec.clone()))], policy);
        Harness {
            sup,
            rec,
            timers: Timers::default(),
            now: Instant::now(),
        }
    }

    fn start(&mut self) {
        self.sup.start_all(self.now, &mut self.timers);
    }

    fn state(&self, name: &str) -> State {
        self.sup.status(name).unwrap().state
    }

    fn pid(&self, name: &str) -> i32 {
        self.sup.status(name).unwrap().pid.unwrap()
    }

    fn started(&self) -> Vec<String> {
        self.rec
            .borrow()
            .started
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn exit(&mut self, pid: i32, status: ExitStatus) {
        assert!(self.sup.on_exit(pid, status, self.now, &mut self.timers));
    }

    /// Fires the most recently scheduled timer at its deadline; returns its delay.
    fn fire_last(&mut self) -> Duration {
        let (at, timer) = self.timers.0.pop().unwrap();
        let delay = at - self.now;
        self.now = at;
        if let Timer::Unit { unit, generation } = timer {
            self.sup
                .on_timer(unit, generation, self.now, &mut self.timers);
        }
        delay
    }
}

const SLEEP: &str = "[container]\ncommand = [\"sleep\", \"100\"]\n";

#[test]
fn after_waits_for_running_or_healthy() {
    let mut h = Harness::new(&[
        (
            "a",
            "[unit]\nafter = [\"b\"]\n[container]\ncommand = [\"x\"]\n",
        ),
        (
            "b",
            "[container]\ncommand = [\"x\"]\n[health]\nexec = [\"check\"]\ninterval = \"1s\"\n",
        ),
        (
            "c",
            "[unit]\nafter = [\"a\"]\n[container]\ncommand = [\"x\"]\n",
        ),
    ]);
    h.start();
    assert_eq!(h.started(), ["b"]);
    assert_eq!(h.sup.status("a").unwrap().detail, "waiting for b");
    // The first health check runs soon after start.
    assert_eq!(h.fire_last(), FIRST_CHECK_DELAY);
    let check = h.rec.borrow().health[0].1;
    h.exit(check, ExitStatus::Exited(0));
    assert_eq!(h.state("b"), State::Healthy);
    // a starts, and c (after a, no health check) follows in the same round.
    assert_eq!(h.started(), ["b", "a", "c"]);
}

#[test]
fn a_container_starts_right_behind_the_system_unit_it_waits_for() {
    let mut h = Harness::new(&[
        ("admin", "[container]\ncommand = [\"sh\"]\n"),
        ("net", "[container]\ncommand = [\"dhcp\"]\n"),
        ("time", "[container]\ncommand = [\"ntpd\"]\n"),
        (
            "web",
            "[unit]\nafter = [\"net\"]\n[container]\nimage = \"web:1\"\ncommand = [\"httpd\"]\n",
        ),
    ]);
    h.start();
    // net, which web waits for, starts before the other system units, and web's setup right
    // behind it.
    assert_eq!(h.started(), ["net", "web", "admin", "time"]);
}

/// At boot: an admin shell and a time daemon (nothing waits for them), the network unit and
/// a container after it whose start has a setup step.
fn boot_with_a_container_setup() -> Harness {
    Harness::new(&[
        ("admin", "[container]\ncommand = [\"sh\"]\n"),
        ("net", "[container]\ncommand = [\"dhcp\"]\n"),
        ("time", "[container]\ncommand = [\"ntpd\"]\n"),
        (
            "web",
            "[unit]\nafter = [\"net\"]\n[container]\nimage = \"web:1\"\ncommand = [\"prepare\"]\n",
        ),
    ])
}

#[test]
fn at_boot_leaf_system_units_wait_for_the_container_setup() {
    let mut h = boot_with_a_container_setup();
    h.start();
    assert_eq!(h.started(), ["net"]);
    assert_eq!(h.state("web"), State::Starting);
    assert_eq!(
        h.sup.status("admin").unwrap().detail,
        "waiting for containers to come up (boot)"
    );
    // The setup is done: the container runs, and the held units start behind it.
    // web's setup task has the last pid handed out.
    let task = h.rec.borrow().next_pid;
    h.exit(task, ExitStatus::Exited(0));
    assert_eq!(h.started(), ["net", "web", "admin", "time"]);
}

#[test]
fn boot_setups_run_while_a_container_prepares_within_the_hold() {
    let mut h = boot_with_a_container_setup();
    assert!(!h.sup.boot_setups_running(h.now), "nothing started yet");
    h.start();
    assert!(h.sup.boot_setups_running(h.now));
    // The setup is done: a container that is running but not yet healthy no longer counts
    // (its first answer may need what the system units do, e.g. the DHCP lease).
    let task = h.rec.borrow().next_pid;
    h.exit(task, ExitStatus::Exited(0));
    assert_eq!(h.state("web"), State::Running);
    assert!(!h.sup.boot_setups_running(h.now));
}

#[test]
fn boot_setups_stop_counting_at_the_end_of_the_hold() {
    let mut h = boot_with_a_container_setup();
    h.start();
    let until = h.sup.boot_hold_until().unwrap();
    assert_eq!(until, h.now + super::deps::BOOT_HOLD);
    assert!(h.sup.boot_setups_running(until - Duration::from_millis(1)));
    assert!(
        !h.sup.boot_setups_running(until),
        "a setup that hangs lets go at the deadline"
    );
    assert_eq!(h.state("web"), State::Starting);
}

#[test]
fn a_boot_without_containers_has_no_setups_to_wait_for() {
    let mut h = Harness::new(&[
        ("admin", "[container]\ncommand = [\"sh\"]\n"),
        ("net", "[container]\ncommand = [\"dhcp\"]\n"),
    ]);
    h.start();
    assert!(!h.sup.boot_setups_running(h.now));
}

#[test]
fn at_boot_leaf_system_units_wait_for_a_container_to_be_healthy() {
    let mut h = Harness::new(&[
        ("admin", "[container]\ncommand = [\"sh\"]\n"),
        (
            "web",
            "[container]\nimage = \"web:1\"\ncommand = [\"prepare\"]\n\
             [health]\nexec = [\"check\"]\ninterval = \"1s\"\n",
        ),
    ]);
    h.start();
    let task = h.rec.borrow().next_pid;
    h.exit(task, ExitStatus::Exited(0));
    assert_eq!(h.started(), ["web"], "running, not yet healthy");
    // The first health check runs soon after the start and passes.
    assert_eq!(h.fire_last(), FIRST_CHECK_DELAY);
    let check = h.rec.borrow().health[0].1;
    h.exit(check, ExitStatus::Exited(0));
    assert_eq!(h.state("web"), State::Healthy);
    assert_eq!(h.started(), ["web", "admin"]);
}

#[test]
fn the_first_health_check_leaves_a_fresh_start_alone_for_a_moment() {
    let unit = |interval: &str| {
        format!("[container]\ncommand = [\"httpd\"]\n[health]\nexec = [\"check\"]\ninterval = \"{interval}\"\n")
    };
    let mut h = Harness::new(&[("slow", &unit("2s")), ("fast", &unit("150ms"))]);
    h.start();
    assert_eq!(h.started(), ["slow", "fast"]);
    // Each unit's only timer is its first check: 400 ms after the start, or the interval
    // when that is shorter; nothing is checked before.
    let mut firsts: Vec<Duration> = h.timers.0.iter().map(|(at, _)| *at - h.now).collect();
    firsts.sort();
    assert_eq!(
        firsts,
        [Duration::from_millis(150), Duration::from_millis(400)]
    );
    assert!(h.rec.borrow().health.is_empty());
}

#[test]
fn the_boot_hold_ends_at_its_deadline_and_never_holds_later_starts() {
    let mut h = boot_with_a_container_setup();
    h.start();
    assert_eq!(h.started(), ["net"]);
    // One start pass is armed for the end of the hold, however many units wait.
    let armed: Vec<Instant> = h
        .timers
        .0
        .iter()
        .filter(|(_, t)| matches!(t, Timer::StartUnits))
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(armed, [h.now + super::deps::BOOT_HOLD]);
    h.now = armed[0];
    h.sup.on_start_timer(h.now, &mut h.timers);
    assert_eq!(h.started(), ["net", "admin", "time"], "web still prepares");
    // After the boot's hold, a system unit started on request does not wait for a setup.
    h.sup.stop_unit("admin", h.now, &mut h.timers);
    let admin = h.rec.borrow().started[1].1;
    h.exit(admin, ExitStatus::Signaled(15));
    assert!(h.sup.start_unit("admin", h.now, &mut h.timers));
    assert_eq!(h.started(), ["net", "admin", "time", "admin"]);
    assert_eq!(h.state("web"), State::Starting);
}

#[test]
fn crash_loop_backs_off_then_hits_the_start_limit() {
    let mut h = Harness::new(&[
        ("crash", "[container]\ncommand = [\"x\"]\n[service]\nrestart = \"always\"\nrestart_delay = \"100ms\"\nrestart_delay_max = \"350ms\"\nstart_limit_burst = 4\nstart_limit_interval = \"1m\"\n"),
        ("good", SLEEP),
    ]);
    h.start();
    let mut delays = Vec::new();
    for _ in 0..3 {
        let pid = h.pid("crash");
        h.exit(pid, ExitStatus::Exited(1));
        assert_eq!(h.state("crash"), State::Exited);
        delays.push(h.fire_last().as_millis());
    }
    assert_eq!(delays, [100, 200, 350]);
    let pid = h.pid("crash");
    h.exit(pid, ExitStatus::Exited(1));
    let s = h.sup.status("crash").unwrap();
    assert_eq!((s.state, s.restarts), (State::Failed, 3));
    assert!(s
        .error
        .unwrap()
        .contains("start limit reached: 4 starts within 60s"));
    assert_eq!(h.state("good"), State::Running);
}

#[test]
fn on_failure_does_not_restart_a_clean_exit() {
    let mut h = Harness::new(&[
        ("once", SLEEP),
        ("bad", SLEEP),
        (
            "never",
            "[container]\ncommand=[\"x\"]\n[service]\nrestart=\"never\"\n",
        ),
    ]);
    h.start();
    let (once, bad, never) = (h.pid("once"), h.pid("bad"), h.pid("never"));
    h.exit(once, ExitStatus::Exited(0));
    assert_eq!(h.state("once"), State::Exited);
    assert!(h.timers.0.is_empty());
    h.exit(never, ExitStatus::Signaled(9));
    assert_eq!(h.state("never"), State::Failed);
    assert_eq!(h.sup.status("never").unwrap().last_exit_code, Some(137));
    h.exit(bad, ExitStatus::Exited(3));
    assert_eq!(h.state("bad"), State::Exited);
    assert_eq!(h.sup.status("bad").unwrap().detail, "restarting in 100ms");
}

#[test]
fn requires_fails_dependents_of_failed_or_missing_units() {
    let mut h = Harness::new(&[
        (
            "db",
            "[container]\ncommand = [\"missing\"]\n[service]\nrestart = \"never\"\n",
        ),
        (
            "web",
            "[unit]\nrequires = [\"db\"]\n[container]\ncommand = [\"x\"]\n",
        ),
        (
            "orphan",
            "[unit]\nrequires = [\"nothere\"]\n[container]\ncommand = [\"x\"]\n",
        ),
        (
            "loose",
            "[unit]\nafter = [\"db\", \"nothere\"]\n[container]\ncommand = [\"x\"]\n",
        ),
    ]);
    h.start();
    let db = h.sup.status("db").unwrap();
    assert_eq!((db.state, db.last_exit_code), (State::Failed, Some(127)));
    assert!(db.error.unwrap().contains("not found"));
    assert_eq!(h.state("web"), State::Failed);
    assert!(h
        .sup
        .status("web")
        .unwrap()
        .error
        .unwrap()
        .contains("unit db failed"));
    assert!(h
        .sup
        .status("orphan")
        .unwrap()
        .error
        .unwrap()
        .contains("nothere does not exist"));
    // `after` alone is ordering only.
    assert_eq!(h.state("loose"), State::Running);
}

#[test]
fn running_dependents_stop_when_a_required_unit_gives_up() {
    let mut h = Harness::new(&[
        (
            "db",
            "[container]\ncommand = [\"x\"]\n[service]\nrestart = \"never\"\n",
        ),
        (
            "web",
            "[unit]\nrequires = [\"db\"]\n[container]\ncommand = [\"x\"]\n",
        ),
    ]);
    h.start();
    let (db, web) = (h.pid("db"), h.pid("web"));
    h.exit(db, ExitStatus::Exited(1));
    assert_eq!(h.state("web"), State::Stopping);
    assert_eq!(
        h.rec.borrow().signals.last().unwrap(),
        &("web".to_string(), web, libc::SIGTERM, false)
    );
    h.exit(web, ExitStatus::Signaled(15));
    assert_eq!(h.state("web"), State::Failed);
}

#[test]
fn shutdown_stops_in_reverse_order_and_escalates() {
    let mut h = Harness::new(&[
        ("a", SLEEP),
        ("b", "[unit]\nafter = [\"a\"]\n[container]\ncommand = [\"x\"]\n[service]\nstop_timeout = \"2s\"\n"),
        ("c", "[unit]\nafter = [\"b\"]\n[container]\ncommand = [\"x\"]\n[service]\nstop_signal = \"SIGINT\"\n"),
    ]);
    h.start();
    let (a, b, c) = (h.pid("a"), h.pid("b"), h.pid("c"));
    h.sup.begin_shutdown(h.now, &mut h.timers);
    let signalled = |h: &Harness| {
        h.rec
            .borrow()
            .signals
            .iter()
            .map(|s| (s.0.clone(), s.2))
            .collect::<Vec<_>>()
    };
    assert_eq!(signalled(&h), [("c".to_string(), libc::SIGINT)]);
    h.exit(c, ExitStatus::Exited(0));
    assert_eq!(signalled(&h)[1], ("b".to_string(), libc::SIGTERM));
    // b ignores SIGTERM: after stop_timeout it gets SIGKILL for all its processes.
    assert_eq!(h.fire_last(), Duration::from_secs(2));
    assert_eq!(
        h.rec.borrow().signals[2],
        ("b".to_string(), b, libc::SIGKILL, true)
    );
    h.exit(b, ExitStatus::Signaled(9));
    assert_eq!(signalled(&h)[3], ("a".to_string(), libc::SIGTERM));
    h.exit(a, ExitStatus::Signaled(15));
    assert!(h.sup.all_stopped());
    assert_eq!(h.state("a"), State::Exited);
    assert_eq!(h.rec.borrow().cleaned, ["c", "b", "a"]);
}

#[test]
fn the_shutdown_bound_adds_up_the_stops_of_the_longest_chain() {
    let unit = |after: &str, timeout: &str, image: bool| {
        let image = if image { "image = \"web:1\"\n" } else { "" };
        format!(
            "[unit]\nafter = [{after}]\n[container]\n{image}command = [\"x\"]\n\
             [service]\nstop_timeout = \"{timeout}\"\n"
        )
    };
    // a ← b ← c ← web (a container): web stops first, a last. lone stops on its own.
    let h = Harness::new(&[
        ("a", &unit("", "4s", false)),
        ("b", &unit("\"a\"", "4s", false)),
        ("c", &unit("\"b\"", "4s", false)),
        ("web", &unit("\"c\"", "1s", true)),
        ("lone", &unit("", "9s", false)),
    ]);
    let cleanup = crate::launch::CLEANUP_LIMIT;
    assert_eq!(
        h.sup.longest_stop_chain(),
        Duration::from_secs(1 + 4 + 4 + 4) + cleanup
    );
    let h = Harness::new(&[("lone", &unit("", "9s", false))]);
    assert_eq!(h.sup.longest_stop_chain(), Duration::from_secs(9));
    assert_eq!(Harness::new(&[]).sup.longest_stop_chain(), Duration::ZERO);
}

#[test]
fn unhealthy_units_are_restarted_and_preparation_runs_first() {
    let mut h = Harness::new(&[(
        "web",
        "[container]\ncommand = [\"prepare\"]\n[health]\nexec = [\"check\"]\ninterval = \"1s\"\nretries = 2\n",
    )]);
    h.start();
    // The preparation process runs first; the main process only after it exits 0.
    assert_eq!(h.state("web"), State::Starting);
    assert!(h.started().is_empty());
    h.exit(1, ExitStatus::Exited(0));
    assert_eq!(h.started(), ["web"]);
    let pid = h.pid("web");
    for _ in 0..2 {
        h.fire_last();
        let check = h.rec.borrow().health.last().unwrap().1;
        h.exit(check, ExitStatus::Exited(1));
    }
    assert_eq!(h.state("web"), State::Stopping);
    h.exit(pid, ExitStatus::Signaled(15));
    assert!(h
        .sup
        .status("web")
        .unwrap()
        .detail
        .starts_with("restarting in"));
}

#[test]
fn the_check_of_a_removed_unit_does_not_count_for_the_next_unit_in_its_slot() {
    let checked = "[container]\ncommand = [\"x\"]\n[health]\nexec = [\"check\"]\n\
                   interval = \"1s\"\nretries = 1\n[service]\nrestart = \"never\"\n";
    let mut h = Harness::new(&[("old", checked)]);
    h.start();
    let pid = h.pid("old");
    h.fire_last();
    let old_check = h.rec.borrow().health.last().unwrap().1;
    // The run ends and the unit is removed while its check is killed but not yet reaped.
    h.exit(pid, ExitStatus::Exited(0));
    h.sup.remove_unit("old", h.now, &mut h.timers).unwrap();
    h.sup
        .install(loaded("new", checked), true, h.now, &mut h.timers)
        .unwrap();
    assert_eq!(h.sup.index_of("new"), Some(0));
    h.fire_last();
    let new_check = h.rec.borrow().health.last().unwrap().1;
    assert_ne!(new_check, old_check);
    // The old check's failure is not the new unit's; its own check's success is.
    h.exit(old_check, ExitStatus::Signaled(9));
    assert_eq!(h.sup.status("new").unwrap().health, Some(Health::Unknown));
    h.exit(new_check, ExitStatus::Exited(0));
    assert_eq!(h.sup.status("new").unwrap().health, Some(Health::Healthy));
}

#[test]
fn a_stop_request_during_a_restart_or_an_unhealthy_stop_leaves_the_unit_stopped() {
    let checked = "[container]\ncommand = [\"x\"]\n[health]\nexec = [\"check\"]\n\
                   interval = \"1s\"\nretries = 1\n";
    let mut h = Harness::new(&[("sick", checked), ("web", SLEEP)]);
    h.start();
    let pid = h.pid("sick");
    h.fire_last();
    let check = h.rec.borrow().health.last().unwrap().1;
    h.exit(check, ExitStatus::Exited(1));
    assert_eq!(h.state("sick"), State::Stopping);
    h.sup.request_stop("sick", h.now, &mut h.timers).unwrap();
    h.exit(pid, ExitStatus::Signaled(15));
    let web = h.pid("web");
    h.sup.request_restart("web", h.now, &mut h.timers).unwrap();
    h.sup.request_stop("web", h.now, &mut h.timers).unwrap();
    h.exit(web, ExitStatus::Signaled(15));
    for name in ["sick", "web"] {
        let s = h.sup.status(name).unwrap();
        assert_eq!(
            (s.state, s.detail.as_str()),
            (State::Exited, "stopped"),
            "{name}"
        );
    }
    assert_eq!(h.started(), ["sick", "web"]);
}

#[test]
fn invalid_units_and_cycles_are_failed_with_their_reason() {
    let mut h = Harness::new(&[
        ("bad", "[container]\ncommand = [\"x\"]\nbogus = 1\n"),
        (
            "x",
            "[unit]\nafter = [\"y\"]\n[container]\ncommand = [\"x\"]\n",
        ),
        (
            "y",
            "[unit]\nrequires = [\"x\"]\n[container]\ncommand = [\"x\"]\n",
        ),
        ("ok", SLEEP),
    ]);
    h.start();
    let bad = h.sup.status("bad").unwrap();
    assert_eq!(bad.state, State::Failed);
    assert!(bad
        .error
        .unwrap()
        .starts_with("bad.toml:3:1: key `container.bogus`"));
    assert_eq!(
        h.sup.status("x").unwrap().error.unwrap(),
        "dependency cycle: x -> y -> x"
    );
    assert_eq!(h.state("ok"), State::Running);
}

fn loaded(name: &str, text: &str) -> Loaded {
    Loaded {
        name: name.to_string(),
        path: format!("{name}.toml").into(),
        unit: unit::parse(name, &format!("{name}.toml"), text),
    }
}

#[test]
fn installing_adds_a_unit_and_starts_it_on_request() {
    let mut h = Harness::new(&[("a", SLEEP)]);
    h.start();
    let installed = h
        .sup
        .install(loaded("b", SLEEP), false, h.now, &mut h.timers)
        .unwrap();
    assert_eq!(installed, Installed::Added);
    assert_eq!(h.state("b"), State::Inactive);
    h.sup
        .install(loaded("c", SLEEP), true, h.now, &mut h.timers)
        .unwrap();
    assert_eq!(h.started(), ["a", "c"]);
    h.sup.request_start("b", h.now, &mut h.timers).unwrap();
    assert_eq!(h.started(), ["a", "c", "b"]);
}

#[test]
fn installing_refuses_cycles_and_invalid_units_and_changes_nothing() {
    let mut h = Harness::new(&[(
        "a",
        "[unit]\nafter = [\"b\"]\n[container]\ncommand = [\"x\"]\n",
    )]);
    h.start();
    let cyclic = loaded(
        "b",
        "[unit]\nrequires = [\"a\"]\n[container]\ncommand = [\"x\"]\n",
    );
    assert_eq!(
        h.sup.install(cyclic, true, h.now, &mut h.timers),
        Err(InstallError::Cycle("a -> b -> a".into()))
    );
    let bad = loaded("c", "[container]\nbogus = 1\n");
    assert!(matches!(
        h.sup.install(bad, true, h.now, &mut h.timers),
        Err(InstallError::Invalid(_))
    ));
    assert_eq!(h.sup.statuses().len(), 1);
    h.sup.begin_shutdown(h.now, &mut h.timers);
    assert_eq!(
        h.sup
            .install(loaded("d", SLEEP), true, h.now, &mut h.timers),
        Err(InstallError::ShuttingDown)
    );
}

#[test]
fn replacing_a_running_unit_stops_the_old_and_starts_the_new() {
    let mut h = Harness::new(&[("web", SLEEP)]);
    h.start();
    let old = h.pid("web");
    let new = "[unit]\ndescription = \"v2\"\n[container]\ncommand = [\"x\"]\n";
    let installed = h
        .sup
        .install(loaded("web", new), false, h.now, &mut h.timers)
        .unwrap();
    assert_eq!(installed, Installed::Replaced);
    assert_eq!(h.state("web"), State::Stopping);
    assert_eq!(h.sup.status("web").unwrap().description, "");
    h.exit(old, ExitStatus::Signaled(15));
    let s = h.sup.status("web").unwrap();
    assert_eq!((s.state, s.description.as_str()), (State::Running, "v2"));
    assert_ne!(s.pid, Some(old));
    // The stale escalation timer of the old instance does nothing.
    h.fire_last();
    assert_eq!(h.state("web"), State::Running);
}

#[test]
fn replacing_a_stopped_unit_keeps_it_stopped_unless_asked() {
    let mut h = Harness::new(&[("web", SLEEP)]);
    h.start();
    let pid = h.pid("web");
    h.sup.request_stop("web", h.now, &mut h.timers).unwrap();
    h.exit(pid, ExitStatus::Signaled(15));
    h.sup
        .install(loaded("web", SLEEP), false, h.now, &mut h.timers)
        .unwrap();
    assert_eq!(h.state("web"), State::Inactive);
    h.sup
        .install(loaded("web", SLEEP), true, h.now, &mut h.timers)
        .unwrap();
    assert_eq!(h.state("web"), State::Running);
}

#[test]
fn restart_stops_then_starts_with_a_fresh_start_limit() {
    let mut h = Harness::new(&[("web", SLEEP)]);
    h.start();
    let old = h.pid("web");
    h.sup.request_restart("web", h.now, &mut h.timers).unwrap();
    assert_eq!(h.state("web"), State::Stopping);
    h.exit(old, ExitStatus::Signaled(15));
    assert_eq!(h.state("web"), State::Running);
    assert_eq!(h.sup.status("web").unwrap().restarts, 0);
    assert_eq!(h.started(), ["web", "web"]);
    assert_eq!(
        h.sup.request_restart("nope", h.now, &mut h.timers),
        Err(ActionError::Unknown("nope".into()))
    );
}

#[test]
fn a_start_request_during_a_stop_or_a_backoff_runs_the_unit() {
    let mut h = Harness::new(&[
        ("web", SLEEP),
        (
            "crash",
            "[container]\ncommand = [\"x\"]\n[service]\nrestart_delay = \"20s\"\n",
        ),
    ]);
    h.start();
    // Started while its requested stop is under way: it runs again once stopped.
    let old = h.pid("web");
    h.sup.request_stop("web", h.now, &mut h.timers).unwrap();
    h.sup.request_start("web", h.now, &mut h.timers).unwrap();
    h.exit(old, ExitStatus::Signaled(15));
    assert_eq!(h.state("web"), State::Running);
    assert_ne!(h.pid("web"), old);
    // Waiting 20 s to restart after a crash: a start, or a restart, runs it now.
    for request in [
        Supervisor::request_start as Request,
        Supervisor::request_restart,
    ] {
        let pid = h.pid("crash");
        h.exit(pid, ExitStatus::Exited(1));
        assert_eq!(h.sup.status("crash").unwrap().detail, "restarting in 20s");
        request(&mut h.sup, "crash", h.now, &mut h.timers).unwrap();
        assert_eq!(h.state("crash"), State::Running);
        assert_ne!(h.pid("crash"), pid);
    }
    // The backoff's timer is stale: firing it starts nothing more.
    let started = h.started().len();
    while !h.timers.0.is_empty() {
        h.fire_last();
    }
    assert_eq!(h.started().len(), started);
}

#[test]
fn a_unit_being_removed_cannot_be_started_again() {
    let mut h = Harness::new(&[("web", SLEEP)]);
    h.start();
    let pid = h.pid("web");
    h.sup.remove_unit("web", h.now, &mut h.timers).unwrap();
    for request in [
        Supervisor::request_start as Request,
        Supervisor::request_restart,
    ] {
        assert_eq!(
            request(&mut h.sup, "web", h.now, &mut h.timers),
            Err(ActionError::Removing("web".into()))
        );
    }
    h.exit(pid, ExitStatus::Signaled(15));
    assert!(h.sup.status("web").is_none());
    assert_eq!(h.started(), ["web"]);
}

#[test]
fn removal_stops_first_and_frees_the_slot_for_the_next_unit() {
    let mut h = Harness::new(&[
        ("db", SLEEP),
        (
            "web",
            "[unit]\nrequires = [\"db\"]\n[container]\ncommand = [\"x\"]\n",
        ),
    ]);
    h.start();
    let (db, web) = (h.pid("db"), h.pid("web"));
    h.sup.remove_unit("db", h.now, &mut h.timers).unwrap();
    assert_eq!(h.state("db"), State::Stopping);
    assert!(h.sup.take_removed().is_empty());
    h.exit(db, ExitStatus::Signaled(15));
    assert_eq!(
        h.sup.take_removed(),
        [Removed {
            name: "db".into(),
            path: "db.toml".into()
        }]
    );
    assert!(h.sup.status("db").is_none());
    assert_eq!(h.sup.statuses().len(), 1);
    // A unit that requires it loses its dependency.
    assert_eq!(h.state("web"), State::Stopping);
    h.exit(web, ExitStatus::Signaled(15));
    assert_eq!(h.state("web"), State::Failed);
    // The freed slot is reused; the old slot's timers are stale.
    h.sup
        .install(loaded("cache", SLEEP), true, h.now, &mut h.timers)
        .unwrap();
    assert_eq!(h.sup.index_of("cache"), Some(0));
    assert_eq!(h.state("cache"), State::Running);
    while !h.timers.0.is_empty() {
        h.fire_last();
    }
    assert_eq!(h.state("cache"), State::Running);
}

#[test]
fn containers_start_before_system_units() {
    let mut h = Harness::new(&[
        ("a-shell", SLEEP),
        (
            "b-web",
            "[container]\nimage = \"berth.local/web:1\"\ncommand = [\"httpd\"]\n",
        ),
        ("c-dhcp", SLEEP),
    ]);
    h.start();
    assert_eq!(h.started(), ["b-web", "a-shell", "c-dhcp"]);
}

const SLOW_CLEANUP: &str =
    "[unit]\ndescription = \"slow cleanup\"\n[container]\ncommand = [\"x\"]\n\
                            [service]\nrestart = \"always\"\nrestart_delay = \"100ms\"\n";

#[test]
fn a_cleanup_task_runs_beside_the_loop_and_the_restart_waits_for_it() {
    let mut h = Harness::new(&[("slow", SLOW_CLEANUP), ("other", SLEEP)]);
    h.start();
    let main = h.pid("slow");
    h.exit(main, ExitStatus::Exited(1));
    // The cleanup runs as a task the loop reaps: the unit is cleaning, and nothing waits.
    let task = h.rec.borrow().cleanups[0].1;
    let s = h.sup.status("slow").unwrap();
    assert_eq!(
        (s.state, s.detail.as_str(), s.pid),
        (State::Stopping, "cleaning up", None)
    );
    assert_eq!(s.last_exit_code, None);
    // Its limit is the only timer: no restart before the cleanup ends.
    assert_eq!(h.timers.0.len(), 1);
    assert_eq!(h.timers.0[0].0 - h.now, crate::launch::CLEANUP_LIMIT);
    // Other units go on meanwhile.
    h.sup
        .request_restart("other", h.now, &mut h.timers)
        .unwrap();
    assert_eq!(h.state("other"), State::Stopping);
    // The cleanup ends: now the exit counts and the restart is scheduled.
    h.exit(task, ExitStatus::Exited(0));
    let s = h.sup.status("slow").unwrap();
    assert_eq!((s.state, s.last_exit_code), (State::Exited, Some(1)));
    assert_eq!(h.fire_last(), Duration::from_millis(100));
    assert_eq!(h.started().iter().filter(|n| *n == "slow").count(), 2);
}

#[test]
fn a_stuck_cleanup_is_killed_at_its_limit_and_shutdown_waits_for_it() {
    let mut h = Harness::new(&[("slow", SLOW_CLEANUP)]);
    h.start();
    let main = h.pid("slow");
    h.sup.begin_shutdown(h.now, &mut h.timers);
    h.exit(main, ExitStatus::Signaled(15));
    let task = h.rec.borrow().cleanups[0].1;
    assert!(!h.sup.all_stopped());
    assert_eq!(h.fire_last(), crate::launch::CLEANUP_LIMIT);
    let signals = h.rec.borrow().signals.clone();
    assert_eq!(
        signals.last(),
        Some(&("slow".to_string(), task, libc::SIGKILL, true))
    );
    h.exit(task, ExitStatus::Signaled(9));
    assert!(h.sup.all_stopped());
    assert_eq!(h.state("slow"), State::Exited);
}

#[test]
fn removal_waits_for_the_cleanup() {
    let mut h = Harness::new(&[("slow", SLOW_CLEANUP)]);
    h.start();
    let main = h.pid("slow");
    h.exit(main, ExitStatus::Exited(1));
    let task = h.rec.borrow().cleanups[0].1;
    h.sup.remove_unit("slow", h.now, &mut h.timers).unwrap();
    assert!(h.sup.take_removed().is_empty());
    // What the launcher keeps for the unit (a container's writes) goes after the cleanup.
    assert!(h.rec.borrow().removed.is_empty());
    h.exit(task, ExitStatus::Exited(0));
    assert_eq!(h.sup.take_removed().len(), 1);
    assert!(!h.sup.contains("slow"));
    assert_eq!(h.rec.borrow().removed, ["slow"]);
}

#[test]
fn many_units_start_in_batches_between_other_events() {
    let names: Vec<String> = (0..1000).map(|i| format!("u{i:04}")).collect();
    let units: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), SLEEP)).collect();
    let mut h = Harness::new(&units);
    h.start();
    let first = h.started().len();
    assert!((1..=START_BATCH).contains(&first), "{first}");
    // The rest follows, batch by batch, through a timer due at once.
    let mut turns = 0;
    while h.started().len() < names.len() {
        let (at, timer) = h.timers.0.pop().unwrap();
        assert_eq!((at, timer), (h.now, Timer::StartUnits));
        h.sup.on_start_timer(h.now, &mut h.timers);
        turns += 1;
        assert!(turns <= names.len(), "no progress");
    }
    assert!(turns >= names.len() / START_BATCH - 1);
    assert!(h.timers.0.is_empty());
    assert_eq!(h.started(), names);
}

#[test]
fn a_paused_unit_skips_health_checks_and_resumes_them_when_continued() {
    let mut h = Harness::new(&[(
        "web",
        "[container]\ncommand = [\"x\"]\n[health]\nexec = [\"check\"]\ninterval = \"1s\"\n",
    )]);
    h.start();
    let pid = h.pid("web");
    assert!(h.sup.on_paused(pid, libc::SIGSTOP));
    let s = h.sup.status("web").unwrap();
    assert_eq!(
        (s.state, s.detail.as_str()),
        (State::Paused, "stopped by SIGSTOP")
    );
    // The pending first check finds the unit paused and runs nothing.
    h.fire_last();
    assert!(h.rec.borrow().health.is_empty());
    assert!(h.sup.on_continued(pid, h.now, &mut h.timers));
    assert_eq!(h.state("web"), State::Running);
    assert_eq!(h.fire_last(), FIRST_CHECK_DELAY);
    assert_eq!(h.rec.borrow().health.len(), 1);
    // Not a unit's process: not ours to judge.
    assert!(!h.sup.on_paused(9999, libc::SIGSTOP));
}

#[test]
fn a_unit_whose_health_check_cannot_start_is_stopped_and_killed_at_its_stop_timeout() {
    let mut h = Harness::new(&[(
        "web",
        "[container]\ncommand = [\"x\"]\n[health]\nexec = [\"missing\"]\ninterval = \"1s\"\n\
         retries = 1\n[service]\nstop_timeout = \"3s\"\n",
    )]);
    h.start();
    let pid = h.pid("web");
    // The first check cannot start: a failed check, and with one retry the unit is unhealthy.
    h.fire_last();
    let s = h.sup.status("web").unwrap();
    assert_eq!(
        (s.state, s.health),
        (State::Stopping, Some(Health::Unhealthy))
    );
    // The pending timer is the stop's escalation, not another health check.
    assert_eq!(h.timers.0.len(), 1);
    assert_eq!(h.fire_last(), Duration::from_secs(3));
    assert_eq!(
        h.rec.borrow().signals.last(),
        Some(&("web".to_string(), pid, libc::SIGKILL, true))
    );
    h.exit(pid, ExitStatus::Signaled(9));
    assert!(h
        .sup
        .status("web")
        .unwrap()
        .detail
        .starts_with("restarting in"));
}

#[test]
fn stopping_a_preparing_unit_stops_its_task_and_never_starts_the_main_process() {
    let mut h = Harness::new(&[("web", "[container]\ncommand = [\"prepare\"]\n")]);
    h.start();
    assert_eq!(h.sup.status("web").unwrap().detail, "preparing");
    h.sup.request_stop("web", h.now, &mut h.timers).unwrap();
    let s = h.sup.status("web").unwrap();
    // The task is signalled, but it is no main process.
    assert_eq!((s.state, s.pid), (State::Stopping, None));
    assert_eq!(
        h.rec.borrow().signals.last(),
        Some(&("web".to_string(), 1, libc::SIGTERM, false))
    );
    // Even a successful end of the step starts nothing now.
    h.exit(1, ExitStatus::Exited(0));
    let s = h.sup.status("web").unwrap();
    assert_eq!((s.state, s.detail.as_str()), (State::Exited, "stopped"));
    assert!(h.started().is_empty());
    assert!(h.sup.all_stopped());
}

#[test]
fn a_replacement_waiting_for_a_stop_survives_a_restart_or_start_request() {
    let mut h = Harness::new(&[("web", SLEEP), ("api", SLEEP)]);
    h.start();
    let v2 = "[unit]\ndescription = \"v2\"\n[container]\ncommand = [\"x\"]\n";
    for (name, request) in [
        ("web", Supervisor::request_restart as Request),
        ("api", Supervisor::request_start),
    ] {
        let old = h.pid(name);
        h.sup
            .install(loaded(name, v2), false, h.now, &mut h.timers)
            .unwrap();
        request(&mut h.sup, name, h.now, &mut h.timers).unwrap();
        assert_eq!(h.state(name), State::Stopping);
        h.exit(old, ExitStatus::Signaled(15));
        // The definition its file now holds runs.
        let s = h.sup.status(name).unwrap();
        assert_eq!((s.state, s.description.as_str()), (State::Running, "v2"));
    }
}

/// A start or restart request, as the API makes it.
type Request = fn(&mut Supervisor, &str, Instant, &mut dyn Reactor) -> Result<(), ActionError>;

#[test]
fn removing_a_unit_waiting_to_restart_cancels_the_restart() {
    let mut h = Harness::new(&[("crash", SLEEP)]);
    h.start();
    let pid = h.pid("crash");
    h.exit(pid, ExitStatus::Exited(1));
    assert!(h
        .sup
        .status("crash")
        .unwrap()
        .detail
        .starts_with("restarting in"));
    h.sup.remove_unit("crash", h.now, &mut h.timers).unwrap();
    assert_eq!(h.sup.take_removed().len(), 1);
    while !h.timers.0.is_empty() {
        h.fire_last();
    }
    assert_eq!(h.started(), ["crash"]);
    assert!(h.sup.all_stopped());
}

#[test]
fn a_paused_unit_can_be_stopped_and_shows_its_pid_while_stopping() {
    let mut h = Harness::new(&[("web", SLEEP)]);
    h.start();
    let pid = h.pid("web");
    assert!(h.sup.on_paused(pid, libc::SIGTSTP));
    assert_eq!(h.state("web"), State::Paused);
    h.sup.request_stop("web", h.now, &mut h.timers).unwrap();
    let s = h.sup.status("web").unwrap();
    assert_eq!((s.state, s.pid), (State::Stopping, Some(pid)));
    // A pause while stopping changes nothing.
    assert!(h.sup.on_paused(pid, libc::SIGSTOP));
    assert_eq!(h.state("web"), State::Stopping);
    h.exit(pid, ExitStatus::Signaled(15));
    assert_eq!(h.state("web"), State::Exited);
}

/// A setup that reports success on its `done` pipe: the unit is web at slot 0, its task pid 1.
fn setup_with_done_pipe() -> Harness {
    let mut h = Harness::new(&[(
        "web",
        "[container]\nimage = \"web:1\"\ncommand = [\"prepare-done\"]\n",
    )]);
    h.start();
    assert_eq!(h.state("web"), State::Starting);
    h
}

#[test]
fn a_setup_that_reports_done_releases_the_container_before_its_exit() {
    let mut h = setup_with_done_pipe();
    let task = h.rec.borrow().next_pid;
    // Nothing written yet: a wake-up without data changes nothing.
    h.sup.on_prepared(0, h.now, &mut h.timers);
    assert_eq!(h.state("web"), State::Starting);
    let written = nix::unistd::write(&h.rec.borrow().done_pipes[0], b"1");
    assert_eq!(written, Ok(1));
    h.sup.on_prepared(0, h.now, &mut h.timers);
    assert_eq!(h.state("web"), State::Running);
    assert_eq!(h.started(), ["web"]);
    // The task's exit that follows is no longer the unit's: reaped as an orphan's, and the
    // running container is untouched.
    assert!(!h
        .sup
        .on_exit(task, ExitStatus::Exited(0), h.now, &mut h.timers));
    assert_eq!(h.state("web"), State::Running);
    assert_eq!(h.pid("web"), task + 1);
    // A late wake-up of the closed pipe does nothing either.
    h.sup.on_prepared(0, h.now, &mut h.timers);
    assert_eq!(h.started(), ["web"]);
}

#[test]
fn a_setup_that_ends_without_reporting_done_is_judged_by_its_exit() {
    let mut h = setup_with_done_pipe();
    let task = h.rec.borrow().next_pid;
    // The task ended without writing: end of file only closes the pipe.
    h.rec.borrow_mut().done_pipes.clear();
    h.sup.on_prepared(0, h.now, &mut h.timers);
    assert_eq!(h.state("web"), State::Starting);
    h.exit(task, ExitStatus::Exited(1));
    assert_ne!(h.state("web"), State::Running);
    assert!(h.started().is_empty());
}

#[test]
fn a_done_report_after_a_stop_request_leaves_the_stop_to_the_exit() {
    let mut h = setup_with_done_pipe();
    let task = h.rec.borrow().next_pid;
    assert!(h.sup.stop_unit("web", h.now, &mut h.timers));
    let written = nix::unistd::write(&h.rec.borrow().done_pipes[0], b"1");
    assert_eq!(written, Ok(1));
    h.sup.on_prepared(0, h.now, &mut h.timers);
    assert!(
        h.started().is_empty(),
        "a stopped unit's container is not released"
    );
    // The task is still the unit's: its exit ends the start.
    h.exit(task, ExitStatus::Exited(0));
    assert!(h.started().is_empty());
    assert_ne!(h.state("web"), State::Running);
}
