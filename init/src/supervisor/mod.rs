//! Supervision: one state machine per unit (see [`State`]), driven by events from the loop:
//! process exits, timers and output. All process work goes through [`Launcher`]s, all fds and
//! timers through a [`Reactor`], so this logic is tested without root or real processes.
//!
//! Dependencies:
//! - `after = ["b"]`: the unit starts once `b` is *up*: running, or healthy when `b` has a
//!   health check, or exited successfully. If `b` failed, is missing or is invalid, the
//!   ordering is void and the unit starts anyway.
//! - `requires = ["b"]` implies `after` and also: if `b` is missing, invalid, or ends up
//!   `failed` (gave up restarting), the unit does not start or is stopped, and shows `failed`
//!   with the reason. A crash of `b` that is followed by a restart does not touch the unit.
//! - Stopping (shutdown) goes in reverse: a unit is stopped once nothing that is ordered
//!   after it is still running.

pub mod backoff;
mod manage;
pub mod state;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{info, warn};

pub use manage::{ActionError, InstallError, Installed, Removed};
pub use state::{Health, State, UnitStatus};

use crate::event::{after, Key, Reactor, Timer};
use crate::graph::{describe_cycle, Graph};
use crate::launch::{Launcher, Spawned, Step};
use crate::logs::{LogPolicy, Pipes, UnitLog};
use crate::reaper::ExitStatus;
use crate::unit::value::format_duration;
use crate::unit::{Loaded, Restart, Unit};
use backoff::{Backoff, StartLimit};

/// What the unit's single pending timer will do when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    None,
    Restart,
    Escalate,
    HealthCheck,
}

/// Why a unit is being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopReason {
    Requested,
    Unhealthy,
    DependencyFailed(String),
    /// Stopped to start again at once (restart request, or a replaced unit file).
    Restart,
    /// Stopped to be removed.
    Remove,
}

/// How a dependency looks to a unit that waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DepState {
    Up,
    Pending,
    Down(String),
}

struct Slot {
    name: String,
    path: String,
    unit: Option<Unit>,
    launcher: Option<usize>,
    state: State,
    detail: String,
    error: Option<String>,
    /// Main process, preparation process while `preparing`, cleanup task while `cleaning`.
    pid: Option<i32>,
    preparing: bool,
    /// The main process has exited with this status and its cleanup task (`pid`) runs: what
    /// follows the exit (restart, removal, …) waits for the cleanup.
    cleaning: Option<ExitStatus>,
    prepared: u32,
    health_pid: Option<i32>,
    health: Health,
    health_failures: u32,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    started_at: Option<Instant>,
    backoff: Backoff,
    limit: StartLimit,
    generation: u64,
    action: Action,
    /// Should be running (cleared by stop requests and shutdown).
    wanted: bool,
    stop_reason: Option<StopReason>,
    dependents: Vec<usize>,
    log: UnitLog,
    /// A new definition waiting for the running instance to stop (see `manage`).
    replacement: Option<Loaded>,
    /// Removed from the supervisor: a free slot (indices stay stable for timers).
    removed: bool,
}

impl Slot {
    /// The unit's name and what it is ordered after, for [`Graph`].
    fn graph_node(&self) -> (&str, Vec<&str>) {
        let deps = self
            .unit
            .as_ref()
            .map(|u| u.ordered_after().collect())
            .unwrap_or_default();
        (self.name.as_str(), deps)
    }

    fn is_active(&self) -> bool {
        self.pid.is_some() || self.action == Action::Restart
    }
}

/// Most units started in one turn of the loop, and the time one turn may spend starting them:
/// the API and the other units are served between batches. A large answer (the unit list of
/// thousands of units) leaves in one write per turn, so the slice bounds its latency too.
const START_BATCH: usize = 256;
const START_SLICE: Duration = Duration::from_millis(5);

/// What one `advance` may still start.
struct Budget {
    left: usize,
    until: Instant,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            left: START_BATCH,
            until: after(Instant::now(), START_SLICE),
        }
    }

    fn exhausted(&self) -> bool {
        self.left == 0 || Instant::now() >= self.until
    }
}

pub struct Supervisor {
    slots: Vec<Slot>,
    /// Slot indices in start order (see `start_order`), kept with `dependents`.
    order: Vec<usize>,
    /// A [`Timer::StartUnits`] is pending: more units were ready than one batch.
    more_scheduled: bool,
    by_name: HashMap<String, usize>,
    /// pid → (unit, is health check)
    pids: HashMap<i32, (usize, bool)>,
    launchers: Vec<Box<dyn Launcher>>,
    pipes: Pipes,
    log_policy: LogPolicy,
    shutting_down: bool,
    /// Units whose removal completed, for [`Supervisor::take_removed`].
    removed_units: Vec<Removed>,
}

