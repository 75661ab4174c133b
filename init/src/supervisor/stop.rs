//! Stopping units: one by request or for a reason, all of them at shutdown, and the
//! escalation to SIGKILL.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::phase::{Phase, StopReason};
use super::Supervisor;
use crate::event::{after, Reactor};
use crate::unit::value::format_duration;

impl Supervisor {
    /// Begins the ordered stop of everything (reverse dependency order).
    pub fn begin_shutdown(&mut self, now: Instant, r: &mut dyn Reactor) {
        if self.shutting_down {
            return;
        }
        info!("stopping all units");
        self.shutting_down = true;
        for slot in &mut self.slots {
            slot.wanted = false;
            match &mut slot.phase {
                Phase::Backoff { .. } => {
                    slot.phase = Phase::Exited { note: "stopped" };
                    slot.generation += 1;
                }
                Phase::Inactive { note } => *note = "not started: shutting down".into(),
                _ => {}
            }
        }
        self.advance(now, r);
    }

    /// True once no unit has a process left (shutdown can proceed).
    pub fn all_stopped(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.phase.pid().is_none() && s.probe.is_none())
    }

    /// Kills whatever is left of every unit (end of the shutdown deadline).
    pub fn kill_all(&mut self) {
        for i in 0..self.slots.len() {
            if let Some(pid) = self.slots[i].phase.pid() {
                self.kill_now(i, pid);
            }
        }
    }

    /// How long the ordered stop of everything may take: a unit gets its stop signal only
    /// once every unit ordered after it has stopped, so the stops of a chain of units add
    /// up. Each unit counts its `stop_timeout` (then SIGKILL) and, for a container, its
    /// cleanup's limit; the longest chain bounds the whole shutdown.
    pub fn longest_stop_chain(&self) -> Duration {
        // The time from the shutdown's start until unit `i` has stopped, at the latest,
        // memoised. Units in a dependency cycle (refused at load, but never trusted here)
        // count their own time once.
        fn until_stopped(
            slots: &[super::Slot],
            i: usize,
            memo: &mut [Option<Duration>],
            visiting: &mut [bool],
        ) -> Duration {
            if let Some(d) = memo[i] {
                return d;
            }
            if visiting[i] {
                return Duration::ZERO;
            }
            visiting[i] = true;
            let before = slots[i]
                .dependents
                .iter()
                .map(|&d| until_stopped(slots, d, memo, visiting))
                .max()
                .unwrap_or_default();
            let own = slots[i].unit.as_ref().map_or(Duration::ZERO, |u| {
                let cleanup = if u.is_system() {
                    Duration::ZERO
                } else {
                    crate::launch::CLEANUP_LIMIT
                };
                u.service.stop_timeout + cleanup
            });
            visiting[i] = false;
            let total = before + own;
            memo[i] = Some(total);
            total
        }
        let n = self.slots.len();
        let (mut memo, mut visiting) = (vec![None; n], vec![false; n]);
        (0..n)
            .map(|i| until_stopped(&self.slots, i, &mut memo, &mut visiting))
            .max()
            .unwrap_or_default()
    }

    /// Gives up on processes that survived SIGKILL (stuck in the kernel) so shutdown ends.
    pub fn forget_processes(&mut self) {
        for slot in &mut self.slots {
            if slot.phase.pid().is_some() {
                slot.phase = Phase::Failed { note: "" };
                slot.error = Some("did not exit after SIGKILL".into());
            }
            slot.probe = None;
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

    /// Stops unit `i` for `reason`: its process gets the stop signal (SIGKILL after
    /// `stop_timeout`); without a process it stays stopped (or fails, when a required unit is
    /// gone). A unit stopping already keeps its first reason.
    pub(super) fn stop(&mut self, i: usize, reason: StopReason, now: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        if !reason.keeps_wanted() {
            slot.wanted = false;
        }
        let backoff = matches!(slot.phase, Phase::Backoff { .. });
        match slot.phase.begin_stop(reason) {
            Ok(pid) => {
                let (sig, timeout) = slot
                    .unit
                    .as_ref()
                    .map(|u| (u.service.stop_signal, u.service.stop_timeout))
                    .unwrap_or((libc::SIGTERM, Duration::from_secs(10)));
                if let Some(why) = slot.phase.stop_reason() {
                    info!("unit {}: stopping ({why})", slot.name);
                }
                self.kill_health_check(i);
                self.signal(i, pid, sig, false);
                self.arm(i, after(now, timeout), r);
            }
            // Stopping already: the first reason stands, but a stop request turns a stop
            // meant to run the unit again (a restart, an unhealthy run) into a plain stop. A
            // waiting new definition stays, so the file's definition is the one kept.
            Err(StopReason::Requested)
                if matches!(
                    slot.phase.stop_reason(),
                    Some(StopReason::Restart | StopReason::Unhealthy)
                ) =>
            {
                slot.phase.restop(StopReason::Requested);
            }
            Err(_) if slot.phase.is_stopping() => {}
            Err(reason) => {
                if backoff {
                    self.disarm(i);
                }
                let slot = &mut self.slots[i];
                let dependency = matches!(reason, StopReason::DependencyFailed(_));
                if dependency {
                    slot.error = Some(reason.to_string());
                }
                slot.phase.stop_idle(dependency);
            }
        }
    }

    /// The stop timeout passed and the process of stopping unit `i` is still there.
    pub(super) fn escalate(&mut self, i: usize, pid: i32) {
        let slot = &self.slots[i];
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
        self.signal(i, pid, libc::SIGKILL, true);
    }
}
