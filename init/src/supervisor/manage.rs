//! Changing units while supervising (the control API's unit operations): install a new unit
//! or replace one, start, stop, restart, remove.
//!
//! Slots never move (timers, pipes and pids carry slot indices): a removed unit leaves a free
//! slot behind, reused by the next new unit with a fresh generation so stale timers stay
//! ignored. A replaced or removed unit whose process runs is stopped first; the change takes
//! effect when that process has been reaped.

use std::time::Instant;

use super::new_slot;
use super::phase::{Phase, StopReason};
use super::Supervisor;
use crate::event::Reactor;
use crate::graph::{describe_cycle, Graph};
use crate::unit::Loaded;
use crate::unit_logs::UnitLog;

/// What installing a unit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    Added,
    Replaced,
}

/// Why a unit cannot be installed. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    #[error("the system is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Invalid(String),
    #[error("no launcher can run this unit (container support is not available)")]
    Unsupported,
    #[error("dependency cycle: {0}")]
    Cycle(String),
}

/// Why a unit operation was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("unknown unit `{0}`")]
    Unknown(String),
    #[error("unit `{name}` cannot run: {why}")]
    Unrunnable { name: String, why: String },
    #[error("the system is shutting down")]
    ShuttingDown,
    #[error("unit `{0}` is being removed")]
    Removing(String),
}

/// A unit whose removal completed (its process, if any, has exited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub name: String,
    /// The unit file it was loaded from.
    pub path: String,
}

impl Supervisor {
    /// Adds `loaded` as a new unit, or replaces the unit of the same name. A running instance
    /// of a replaced unit is stopped (stop signal, timeout) and the new definition runs once it
    /// has exited. The unit runs afterwards if `start` is set or the old one was running.
    pub fn install(
        &mut self,
        loaded: Loaded,
        start: bool,
        now: Instant,
        r: &mut dyn Reactor,
    ) -> Result<Installed, InstallError> {
        self.check_install(&loaded)?;
        let installed = match self.by_name.get(&loaded.name).copied() {
            Some(i) => {
                self.replace(i, loaded, start, now, r);
                Installed::Replaced
            }
            None => {
                self.add(loaded, start);
                Installed::Added
            }
        };
        self.advance(now, r);
        Ok(installed)
    }

    /// What [`Supervisor::install`] would refuse, without changing anything.
    pub fn check_install(&self, loaded: &Loaded) -> Result<(), InstallError> {
        if self.shutting_down {
            return Err(InstallError::ShuttingDown);
        }
        let unit = loaded
            .unit
            .as_ref()
            .map_err(|d| InstallError::Invalid(d.to_string()))?;
        if !self.launchers.iter().any(|l| l.handles(unit)) {
            return Err(InstallError::Unsupported);
        }
        self.check_cycles(loaded)
    }

    /// Refuses a unit that would close a dependency cycle with the units in place.
    fn check_cycles(&self, loaded: &Loaded) -> Result<(), InstallError> {
        let Ok(new) = &loaded.unit else {
            return Ok(());
        };
        let nodes = self
            .slots
            .iter()
            .filter(|s| !s.is_removed() && s.name != loaded.name)
            .map(|s| s.graph_node())
            .chain(std::iter::once((
                loaded.name.as_str(),
                new.ordered_after().collect(),
            )));
        let graph = Graph::new(nodes);
        match graph
            .cycles()
            .into_iter()
            .find(|c| c.contains(&loaded.name))
        {
            Some(cycle) => Err(InstallError::Cycle(describe_cycle(&cycle))),
            None => Ok(()),
        }
    }