impl Supervisor {
    /// Takes every unit found on disk (valid or not). Invalid units, units in dependency
    /// cycles and units no launcher can run are kept as `failed` with their error.
    pub fn new(
        loaded: Vec<Loaded>,
        launchers: Vec<Box<dyn Launcher>>,
        log_policy: LogPolicy,
    ) -> Supervisor {
        let mut slots: Vec<Slot> = loaded
            .into_iter()
            .map(|l| new_slot(l, &launchers, &log_policy))
            .collect();
        let by_name: HashMap<String, usize> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();

        link_dependents(&mut slots, &by_name);

        let graph = Graph::new(slots.iter().map(Slot::graph_node));
        for cycle in graph.cycles() {
            let text = describe_cycle(&cycle);
            for name in &cycle {
                if let Some(&i) = by_name.get(name) {
                    fail_invalid(&mut slots[i], format!("dependency cycle: {text}"));
                }
            }
        }
        for slot in &slots {
            if let Some(e) = &slot.error {
                warn!("unit {}: {}", slot.name, e.replace('\n', "; "));
            }
        }
        let order = start_order(&slots);
        Supervisor {
            slots,
            order,
            more_scheduled: false,
            by_name,
            pids: HashMap::new(),
            launchers,
            pipes: Pipes::default(),
            log_policy,
            shutting_down: false,
            removed_units: Vec::new(),
        }
    }

    /// Wants every valid unit and starts those whose dependencies are up.
    pub fn start_all(&mut self, now: Instant, r: &mut dyn Reactor) {
        for slot in &mut self.slots {
            if slot.error.is_none() {
                slot.wanted = true;
            }
        }
        self.advance(now, r);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Begins the ordered stop of everything (reverse dependency order).
    pub fn begin_shutdown(&mut self, now: Instant, r: &mut dyn Reactor) {
        if self.shutting_down {
            return;
        }
        info!("stopping all units");
        self.shutting_down = true;
        for slot in &mut self.slots {
            slot.wanted = false;
            if slot.pid.is_none() {
                if slot.action == Action::Restart {
                    slot.state = State::Exited;
                    slot.detail = "stopped".into();
                    slot.action = Action::None;
                    slot.generation += 1;
                } else if slot.state == State::Inactive {
                    slot.detail = "not started: shutting down".into();
                }
            }
        }
        self.advance(now, r);
    }

    /// True once no unit has a process left (shutdown can proceed).
    pub fn all_stopped(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.pid.is_none() && s.health_pid.is_none())
    }

    /// Kills whatever is left of every unit (end of the shutdown deadline).
    pub fn kill_all(&mut self) {
        for i in 0..self.slots.len() {
            if let Some(pid) = self.slots[i].pid {
                self.kill_now(i, pid);
            }
        }
    }

    /// SIGKILL for everything of unit `i` whose process (main, preparation or cleanup) is
    /// `pid`.
    fn kill_now(&mut self, i: usize, pid: i32) {
        if self.slots[i].cleaning.is_some() || self.slots[i].preparing {
            // Tasks run in a process group of their own.
            crate::launch::process::kill_group(pid);
        }
        self.signal(i, pid, libc::SIGKILL, true);
    }

    /// Recomputes what follows from the set of units: dependents and the start order.
    fn relink(&mut self) {
        link_dependents(&mut self.slots, &self.by_name);
        self.order = start_order(&self.slots);
    }

    /// More units were ready than one batch: start the next batch.
    pub fn on_start_timer(&mut self, now: Instant, r: &mut dyn Reactor) {
        self.more_scheduled = false;
        self.advance(now, r);
    }

    /// Work batched over a whole turn of the loop (the launchers' sweeps).
    pub fn after_events(&mut self) {
        for l in &mut self.launchers {
            l.sweep();
        }
    }

    /// The longest `stop_timeout` of any unit (bounds the whole shutdown).
    pub fn longest_stop_timeout(&self) -> Duration {
        let timeouts = self
            .slots
            .iter()
            .filter_map(|s| s.unit.as_ref())
            .map(|u| u.service.stop_timeout);
        timeouts.max().unwrap_or_default()
    }

