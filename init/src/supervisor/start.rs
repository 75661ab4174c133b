//! Starting units: wanting them, and one start: preparation steps, then the main process.

use std::time::Instant;

use log::{info, warn};

use super::phase::Phase;
use super::{health, Supervisor};
use crate::event::{after, Reactor};
use crate::launch::Step;
use crate::reaper::ExitStatus;

impl Supervisor {
    /// Wants every valid unit and starts those whose dependencies are up.
    pub fn start_all(&mut self, now: Instant, r: &mut dyn Reactor) {
        if self.boot_hold_until.is_none() {
            self.boot_hold_until = Some(crate::event::after(now, super::deps::BOOT_HOLD));
        }
        for slot in &mut self.slots {
            if slot.error.is_none() {
                slot.wanted = true;
            }
        }
        self.advance(now, r);
    }

    /// More units were ready than one batch: start the next batch.
    pub fn on_start_timer(&mut self, now: Instant, r: &mut dyn Reactor) {
        self.more_scheduled = false;
        self.advance(now, r);
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
        if !slot.phase.is_active() {
            slot.wanted = true;
            slot.limit.clear();
            slot.backoff.reset();
            slot.error = None;
            slot.phase = Phase::default();
        }
        self.advance(now, r);
        true
    }

    /// Begins one run of unit `i` (counted by the start limit).
    pub(super) fn launch(&mut self, i: usize, now: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        slot.limit.record(now);
        slot.error = None;
        self.start_step(i, 0, now, r);
    }

    /// Unit `i`'s preparation task wrote to its `done` pipe: its step succeeded, and the start
    /// goes on now instead of at the task's exit. The task is no longer the unit's (its exit
    /// is reaped as an orphan's). End of file (the task ended without success) or a unit no
    /// longer wanted only closes the pipe: the task's exit decides, as without the pipe.
    pub fn on_prepared(&mut self, i: u64, now: Instant, r: &mut dyn Reactor) {
        let Some(i) = usize::try_from(i).ok().filter(|&i| i < self.slots.len()) else {
            return;
        };
        let Some(pipe) = &self.slots[i].prepared else {
            return;
        };
        let mut byte = [0u8; 1];
        match nix::unistd::read(pipe, &mut byte) {
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return,
            Ok(1) => {}
            Ok(_) | Err(_) => return self.unwatch_prepared(i, r),
        }
        self.unwatch_prepared(i, r);
        let slot = &self.slots[i];
        if let (Phase::Preparing { task, done }, true) = (&slot.phase, slot.wanted) {
            let (task, done) = (*task, *done);
            self.pids.remove(&task);
            self.start_step(i, done + 1, now, r);
            self.advance(now, r);
        }
    }

    /// The next step of a start after `done` preparation steps: another preparation step, or
    /// the main process.
    pub(super) fn start_step(&mut self, i: usize, done: u32, now: Instant, r: &mut dyn Reactor) {
        let slot = &mut self.slots[i];
        let (Some(unit), Some(l)) = (&slot.unit, slot.launcher) else {
            return;
        };
        match self.launchers[l].start(unit, done) {
            Ok(Step::Prepare { task, done: pipe }) => {
                let task = self.adopt(i, task, false, r);
                self.slots[i].phase = Phase::Preparing { task, done };
                if let Some(pipe) = pipe {
                    self.watch_prepared(i, pipe, r);
                }
            }
            Ok(Step::Main(sp)) => {
                slot.started_at = Some(now);
                info!("unit {}: started, pid {}", slot.name, sp.pid);
                let first_check = unit.health.as_ref().map(health::first_check_delay);
                let pid = self.adopt(i, sp, false, r);
                self.slots[i].phase = Phase::running(pid);
                match first_check {
                    Some(d) => self.arm(i, after(now, d), r),
                    None => self.disarm(i),
                }
            }
            Err(e) => {
                warn!("unit {}: cannot start: {e}", slot.name);
                let code = e.exit_code();
                slot.error = Some(e.to_string());
                self.clean_then_after_exit(i, None, ExitStatus::Exited(code), None, now, r);
            }
        }
    }
}
