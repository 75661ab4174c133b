//! Health checks: one probe at a time per running unit, on its interval; `retries` failed
//! checks in a row make the unit unhealthy (and restart it, unless `restart = "never"`).

use std::time::{Duration, Instant};

use log::{info, warn};

use super::phase::{Phase, StopReason};
use super::{Health, Supervisor};
use crate::event::{after, Reactor};
use crate::reaper::ExitStatus;
use crate::unit::{self, Restart};

/// How long after a start (or a resume) the first check waits, unless the interval is shorter.
/// A check is a process in the unit's namespaces; in a machine's first second it competes for
/// the CPU with the boot's other work (on one vCPU: the DHCP exchange that the unit's clients
/// wait for), and a check that comes before the service listens counts toward its retries.
pub(super) const FIRST_CHECK_DELAY: Duration = Duration::from_millis(400);

/// When unit `health`'s first check runs, after its process started.
pub(super) fn first_check_delay(health: &unit::Health) -> Duration {
    health.interval.min(FIRST_CHECK_DELAY)
}

impl Supervisor {
    /// The health timer of running unit `i` fired: start a check (or fail one that outlived
    /// its interval) and set the timer for the next.
    pub(super) fn health_check(&mut self, i: usize, now: Instant, r: &mut dyn Reactor) {
        let slot = &self.slots[i];
        let Some(h) = slot.unit.as_ref().and_then(|u| u.health.as_ref()) else {
            return;
        };
        let interval = h.interval;
        if !slot.phase.is_checked() {
            return;
        }
        if slot.probe.is_some() {
            // The previous check outlived its interval: it counts as failed when reaped.
            self.kill_health_check(i);
        } else if let (Some(unit), Some(l)) = (&slot.unit, slot.launcher) {
            match self.launchers[l].health_check(unit) {
                Ok(sp) => {
                    let probe = self.adopt(i, sp, true, r);
                    self.slots[i].probe = Some(probe);
                }
                Err(e) => {
                    warn!("unit {}: health check cannot start: {e}", slot.name);
                    self.record_health(i, false, now, r);
                }
            }
        }
        // A failed check may have stopped the unit: its stop timer stays.
        if self.slots[i].phase.is_checked() {
            self.arm(i, after(now, interval), r);
        }
    }

    /// A check process of slot `i` ended. Only the check of the unit in the slot counts: a
    /// check of a removed unit, killed but reaped only once a new unit took its slot, is
    /// not the new unit's.
    pub(super) fn on_health_exit(
        &mut self,
        i: usize,
        pid: i32,
        status: ExitStatus,
        now: Instant,
        r: &mut dyn Reactor,
    ) {
        if self.slots[i].probe != Some(pid) {
            return;
        }
        self.slots[i].probe = None;
        if self.slots[i].phase.is_checked() {
            self.record_health(i, status.success(), now, r);
        }
    }

    fn record_health(&mut self, i: usize, ok: bool, now: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        let Some(unit) = &slot.unit else { return };
        let Phase::Running { checks, .. } = &mut slot.phase else {
            return;
        };
        let retries = unit.health.as_ref().map_or(1, |h| h.retries);
        if ok {
            if checks.health != Health::Healthy {
                info!("unit {}: healthy", slot.name);
            }
            checks.health = Health::Healthy;
            checks.failures = 0;
            slot.backoff.reset();
            return;
        }
        checks.failures += 1;
        if checks.failures < retries {
            return;
        }
        checks.health = Health::Unhealthy;
        warn!(
            "unit {}: unhealthy after {} failed checks",
            slot.name, checks.failures
        );
        if unit.service.restart != Restart::Never {
            self.stop(i, StopReason::Unhealthy, now, r);
        }
    }

    /// Kills the unit's health check, if one runs (it is reaped as usual).
    pub(super) fn kill_health_check(&mut self, i: usize) {
        if let Some(pid) = self.slots[i].probe {
            crate::launch::process::kill_group(pid);
        }
    }
}