    /// Gives up on processes that survived SIGKILL (stuck in the kernel) so shutdown ends.
    pub fn forget_processes(&mut self) {
        for slot in &mut self.slots {
            if slot.pid.take().is_some() {
                slot.state = State::Failed;
                slot.error = Some("did not exit after SIGKILL".into());
            }
            slot.cleaning = None;
            slot.preparing = false;
            slot.health_pid = None;
        }
        self.pids.clear();
    }

    /// Stops one unit by request (it stays stopped until started again).
    pub fn stop_unit(&mut self, name: &str, now: Instant, r: &mut dyn Reactor) -> bool {
        let Some(&i) = self.by_name.get(name) else {
            return false;
        };
        self.stop(i, StopReason::Requested, now, r);
        self.advance(now, r);
        true
    }

    /// Starts one stopped, exited or failed unit by request (start limit counts anew).
    pub fn start_unit(&mut self, name: &str, now: Instant, r: &mut dyn Reactor) -> bool {
        let Some(&i) = self.by_name.get(name) else {
            return false;
        };
        let slot = &mut self.slots[i];
        if slot.unit.is_none() || slot.launcher.is_none() || self.shutting_down {
            return false;
        }
        if !slot.is_active() {
            slot.wanted = true;
            slot.limit.clear();
            slot.backoff.reset();
            slot.error = None;
            slot.state = State::Inactive;
            slot.detail.clear();
        }
        self.advance(now, r);
        true
    }

    pub fn statuses(&self) -> Vec<UnitStatus> {
        self.slots
            .iter()
            .filter(|s| !s.removed)
            .map(|s| self.status_of(s))
            .collect()
    }

    pub fn status(&self, name: &str) -> Option<UnitStatus> {
        self.by_name
            .get(name)
            .map(|&i| self.status_of(&self.slots[i]))
    }

    fn status_of(&self, s: &Slot) -> UnitStatus {
        let u = s.unit.as_ref();
        UnitStatus {
            name: s.name.clone(),
            path: s.path.clone(),
            description: u.map(|u| u.description.clone()).unwrap_or_default(),
            kind: u.map(|u| if u.is_system() { "system" } else { "container" }),
            critical: u.is_some_and(|u| u.critical),
            state: s.state,
            detail: s.detail.clone(),
            health: u.and_then(|u| u.health.as_ref()).map(|_| s.health),
            pid: if s.preparing || s.cleaning.is_some() {
                None
            } else {
                s.pid
            },
            restarts: s.restarts,
            last_exit_code: s.last_exit.map(ExitStatus::code),
            last_exit: s.last_exit.map(|e| e.to_string()),
            error: s.error.clone(),
            after: u.map(|u| u.after.clone()).unwrap_or_default(),
            requires: u.map(|u| u.requires.clone()).unwrap_or_default(),
        }
    }

    /// A reaped process. Returns false when it belongs to no unit (a re-parented orphan).
    pub fn on_exit(
        &mut self,
        pid: i32,
        status: ExitStatus,
        now: Instant,
        r: &mut dyn Reactor,
    ) -> bool {
        let Some((i, is_health)) = self.pids.remove(&pid) else {
            return false;
        };
        if is_health {
            self.on_health_exit(i, status, now, r);
        } else if self.slots[i].preparing {
            self.on_prepare_exit(i, status, now, r);
        } else if let Some(main) = self.slots[i].cleaning.take() {
            self.slots[i].pid = None;
            self.after_exit(i, main, now, r);
        } else {
            self.on_main_exit(i, status, now, r);
        }
        self.advance(now, r);
        true
    }

    /// A child was stopped by `signal`: a unit's main process shows as `paused` (its health
    /// checks wait). Returns false when it is no unit's main process.
    pub fn on_paused(&mut self, pid: i32, signal: i32) -> bool {
        let Some(&(i, false)) = self.pids.get(&pid) else {
            return false;
        };
        let slot = &mut self.slots[i];
        if slot.preparing || slot.cleaning.is_some() {
            return false;
        }
        if matches!(slot.state, State::Running | State::Healthy) {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {signal}"));
            info!("unit {}: paused (stopped by {name})", slot.name);
            slot.state = State::Paused;
            slot.detail = format!("stopped by {name}");
        }
        true
    }