    fn add(&mut self, loaded: Loaded, start: bool) {
        let name = loaded.name.clone();
        let mut slot = new_slot(loaded, &self.launchers, &self.log_policy);
        slot.wanted = start && slot.error.is_none();
        let i = match self.slots.iter().position(|s| s.is_removed()) {
            Some(free) => {
                slot.generation = self.slots[free].generation + 1;
                self.slots[free] = slot;
                free
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        log::info!("unit {name}: installed");
        self.by_name.insert(name, i);
        self.relink();
    }

    fn replace(
        &mut self,
        i: usize,
        loaded: Loaded,
        start: bool,
        now: Instant,
        r: &mut dyn Reactor,
    ) {
        let slot = &mut self.slots[i];
        log::info!("unit {}: replaced", slot.name);
        let wanted = start || slot.wanted;
        if slot.phase.pid().is_some() {
            slot.wanted = wanted;
            let replace = StopReason::Replace(Box::new(loaded));
            if slot.phase.is_stopping() {
                // The new definition waits for the stop under way.
                slot.phase.restop(replace);
            } else {
                self.stop(i, replace, now, r);
            }
        } else {
            self.disarm(i);
            self.swap_definition(i, loaded);
            let slot = &mut self.slots[i];
            slot.wanted = wanted && slot.error.is_none();
        }
    }

    /// Puts a new definition into slot `i`, whose process has exited.
    fn swap_definition(&mut self, i: usize, loaded: Loaded) {
        let old = &self.slots[i];
        let (generation, wanted, last_exit) = (old.generation + 1, old.wanted, old.last_exit);
        let mut slot = new_slot(loaded, &self.launchers, &self.log_policy);
        slot.generation = generation;
        slot.wanted = wanted && slot.error.is_none();
        slot.last_exit = last_exit;
        self.slots[i] = slot;
        self.relink();
    }

    /// The process stopped for a restart or replacement has exited: take the new definition,
    /// if any, and let `advance` start the unit again (fresh backoff and start limit).
    pub(super) fn restarted(&mut self, i: usize, replacement: Option<Loaded>) {
        if let Some(loaded) = replacement {
            self.swap_definition(i, loaded);
        }
        let shutting_down = self.shutting_down;
        let slot = &mut self.slots[i];
        if slot.wanted && !shutting_down && slot.unit.is_some() {
            slot.phase = Phase::default();
            slot.error = None;
            slot.limit.clear();
            slot.backoff.reset();
        } else if slot.unit.is_some() {
            slot.phase = Phase::Exited { note: "stopped" };
        }
    }

    /// Starts a stopped, exited or failed unit.
    pub fn request_start(
        &mut self,
        name: &str,
        now: Instant,
        r: &mut dyn Reactor,
    ) -> Result<(), ActionError> {
        let i = self.runnable(name)?;
        let slot = &mut self.slots[i];
        if slot.phase.is_stopping() {
            // A stop under way (requested, or after a crash) ends in a new run.
            slot.wanted = true;
            slot.phase.restart_after_stop();
            self.advance(now, r);
            return Ok(());
        }
        self.end_backoff(i);
        self.start_unit(name, now, r);
        Ok(())
    }

    /// A unit waiting to restart after an exit starts now instead (by request).
    fn end_backoff(&mut self, i: usize) {
        if matches!(self.slots[i].phase, Phase::Backoff { .. }) {
            self.disarm(i);
            self.slots[i].phase = Phase::default();
        }
    }

    /// Stops a unit; it stays stopped until started again.
    pub fn request_stop(
        &mut self,
        name: &str,
        now: Instant,
        r: &mut dyn Reactor,
    ) -> Result<(), ActionError> {
        if !self.by_name.contains_key(name) {
            return Err(ActionError::Unknown(name.to_string()));
        }
        self.stop_unit(name, now, r);
        Ok(())
    }

    /// Stops the unit's process (if running) and starts it again.
    pub fn request_restart(
        &mut self,
        name: &str,
        now: Instant,
        r: &mut dyn Reactor,
    ) -> Result<(), ActionError> {
        let i = self.runnable(name)?;
        let slot = &mut self.slots[i];
        if slot.phase.pid().is_none() {
            self.end_backoff(i);
            self.start_unit(name, now, r);
            return Ok(());
        }
        slot.wanted = true;
        if slot.phase.is_stopping() {
            slot.phase.restart_after_stop();
        } else {
            self.stop(i, StopReason::Restart, now, r);
        }
        self.advance(now, r);
        Ok(())
    }

    /// Removes a unit: stops it, and once its process has exited forgets it (see
    /// [`Supervisor::take_removed`]).
    pub fn remove_unit(
        &mut self,
        name: &str,
        now: Instant,
        r: &mut dyn Reactor,
    ) -> Result<(), ActionError> {
        let Some(&i) = self.by_name.get(name) else {
            return Err(ActionError::Unknown(name.to_string()));
        };
        let slot = &mut self.slots[i];
        if slot.phase.pid().is_none() {
            self.disarm(i);
            self.finish_removal(i);
        } else if slot.phase.is_stopping() {
            // Removed once the stop under way ends (a waiting replacement is dropped).
            slot.wanted = false;
            slot.phase.restop(StopReason::Remove);
        } else {
            self.stop(i, StopReason::Remove, now, r);
        }
        self.advance(now, r);
        Ok(())
    }

    pub(super) fn finish_removal(&mut self, i: usize) {
        for l in &mut self.launchers {
            l.removed(&self.slots[i].name);
        }
        let slot = &mut self.slots[i];
        log::info!("unit {}: removed", slot.name);
        self.removed_units.push(Removed {
            name: slot.name.clone(),
            path: slot.path.clone(),
        });
        self.by_name.remove(&slot.name);
        // A free slot; its pending timer finds nothing to do.
        slot.phase = Phase::Removed;
        slot.unit = None;
        slot.launcher = None;
        slot.error = None;
        slot.wanted = false;
        slot.log = UnitLog::new(&self.log_policy, &slot.name);
        self.relink();
    }

    /// Units removed since the last call (their files can go now).
    pub fn take_removed(&mut self) -> Vec<Removed> {
        std::mem::take(&mut self.removed_units)
    }

    /// True while `name` exists or its removal is still under way.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The unit file `name` was loaded from.
    pub fn unit_path(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(|&i| self.slots[i].path.as_str())
    }

    fn runnable(&self, name: &str) -> Result<usize, ActionError> {
        let Some(&i) = self.by_name.get(name) else {
            return Err(ActionError::Unknown(name.to_string()));
        };
        if self.shutting_down {
            return Err(ActionError::ShuttingDown);
        }
        let slot = &self.slots[i];
        // Its file is gone already: running it again would outlive the removal's answer.
        if matches!(slot.phase.stop_reason(), Some(StopReason::Remove)) {
            return Err(ActionError::Removing(name.to_string()));
        }
        if slot.unit.is_none() || slot.launcher.is_none() {
            return Err(ActionError::Unrunnable {
                name: name.to_string(),
                why: slot.error.clone().unwrap_or_else(|| "invalid".into()),
            });
        }
        Ok(i)
    }
}
