//! Supervision: one state machine per unit (see [`Phase`], shown as [`State`]), driven by
//! events from the loop: process exits, timers and output. All process work goes through
//! [`Launcher`]s, all fds and timers through a [`Reactor`], so this logic is tested without
//! root or real processes.
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
//!
//! The methods of [`Supervisor`] live by verb: `start`, `stop`, `exit` (reaping), `health`,
//! `deps` (ordering and the pass that acts on it), `manage` (the control API's changes).

pub mod backoff;
mod deps;
mod exit;
mod health;
mod manage;
mod phase;
mod start;
pub mod state;
mod stop;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use log::warn;

pub use manage::{ActionError, InstallError, Installed, Removed};
pub use state::{Health, State, UnitStatus};

use crate::event::{Key, Reactor, Timer};
use crate::graph::{describe_cycle, Graph};
use crate::launch::{Launcher, Spawned};
use crate::reaper::ExitStatus;
use crate::unit::value::format_duration;
use crate::unit::{Loaded, Unit};
use crate::unit_logs::{LogPolicy, Pipes, UnitLog};
use backoff::{Backoff, StartLimit};
use deps::{link_dependents, start_order};
use phase::Phase;

struct Slot {
    name: String,
    path: String,
    unit: Option<Unit>,
    launcher: Option<usize>,
    /// What the unit is doing, with what that phase owns.
    phase: Phase,
    /// Should be running: the goal, beside the phase (cleared by stop requests and shutdown,
    /// so a unit runs on without it until its turn to stop comes).
    wanted: bool,
    /// Why the unit failed or is invalid; kept across a restart's back-off.
    error: Option<String>,
    /// A health check process. It outlives the run it checked (killed when the run ends, but
    /// tracked until reaped: shutdown waits for it).
    probe: Option<i32>,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    /// When the last main process started (a long run starts the backoff over).
    started_at: Option<Instant>,
    backoff: Backoff,
    limit: StartLimit,
    /// Of the unit's single pending timer; what it does follows from the phase.
    generation: u64,
    dependents: Vec<usize>,
    log: UnitLog,
    /// The running preparation task's `done` pipe (see [`crate::launch::Step::Prepare`]).
    prepared: Option<OwnedFd>,
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

    fn is_removed(&self) -> bool {
        matches!(self.phase, Phase::Removed)
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
    /// Until when, at boot, system units nothing waits for hold their start while containers
    /// come up (see `deps::BOOT_HOLD`); set by the first `start_all`.
    boot_hold_until: Option<Instant>,
    /// A [`Timer::StartUnits`] at `boot_hold_until` is pending.
    hold_timer: bool,
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
            boot_hold_until: None,
            hold_timer: false,
            removed_units: Vec::new(),
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Work batched over a whole turn of the loop (the launchers' sweeps).
    pub fn after_events(&mut self) {
        for l in &mut self.launchers {
            l.sweep();
        }
    }

    pub fn statuses(&self) -> Vec<UnitStatus> {
        self.slots
            .iter()
            .filter(|s| !s.is_removed())
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
            state: s.phase.state(),
            detail: s.phase.detail().into_owned(),
            health: u.and_then(|u| u.health.as_ref()).map(|_| s.phase.health()),
            pid: s.phase.main_pid(),
            restarts: s.restarts,
            last_exit_code: s.last_exit.map(ExitStatus::code),
            last_exit: s.last_exit.map(|e| e.to_string()),
            log_dropped: s.log.dropped(),
            error: s.error.clone(),
            after: u.map(|u| u.after.clone()).unwrap_or_default(),
            requires: u.map(|u| u.requires.clone()).unwrap_or_default(),
        }
    }

    /// A unit timer fired: what it does follows from the unit's phase.
    pub fn on_timer(&mut self, unit: usize, generation: u64, now: Instant, r: &mut dyn Reactor) {
        let Some(slot) = self.slots.get_mut(unit) else {
            return;
        };
        if slot.generation != generation {
            return; // superseded
        }
        match slot.phase {
            Phase::Backoff { .. } => {
                slot.restarts += 1;
                self.launch(unit, now, r);
            }
            Phase::Stopping { pid, .. } => self.escalate(unit, pid),
            Phase::Cleaning { task, .. } => {
                warn!(
                    "unit {}: cleanup still running after {}, killing it",
                    slot.name,
                    format_duration(crate::launch::CLEANUP_LIMIT)
                );
                self.kill_now(unit, task);
            }
            Phase::Running { .. } => self.health_check(unit, now, r),
            Phase::Inactive { .. }
            | Phase::Preparing { .. }
            | Phase::Exited { .. }
            | Phase::Failed { .. }
            | Phase::Removed => {}
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

    /// Sets the unit's single timer; what it does when it fires follows from the phase then.
    fn arm(&mut self, i: usize, at: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        slot.generation += 1;
        r.schedule(
            at,
            Timer::Unit {
                unit: i,
                generation: slot.generation,
            },
        );
    }

    /// Makes the unit's pending timer stale.
    fn disarm(&mut self, i: usize) {
        self.slots[i].generation += 1;
    }

    /// Takes a spawned process of unit `i` into the supervision (its exit and output); the
    /// caller records it in the phase (or as the probe). Returns its pid.
    fn adopt(&mut self, i: usize, sp: Spawned, is_health: bool, r: &mut dyn Reactor) -> i32 {
        self.pids.insert(sp.pid, (i, is_health));
        if let Some(fd) = sp.output {
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
        sp.pid
    }

    /// Watches the `done` pipe of unit `i`'s new preparation task.
    fn watch_prepared(&mut self, i: usize, done: OwnedFd, r: &mut dyn Reactor) {
        self.unwatch_prepared(i, r);
        match r.watch(done.as_fd(), Key::Prepared(i as u64), false) {
            Ok(()) => self.slots[i].prepared = Some(done),
            // The task's exit still completes the step.
            Err(e) => warn!("unit {}: cannot watch its setup: {e}", self.slots[i].name),
        }
    }

    /// Closes unit `i`'s `done` pipe, if it has one.
    fn unwatch_prepared(&mut self, i: usize, r: &mut dyn Reactor) {
        if let Some(fd) = self.slots[i].prepared.take() {
            r.unwatch(fd.as_fd());
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

    /// SIGKILL for everything of unit `i` whose process (main, preparation or cleanup) is
    /// `pid`.
    fn kill_now(&mut self, i: usize, pid: i32) {
        if self.slots[i].phase.runs_task() {
            // Tasks run in a process group of their own.
            crate::launch::process::kill_group(pid);
        }
        self.signal(i, pid, libc::SIGKILL, true);
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
        phase: if error.is_some() {
            Phase::Failed { note: "invalid" }
        } else {
            Phase::default()
        },
        wanted: false,
        error,
        probe: None,
        restarts: 0,
        last_exit: None,
        started_at: None,
        backoff: Backoff::new(service.restart_delay, service.restart_delay_max),
        limit: StartLimit::new(service.start_limit_burst, service.start_limit_interval),
        generation: 0,
        dependents: Vec::new(),
        prepared: None,
    };
    if slot.unit.is_some() && slot.launcher.is_none() {
        let why = "no launcher can run this unit (container support is not available)";
        fail_invalid(&mut slot, why.to_string());
    }
    slot
}

fn fail_invalid(slot: &mut Slot, why: String) {
    slot.phase = Phase::Failed { note: "invalid" };
    slot.error = Some(why);
    slot.unit = None;
}

#[cfg(test)]
mod tests;
