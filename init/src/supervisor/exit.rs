//! Reaping: what the exit (or stop and continue) of a unit's process means, the cleanup task
//! that follows an exit, and the decision after it: stay stopped, fail, or restart.

use std::time::Instant;

use log::{info, warn};

use super::phase::{Phase, Reaped, StopReason};
use super::{health, Supervisor};
use crate::event::{after, Reactor};
use crate::reaper::ExitStatus;
use crate::unit::value::format_duration;
use crate::unit::Restart;

impl Supervisor {
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
            self.on_health_exit(i, pid, status, now, r);
        } else {
            self.on_process_exit(i, pid, status, now, r);
        }
        self.advance(now, r);
        true
    }

    /// The exit of unit `i`'s main process, preparation step or cleanup task. Not inlined
    /// into the event loop: its unwind tables would grow by more than its code.
    #[inline(never)]
    fn on_process_exit(
        &mut self,
        i: usize,
        pid: i32,
        status: ExitStatus,
        now: Instant,
        r: &mut dyn Reactor,
    ) {
        let slot = &mut self.slots[i];
        let phase = std::mem::take(&mut slot.phase);
        let reaped = phase.reaped(pid, status);
        if reaped.is_ok() {
            // Whatever ended, a preparation task's `done` pipe has nothing more to say.
            self.unwatch_prepared(i, r);
        }
        let slot = &mut self.slots[i];
        match reaped {
            Err(phase) => slot.phase = phase,
            Ok(Reaped::Prepared { done }) if slot.wanted => self.start_step(i, done, now, r),
            Ok(Reaped::Prepared { .. }) => self.ended(i, None, status, None, now, r),
            Ok(Reaped::Ended {
                main,
                preparation,
                reason,
            }) => {
                if preparation && !status.success() {
                    self.preparation_failed(i, status);
                }
                self.ended(i, main, status, reason, now, r);
            }
            Ok(Reaped::Cleaned { exit, reason }) => self.after_exit(i, exit, reason, now, r),
        }
    }

    /// Records why a preparation step failed as the unit's error.
    fn preparation_failed(&mut self, i: usize, status: ExitStatus) {
        let slot = &self.slots[i];
        let detail = match (&slot.unit, slot.launcher) {
            (Some(unit), Some(l)) => self.launchers[l].preparation_error(unit),
            _ => None,
        };
        self.slots[i].error = Some(detail.unwrap_or_else(|| format!("preparation step {status}")));
    }

    /// The unit's main process (`main`) or a preparation step ended with `status`.
    fn ended(
        &mut self,
        i: usize,
        main: Option<i32>,
        status: ExitStatus,
        reason: Option<StopReason>,
        now: Instant,
        r: &mut dyn Reactor,
    ) {
        self.kill_health_check(i);
        info!("unit {}: {status}", self.slots[i].name);
        self.clean_then_after_exit(i, main, status, reason, now, r);
    }

    /// Runs the launcher's cleanup after the main process `main` exited (or a start failed);
    /// what follows the exit waits for a cleanup task, if the launcher started one.
    pub(super) fn clean_then_after_exit(
        &mut self,
        i: usize,
        main: Option<i32>,
        status: ExitStatus,
        reason: Option<StopReason>,
        now: Instant,
        r: &mut dyn Reactor,
    ) {
        let slot = &self.slots[i];
        let task = match (&slot.unit, slot.launcher) {
            (Some(unit), Some(l)) => self.launchers[l].cleanup(unit, main),
            _ => None,
        };
        let Some(task) = task else {
            return self.after_exit(i, status, reason, now, r);
        };
        let task = self.adopt(i, task, false, r);
        self.slots[i].phase = Phase::Cleaning {
            task,
            exit: status,
            reason,
        };
        self.arm(i, after(now, crate::launch::CLEANUP_LIMIT), r);
    }

    /// Decides what follows an exit (or a failed start): stay stopped, fail, or restart.
    fn after_exit(
        &mut self,
        i: usize,
        status: ExitStatus,
        reason: Option<StopReason>,
        now: Instant,
        r: &mut dyn Reactor,
    ) {
        self.disarm(i);
        let shutting_down = self.shutting_down;
        let slot = &mut self.slots[i];
        slot.last_exit = Some(status);
        let Some(unit) = &slot.unit else {
            slot.phase = Phase::Exited { note: "" };
            return;
        };
        let mut failed = !status.success();
        match reason {
            Some(StopReason::Requested) => {
                slot.phase = Phase::Exited { note: "stopped" };
                return;
            }
            Some(StopReason::DependencyFailed(why)) => {
                slot.phase = Phase::Failed {
                    note: "dependency failed",
                };
                slot.error = Some(format!("required dependency: {why}"));
                return;
            }
            Some(StopReason::Unhealthy) => failed = true,
            Some(StopReason::Restart) => return self.restarted(i, None),
            Some(StopReason::Replace(loaded)) => return self.restarted(i, Some(*loaded)),
            Some(StopReason::Remove) => return self.finish_removal(i),
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
            slot.phase = if failed {
                Phase::Failed { note: "" }
            } else {
                Phase::Exited { note: "" }
            };
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
            slot.phase = Phase::Failed {
                note: "start limit",
            };
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
        slot.phase = Phase::Backoff { delay };
        self.arm(i, after(now, delay), r);
    }

    /// A child was stopped by `signal`: a unit's main process shows as `paused` (its health
    /// checks wait). Returns false when it is no unit's main process.
    pub fn on_paused(&mut self, pid: i32, signal: i32) -> bool {
        let Some(&(i, false)) = self.pids.get(&pid) else {
            return false;
        };
        let slot = &mut self.slots[i];
        if slot.phase.main_pid() != Some(pid) {
            return false;
        }
        if let Phase::Running {
            paused: p @ None, ..
        } = &mut slot.phase
        {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {signal}"));
            info!("unit {}: paused (stopped by {name})", slot.name);
            *p = Some(name);
        }
        true
    }

    /// A stopped child was continued: a paused unit runs again and its health checks resume.
    pub fn on_continued(&mut self, pid: i32, now: Instant, r: &mut dyn Reactor) -> bool {
        let Some(&(i, false)) = self.pids.get(&pid) else {
            return false;
        };
        let slot = &mut self.slots[i];
        let Phase::Running { paused, .. } = &mut slot.phase else {
            return true;
        };
        if paused.take().is_none() {
            return true;
        }
        info!("unit {}: continued", slot.name);
        let first_check = slot
            .unit
            .as_ref()
            .and_then(|u| u.health.as_ref())
            .map(health::first_check_delay);
        if let Some(d) = first_check {
            self.arm(i, after(now, d), r);
        }
        true
    }
}