    /// A stopped child was continued: a paused unit runs again and its health checks resume.
    pub fn on_continued(&mut self, pid: i32, now: Instant, r: &mut dyn Reactor) -> bool {
        let Some(&(i, false)) = self.pids.get(&pid) else {
            return false;
        };
        let slot = &mut self.slots[i];
        if slot.state != State::Paused {
            return true;
        }
        info!("unit {}: continued", slot.name);
        slot.state = if slot.health == Health::Healthy {
            State::Healthy
        } else {
            State::Running
        };
        slot.detail.clear();
        let first_check = slot
            .unit
            .as_ref()
            .and_then(|u| u.health.as_ref())
            .map(|h| h.interval.min(Duration::from_millis(100)));
        if let Some(d) = first_check {
            self.arm(i, Action::HealthCheck, after(now, d), r);
        }
        true
    }

    /// A unit timer fired.
    pub fn on_timer(&mut self, unit: usize, generation: u64, now: Instant, r: &mut dyn Reactor) {
        let Some(slot) = self.slots.get_mut(unit) else {
            return;
        };
        if slot.generation != generation {
            return; // superseded
        }
        let action = std::mem::replace(&mut slot.action, Action::None);
        match action {
            Action::None => {}
            Action::Restart => {
                slot.restarts += 1;
                self.launch(unit, now, r);
            }
            Action::Escalate if slot.cleaning.is_some() => {
                if let Some(pid) = slot.pid {
                    warn!(
                        "unit {}: cleanup still running after {}, killing it",
                        slot.name,
                        format_duration(crate::launch::CLEANUP_LIMIT)
                    );
                    self.kill_now(unit, pid);
                }
            }
            Action::Escalate => {
                if let Some(pid) = slot.pid {
                    let timeout = slot
                        .unit
                        .as_ref()
                        .map(|u| u.service.stop_timeout)
                        .unwrap_or_default();
                    warn!(
                        "unit {}: still running {} after stop signal, sending SIGKILL",
                        slot.name,
                        format_duration(timeout)
                    );
                    self.signal(unit, pid, libc::SIGKILL, true);
                }
            }
            Action::HealthCheck => self.health_check(unit, now, r),
        }
        self.advance(now, r);
    }

    /// A unit's output pipe is readable (or closed).
    pub fn on_output(&mut self, id: u64, r: &mut dyn Reactor) {
        self.on_output_to(id, r, &mut |_, _| {});
    }

    /// Like [`Supervisor::on_output`], also handing every chunk written to a unit's log to
    /// `tap(unit, bytes)` (log followers, remote syslog).
    pub fn on_output_to(&mut self, id: u64, r: &mut dyn Reactor, tap: &mut dyn FnMut(&str, &[u8])) {
        let (slots, policy) = (&mut self.slots, &self.log_policy);
        let done = self.pipes.drain(id, |unit, bytes| {
            if let Some(slot) = slots.get_mut(unit) {
                if let Some(complaint) = slot.log.write(policy, bytes) {
                    warn!("unit {}: {complaint}", slot.name);
                }
                tap(&slot.name, bytes);
            }
        });
        if let Some(fd) = done {
            use std::os::fd::AsFd;
            r.unwatch(fd.as_fd());
        }
    }

    /// Where unit logs are written.
    pub fn log_policy(&self) -> &LogPolicy {
        &self.log_policy
    }

    /// Resource usage of a unit's cgroup, when its launcher has one for it.
    pub fn usage(&self, name: &str) -> Option<crate::launch::Usage> {
        let slot = &self.slots[*self.by_name.get(name)?];
        let (unit, l) = (slot.unit.as_ref()?, slot.launcher?);
        self.launchers[l].usage(unit)
    }

