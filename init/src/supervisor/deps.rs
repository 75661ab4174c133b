//! Dependencies: when a unit may start, when it loses a required unit, and the pass after
//! every event that acts on them (in start order, in batches), and stops units in reverse
//! order during shutdown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::warn;

use super::phase::{Phase, StopReason};
use super::{Slot, State, Supervisor};
use crate::event::{after, Reactor, Timer};
use crate::reaper::ExitStatus;

/// Most units started in one turn of the loop, and the time one turn may spend starting them:
/// the API and the other units are served between batches. A large answer (the unit list of
/// thousands of units) leaves in one write per turn, so the slice bounds its latency too.
pub(super) const START_BATCH: usize = 256;
const START_SLICE: Duration = Duration::from_millis(5);
/// At boot, system units nothing waits for (an admin shell, a time daemon) start once the
/// containers being started are up (set up, and healthy when they have a health check), or
/// this long after the first start at the latest: with one CPU their fork and exec would slow
/// those setups and the applications' first steps, and the applications are what the boot is
/// for. Later starts are never held.
pub(super) const BOOT_HOLD: Duration = Duration::from_secs(1);

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

    /// The time slice ends a batch only once it started something: every batch makes
    /// progress, however slow the machine (a slice gone before the first start would
    /// otherwise make a turn start nothing).
    fn exhausted(&self) -> bool {
        self.left == 0 || (self.left < START_BATCH && Instant::now() >= self.until)
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn a_late_slice_still_lets_one_start_through() {
        let mut b = Budget {
            left: START_BATCH,
            until: Instant::now(),
        };
        assert!(!b.exhausted(), "nothing started yet");
        b.left -= 1;
        assert!(b.exhausted(), "one started and the slice is over");
        b.until = after(Instant::now(), Duration::from_secs(3600));
        assert!(!b.exhausted());
        b.left = 0;
        assert!(b.exhausted());
    }
}

/// How a dependency looks to a unit that waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DepState {
    Up,
    Pending,
    Down(String),
}

impl Supervisor {
    /// Recomputes what follows from the set of units: dependents and the start order.
    pub(super) fn relink(&mut self) {
        link_dependents(&mut self.slots, &self.by_name);
        self.order = start_order(&self.slots);
    }

    fn dep_state(&self, name: &str) -> DepState {
        let Some(&i) = self.by_name.get(name) else {
            return DepState::Down(format!("unit {name} does not exist"));
        };
        let s = &self.slots[i];
        let has_health = s.unit.as_ref().is_some_and(|u| u.health.is_some());
        let backoff = matches!(s.phase, Phase::Backoff { .. });
        match s.phase.state() {
            State::Failed => DepState::Down(format!("unit {name} failed")),
            State::Healthy => DepState::Up,
            State::Running if !has_health => DepState::Up,
            State::Exited if !backoff && s.last_exit.is_some_and(ExitStatus::success) => {
                DepState::Up
            }
            State::Exited | State::Inactive if !s.wanted && !backoff => {
                DepState::Down(format!("unit {name} is stopped"))
            }
            _ => DepState::Pending,
        }
    }

    /// Starts what became startable, fails what lost a required dependency, and during
    /// shutdown stops what nothing depends on any more. Runs after every event.
    pub(super) fn advance(&mut self, now: Instant, r: &mut dyn Reactor) {
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
                // Only a process not yet stopping is stopped.
                if !matches!(s.phase, Phase::Preparing { .. } | Phase::Running { .. }) {
                    continue;
                }
                let busy_dependents = s
                    .dependents
                    .iter()
                    .any(|&d| self.slots[d].phase.pid().is_some());
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
            let waiting = s.wanted && matches!(s.phase, Phase::Inactive { .. });
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
            if s.phase.is_active() {
                self.stop(i, StopReason::DependencyFailed(why), now, r);
            } else if matches!(s.phase, Phase::Inactive { .. }) {
                let slot = &mut self.slots[i];
                slot.wanted = false;
                slot.phase = Phase::Failed {
                    note: "dependency failed",
                };
                slot.error = Some(format!("required dependency: {why}"));
                warn!("unit {}: not started: {why}", slot.name);
            }
            return false;
        }
        if !matches!(s.phase, Phase::Inactive { .. }) {
            return false;
        }
        let leaf_system = unit.is_system() && s.dependents.is_empty();
        if leaf_system && self.boot_hold(now, r) {
            self.slots[i].phase = Phase::Inactive {
                note: "waiting for containers to come up (boot)".into(),
            };
            return false;
        }
        let s = &self.slots[i];
        let Some(unit) = &s.unit else { return false };
        let waiting: Vec<&str> = unit
            .ordered_after()
            .filter(|d| self.dep_state(d) == DepState::Pending)
            .collect();
        if waiting.is_empty() {
            self.launch(i, now, r);
            true
        } else {
            let note = format!("waiting for {}", waiting.join(", "));
            self.slots[i].phase = Phase::Inactive { note };
            false
        }
    }
}

impl Supervisor {
    /// Whether a leaf system unit's start waits now (see [`BOOT_HOLD`]): within the boot's
    /// hold, while a container unit prepares or awaits its first healthy check. Arms one
    /// start pass for the hold's end.
    fn boot_hold(&mut self, now: Instant, r: &mut dyn Reactor) -> bool {
        let Some(until) = self.boot_hold_until.filter(|&u| now < u) else {
            return false;
        };
        let preparing = self.containers_coming_up(true);
        if preparing && !self.hold_timer {
            self.hold_timer = true;
            r.schedule(until, Timer::StartUnits);
        }
        preparing
    }

    /// Whether a container unit is being set up (its preparation task runs) or, with
    /// `until_healthy`, is running with a health check that has not passed yet.
    fn containers_coming_up(&self, until_healthy: bool) -> bool {
        // Container units lead the start order: the scan stops at the first system unit, so a
        // boot with thousands of system units and no container pays nothing here.
        let slots = &self.slots;
        self.order
            .iter()
            .map(|&i| &slots[i])
            .map_while(|s| Some((s, s.unit.as_ref().filter(|u| !u.is_system())?)))
            .any(|(s, unit)| match s.phase {
                Phase::Preparing { .. } => true,
                Phase::Running { .. } => {
                    until_healthy && unit.health.is_some() && s.phase.state() != State::Healthy
                }
                _ => false,
            })
    }

    /// Whether the boot's containers are still being set up: within the boot's hold (see
    /// [`BOOT_HOLD`]), a container unit's preparation task runs. While it is so, PID 1 gives
    /// system units the lowest CPU weight (`launch::cgroup::SystemShare`); their start is not
    /// held, their CPU time waits for the setups. PID 1 restores their weight the first time
    /// this is false, at the latest at the hold's end.
    pub fn boot_setups_running(&self, now: Instant) -> bool {
        self.boot_hold_until.is_some_and(|u| now < u) && self.containers_coming_up(false)
    }

    /// When the boot's hold ends; `None` before the first start.
    pub fn boot_hold_until(&self) -> Option<Instant> {
        self.boot_hold_until
    }
}

/// Slot indices: container units first (a container's start is a setup task that runs beside
/// PID 1, so it begins before the system units' fork and exec instead of after), then the
/// system units other units wait for, then the rest; slot order within each. Computed when
/// units change, not per pass: a pass over thousands of units stays linear.
pub(super) fn start_order(slots: &[Slot]) -> Vec<usize> {
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
pub(super) fn link_dependents(slots: &mut [Slot], by_name: &HashMap<String, usize>) {
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