    /// The unit index of `name` (timers carry indices).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    fn dep_state(&self, name: &str) -> DepState {
        let Some(&i) = self.by_name.get(name) else {
            return DepState::Down(format!("unit {name} does not exist"));
        };
        let s = &self.slots[i];
        let has_health = s.unit.as_ref().is_some_and(|u| u.health.is_some());
        match s.state {
            State::Failed => DepState::Down(format!("unit {name} failed")),
            State::Healthy => DepState::Up,
            State::Running if !has_health => DepState::Up,
            State::Exited
                if s.action != Action::Restart && s.last_exit.is_some_and(ExitStatus::success) =>
            {
                DepState::Up
            }
            State::Exited | State::Inactive if !s.wanted && s.action != Action::Restart => {
                DepState::Down(format!("unit {name} is stopped"))
            }
            _ => DepState::Pending,
        }
    }

    /// Starts what became startable, fails what lost a required dependency, and during
    /// shutdown stops what nothing depends on any more. Runs after every event.
    fn advance(&mut self, now: Instant, r: &mut dyn Reactor) {
        // A start can make later units startable; repeat until nothing changes (bounded: each
        // round but the last starts at least one unit), or until this turn's batch is used
        // up: then the loop serves its other events and a timer due at once goes on.
        let mut budget = Budget::new();
        for _ in 0..=self.slots.len() {
            if !self.advance_once(now, r, &mut budget) || budget.exhausted() {
                break;
            }
        }
        if budget.exhausted() && !self.more_scheduled {
            self.more_scheduled = true;
            r.schedule(now, Timer::StartUnits);
        }
        if self.shutting_down {
            for i in 0..self.slots.len() {
                let s = &self.slots[i];
                if s.pid.is_none() || s.state == State::Stopping {
                    continue;
                }
                let busy_dependents = s.dependents.iter().any(|&d| self.slots[d].pid.is_some());
                if !busy_dependents {
                    self.stop(i, StopReason::Requested, now, r);
                }
            }
        }
    }

    /// One pass of `advance`; true when it started a unit.
    fn advance_once(&mut self, now: Instant, r: &mut dyn Reactor, budget: &mut Budget) -> bool {
        let mut started = false;
        if budget.exhausted() {
            return false;
        }
        for k in 0..self.order.len() {
            let i = self.order[k];
            // The cheap test first: a pass runs once per batch over every unit, so with
            // thousands of units most of them are running already. Only a unit waiting to
            // start, or one with `requires` (which may have to stop), goes further.
            let s = &self.slots[i];
            let requires = s.unit.as_ref().is_some_and(|u| !u.requires.is_empty());
            let waiting = s.wanted && s.state == State::Inactive;
            if !(requires || waiting) {
                continue;
            }
            if !self.try_start(i, now, r) {
                continue;
            }
            budget.left = budget.left.saturating_sub(1);
            started = true;
            // What waited only for this unit starts right behind it, before the rest of the
            // pass: a container ordered after the network unit begins its setup while the
            // other system units fork, not one pass later.
            for k in 0..self.slots[i].dependents.len() {
                let d = self.slots[i].dependents[k];
                if self.try_start(d, now, r) {
                    budget.left = budget.left.saturating_sub(1);
                }
            }
            if budget.exhausted() {
                break;
            }
        }
        started
    }

    /// Starts unit `i` if it is wanted, inactive and nothing it is ordered after is pending;
    /// fails or stops it when a required dependency is down. True when it started.
    fn try_start(&mut self, i: usize, now: Instant, r: &mut dyn Reactor) -> bool {
        let s = &self.slots[i];
        let Some(unit) = &s.unit else { return false };
        if self.shutting_down || !s.wanted {
            return false;
        }
        let broken = unit.requires.iter().find_map(|d| match self.dep_state(d) {
            DepState::Down(why) => Some(why),
            _ => None,
        });
        if let Some(why) = broken {
            if s.is_active() {
                self.stop(i, StopReason::DependencyFailed(why), now, r);
            } else if s.state == State::Inactive {
                let slot = &mut self.slots[i];
                slot.wanted = false;
                slot.state = State::Failed;
                slot.detail = "dependency failed".into();
                slot.error = Some(format!("required dependency: {why}"));
                warn!("unit {}: not started: {why}", slot.name);
            }
            return false;
        }
        if s.state != State::Inactive {
            return false;
        }
        let waiting: Vec<&str> = unit
            .ordered_after()
            .filter(|d| self.dep_state(d) == DepState::Pending)
            .collect();
        if waiting.is_empty() {
            self.launch(i, now, r);
            true
        } else {
            let detail = format!("waiting for {}", waiting.join(", "));
            self.slots[i].detail = detail;
            false
        }
    }

    fn arm(&mut self, i: usize, action: Action, at: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        slot.generation += 1;
        slot.action = action;
        r.schedule(
            at,
            Timer::Unit {
                unit: i,
                generation: slot.generation,
            },
        );
    }

    fn disarm(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.generation += 1;
        slot.action = Action::None;
    }

    fn launch(&mut self, i: usize, now: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        slot.limit.record(now);
        slot.prepared = 0;
        slot.error = None;
        self.continue_start(i, now, r);
    }

    fn continue_start(&mut self, i: usize, now: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        let (Some(unit), Some(l)) = (&slot.unit, slot.launcher) else {
            return;
        };
        slot.state = State::Starting;
        slot.health = Health::Unknown;
        slot.health_failures = 0;
        match self.launchers[l].start(unit, slot.prepared) {
            Ok(Step::Prepare(sp)) => {
                slot.detail = "preparing".into();
                slot.preparing = true;
                self.adopt(i, sp, false, r);
            }
            Ok(Step::Main(sp)) => {
                slot.detail.clear();
                slot.preparing = false;
                slot.state = State::Running;
                slot.started_at = Some(now);
                info!("unit {}: started, pid {}", slot.name, sp.pid);
                let first_check = unit
                    .health
                    .as_ref()
                    .map(|h| h.interval.min(Duration::from_millis(100)));
                self.adopt(i, sp, false, r);
                match first_check {
                    Some(d) => self.arm(i, Action::HealthCheck, after(now, d), r),
                    None => self.disarm(i),
                }
            }
            Err(e) => {
                warn!("unit {}: cannot start: {e}", slot.name);
                let code = e.exit_code();
                slot.error = Some(e.to_string());
                slot.preparing = false;
                self.clean_then_after_exit(i, None, ExitStatus::Exited(code), now, r);
            }
        }
    }

    fn adopt(&mut self, i: usize, sp: Spawned, is_health: bool, r: &mut dyn Reactor) {
        self.pids.insert(sp.pid, (i, is_health));
        if is_health {
            self.slots[i].health_pid = Some(sp.pid);
        } else {
            self.slots[i].pid = Some(sp.pid);
        }
        if let Some(fd) = sp.output {
            use std::os::fd::AsFd;
            let id = self.pipes.add(i, fd);
            let watched = self
                .pipes
                .fd(id)
                .map(|fd| r.watch(fd, Key::UnitOutput(id), false));
            if let Some(Err(e)) = watched {
                warn!("unit {}: cannot watch output: {e}", self.slots[i].name);
                if let Some(fd) = self.pipes.drain(id, |_, _| {}) {
                    r.unwatch(fd.as_fd());
                }
            }
        }
    }

    fn signal(&mut self, i: usize, pid: i32, signal: i32, all: bool) {
        let slot = &self.slots[i];
        let (Some(unit), Some(l)) = (&slot.unit, slot.launcher) else {
            return;
        };
        if let Err(e) = self.launchers[l].signal(unit, pid, signal, all) {
            warn!("unit {}: {e}", slot.name);
        }
    }

    fn kill_health_check(&mut self, i: usize) {
        if let Some(pid) = self.slots[i].health_pid {
            crate::launch::process::kill_group(pid);
        }
    }

    fn stop(&mut self, i: usize, reason: StopReason, now: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        if !matches!(reason, StopReason::Unhealthy | StopReason::Restart) {
            slot.wanted = false;
        }
        match slot.pid {
            Some(pid) if slot.state != State::Stopping => {
                let (sig, timeout) = slot
                    .unit
                    .as_ref()
                    .map(|u| (u.service.stop_signal, u.service.stop_timeout))
                    .unwrap_or((libc::SIGTERM, Duration::from_secs(10)));
                let why = match &reason {
                    StopReason::Requested => "requested".to_string(),
                    StopReason::Unhealthy => "unhealthy".to_string(),
                    StopReason::DependencyFailed(why) => format!("required dependency: {why}"),
                    StopReason::Restart => "restart".to_string(),
                    StopReason::Remove => "removal".to_string(),
                };
                info!("unit {}: stopping ({why})", slot.name);
                slot.state = State::Stopping;
                slot.detail.clear();
                slot.stop_reason = Some(reason);
                self.kill_health_check(i);
                self.signal(i, pid, sig, false);
                self.arm(i, Action::Escalate, after(now, timeout), r);
            }
            Some(_) => {}
            None => {
                if slot.action == Action::Restart {
                    self.disarm(i);
                }
                let slot = &mut self.slots[i];
                match reason {
                    StopReason::DependencyFailed(why) => {
                        slot.state = State::Failed;
                        slot.error = Some(format!("required dependency: {why}"));
                    }
                    _ if slot.state == State::Exited || slot.state == State::Inactive => {
                        slot.detail = "stopped".into();
                    }
                    _ => {}
                }
            }
        }
    }

    fn on_prepare_exit(&mut self, i: usize, status: ExitStatus, now: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        slot.pid = None;
        slot.preparing = false;
        if status.success() && slot.wanted && slot.stop_reason.is_none() {
            slot.prepared += 1;
            self.continue_start(i, now, r);
        } else {
            if !status.success() {
                let detail = match (&slot.unit, slot.launcher) {
                    (Some(unit), Some(l)) => self.launchers[l].preparation_error(unit),
                    _ => None,
                };
                let slot = &mut self.slots[i];
                slot.error = Some(detail.unwrap_or_else(|| format!("preparation step {status}")));
            }
            self.on_main_exit(i, status, now, r);
        }
    }

    fn on_main_exit(&mut self, i: usize, status: ExitStatus, now: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        let pid = slot.pid.take();
        self.kill_health_check(i);
        info!("unit {}: {status}", self.slots[i].name);
        self.clean_then_after_exit(i, pid, status, now, r);
    }

    /// Runs the launcher's cleanup after the main process `pid` exited (or a start failed);
    /// what follows the exit waits for a cleanup task, if the launcher started one.
    fn clean_then_after_exit(
        &mut self,
        i: usize,
        pid: Option<i32>,
        status: ExitStatus,
        now: Instant,
        r: &mut dyn Reactor,
    ) {
        let slot = &self.slots[i];
        let task = match (&slot.unit, slot.launcher) {
            (Some(unit), Some(l)) => self.launchers[l].cleanup(unit, pid),
            _ => None,
        };
        let Some(task) = task else {
            return self.after_exit(i, status, now, r);
        };
        let slot = &mut self.slots[i];
        slot.cleaning = Some(status);
        slot.state = State::Stopping;
        slot.detail = "cleaning up".into();
        self.adopt(i, task, false, r);
        self.arm(
            i,
            Action::Escalate,
            after(now, crate::launch::CLEANUP_LIMIT),
            r,
        );
    }

    /// Decides what follows an exit (or a failed start): stay stopped, fail, or restart.
    fn after_exit(&mut self, i: usize, status: ExitStatus, now: Instant, r: &mut dyn Reactor) {
        self.disarm(i);
        let shutting_down = self.shutting_down;
        let slot = &mut self.slots[i];
        slot.last_exit = Some(status);
        slot.health = Health::Unknown;
        let Some(unit) = &slot.unit else { return };
        let mut failed = !status.success();
        match slot.stop_reason.take() {
            Some(StopReason::Requested) => {
                slot.state = State::Exited;
                slot.detail = "stopped".into();
                return;
            }
            Some(StopReason::DependencyFailed(why)) => {
                slot.state = State::Failed;
                slot.detail = "dependency failed".into();
                slot.error = Some(format!("required dependency: {why}"));
                return;
            }
            Some(StopReason::Unhealthy) => failed = true,
            Some(StopReason::Restart) => {
                self.restarted(i);
                return;
            }
            Some(StopReason::Remove) => {
                self.finish_removal(i);
                return;
            }
            None => {}
        }
        let restart = slot.wanted
            && !shutting_down
            && match unit.service.restart {
                Restart::Always => true,
                Restart::OnFailure => failed,
                Restart::Never => false,
            };
        if !restart {
            slot.wanted = false;
            slot.state = if failed { State::Failed } else { State::Exited };
            slot.detail.clear();
            return;
        }
        if !slot.limit.allows(now) {
            let why = format!(
                "start limit reached: {} starts within {}",
                unit.service.start_limit_burst,
                format_duration(unit.service.start_limit_interval)
            );
            warn!("unit {}: {why}; giving up", slot.name);
            slot.wanted = false;
            slot.state = State::Failed;
            slot.detail = "start limit".into();
            slot.error = Some(why);
            return;
        }
        let ran = slot
            .started_at
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        if ran >= unit.service.restart_delay_max {
            slot.backoff.reset();
        }
        let delay = slot.backoff.next_delay();
        info!(
            "unit {}: restarting in {}",
            slot.name,
            format_duration(delay)
        );
        slot.state = State::Exited;
        slot.detail = format!("restarting in {}", format_duration(delay));
        self.arm(i, Action::Restart, after(now, delay), r);
    }

    fn health_check(&mut self, i: usize, now: Instant, r: &mut dyn Reactor) {
        let slot = &self.slots[i];
        let Some(h) = slot.unit.as_ref().and_then(|u| u.health.as_ref()) else {
            return;
        };
        let interval = h.interval;
        if !matches!(slot.state, State::Running | State::Healthy) {
            return;
        }
        if slot.health_pid.is_some() {
            // The previous check outlived its interval: it counts as failed when reaped.
            self.kill_health_check(i);
        } else if let (Some(unit), Some(l)) = (&slot.unit, slot.launcher) {
            match self.launchers[l].health_check(unit) {
                Ok(sp) => self.adopt(i, sp, true, r),
                Err(e) => {
                    warn!("unit {}: health check cannot start: {e}", slot.name);
                    self.record_health(i, false, now, r);
                }
            }
        }
        self.arm(i, Action::HealthCheck, after(now, interval), r);
    }

    fn on_health_exit(&mut self, i: usize, status: ExitStatus, now: Instant, r: &mut dyn Reactor) {
        self.slots[i].health_pid = None;
        if matches!(self.slots[i].state, State::Running | State::Healthy) {
            self.record_health(i, status.success(), now, r);
        }
    }

    fn record_health(&mut self, i: usize, ok: bool, now: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        let Some(unit) = &slot.unit else { return };
        let retries = unit.health.as_ref().map_or(1, |h| h.retries);
        if ok {
            if slot.health != Health::Healthy {
                info!("unit {}: healthy", slot.name);
            }
            slot.health = Health::Healthy;
            slot.health_failures = 0;
            slot.state = State::Healthy;
            slot.detail.clear();
            slot.backoff.reset();
            return;
        }
        slot.health_failures += 1;
        if slot.health_failures < retries {
            return;
        }
        slot.health = Health::Unhealthy;
        slot.state = State::Running;
        slot.detail = "unhealthy".into();
        warn!(
            "unit {}: unhealthy after {} failed checks",
            slot.name, slot.health_failures
        );
        if unit.service.restart != Restart::Never {
            self.stop(i, StopReason::Unhealthy, now, r);
        }
    }
}

/// A fresh slot for a unit found on disk (or uploaded): inactive, or failed when invalid or
/// when no launcher can run it.
fn new_slot(l: Loaded, launchers: &[Box<dyn Launcher>], log_policy: &LogPolicy) -> Slot {
    let (unit, error) = match l.unit {
        Ok(u) => (Some(u), None),
        Err(d) => (None, Some(d.to_string())),
    };
    let service = unit.as_ref().map(|u| u.service.clone()).unwrap_or_default();
    let launcher = unit
        .as_ref()
        .and_then(|u| launchers.iter().position(|x| x.handles(u)));
    let mut slot = Slot {
        log: UnitLog::new(log_policy, &l.name),
        name: l.name,
        path: l.path.display().to_string(),
        unit,
        launcher,
        state: if error.is_some() {
            State::Failed
        } else {
            State::Inactive
        },
        detail: if error.is_some() {
            "invalid".into()
        } else {
            String::new()
        },
        error,
        pid: None,
        preparing: false,
        cleaning: None,
        prepared: 0,
        health_pid: None,
        health: Health::Unknown,
        health_failures: 0,
        restarts: 0,
        last_exit: None,
        started_at: None,
        backoff: Backoff::new(service.restart_delay, service.restart_delay_max),
        limit: StartLimit::new(service.start_limit_burst, service.start_limit_interval),
        generation: 0,
        action: Action::None,
        wanted: false,
        stop_reason: None,
        dependents: Vec::new(),
        replacement: None,
        removed: false,
    };
    if slot.unit.is_some() && slot.launcher.is_none() {
        let why = "no launcher can run this unit (container support is not available)";
        fail_invalid(&mut slot, why.to_string());
    }
    slot
}

/// Slot indices: container units first (a container's start is a setup task that runs beside
/// PID 1, so it begins before the system units' fork and exec instead of after), then the
/// system units other units wait for, then the rest; slot order within each. Computed when
/// units change, not per pass: a pass over thousands of units stays linear.
fn start_order(slots: &[Slot]) -> Vec<usize> {
    let rank = |i: usize| {
        let slot = &slots[i];
        match &slot.unit {
            Some(u) if !u.is_system() => 0,
            _ if !slot.dependents.is_empty() => 1,
            _ => 2,
        }
    };
    let mut order: Vec<usize> = (0..slots.len()).collect();
    // Stable: slot order is kept within a rank.
    order.sort_by_key(|&i| rank(i));
    order
}

/// Recomputes every slot's `dependents` (units ordered after it) from the unit definitions.
fn link_dependents(slots: &mut [Slot], by_name: &HashMap<String, usize>) {
    for slot in slots.iter_mut() {
        slot.dependents.clear();
    }
    for i in 0..slots.len() {
        let deps: Vec<usize> = slots[i]
            .unit
            .as_ref()
            .map(|u| {
                u.ordered_after()
                    .filter_map(|d| by_name.get(d).copied())
                    .collect()
            })
            .unwrap_or_default();
        for d in deps {
            slots[d].dependents.push(i);
        }
    }
}

fn fail_invalid(slot: &mut Slot, why: String) {
    slot.state = State::Failed;
    slot.detail = "invalid".into();
    slot.error = Some(why);
    slot.unit = None;
}

#[cfg(test)]
mod tests;
