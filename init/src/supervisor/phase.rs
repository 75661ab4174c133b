//! A unit's lifecycle phase as one value: each phase holds what it owns (the process it waits
//! for, why it stops, the exit it cleans up after), so a unit cannot be, say, preparing and
//! cleaning up at once, or backing off with a process still running. The display [`State`]
//! and detail are derived from it.
//!
//! ```text
//! Inactive ─▶ Preparing ─▶ Running ─▶ Stopping
//!                 └───────────┴──────────┴─(exit)─▶ [Cleaning] ─▶ Exited | Failed | Backoff | Inactive
//! Backoff ─(timer)─▶ Preparing | Running            (Inactive: restarted, or a new definition)
//! ```
//!
//! Transitions that only move data are methods here that take the phase (by value, or by
//! `&mut` and replace it); the supervisor does the process work around them.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use super::state::{Health, State};
use crate::reaper::ExitStatus;
use crate::unit::value::format_duration;
use crate::unit::Loaded;

/// Why a unit is being stopped.
#[derive(Debug, Clone)]
pub(super) enum StopReason {
    Requested,
    Unhealthy,
    DependencyFailed(String),
    /// Stopped to start again at once (a restart request).
    Restart,
    /// Stopped to start again with a new definition (a replaced unit file).
    Replace(Box<Loaded>),
    /// Stopped to be removed.
    Remove,
}

impl StopReason {
    /// Whether the unit stays wanted: it is stopped to run again.
    pub(super) fn keeps_wanted(&self) -> bool {
        matches!(
            self,
            StopReason::Unhealthy | StopReason::Restart | StopReason::Replace(_)
        )
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Requested => f.write_str("requested"),
            StopReason::Unhealthy => f.write_str("unhealthy"),
            StopReason::DependencyFailed(why) => write!(f, "required dependency: {why}"),
            StopReason::Restart | StopReason::Replace(_) => f.write_str("restart"),
            StopReason::Remove => f.write_str("removal"),
        }
    }
}

/// Which of the unit's processes a stopping unit waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Process {
    Main,
    /// A preparation step (a task in a process group of its own).
    Preparation,
}

/// The health checks of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Checks {
    pub health: Health,
    /// Consecutive failed checks.
    pub failures: u32,
}

impl Default for Checks {
    fn default() -> Checks {
        Checks {
            health: Health::Unknown,
            failures: 0,
        }
    }
}

#[derive(Debug)]
pub(super) enum Phase {
    /// Not running: never started, or made startable again. Starts once wanted and its
    /// dependencies are up. `note`: `waiting for …`, `stopped`, ….
    Inactive { note: String },
    /// Preparation step `done + 1` (an image pull, …) runs as `task`.
    Preparing { task: i32, done: u32 },
    /// The main process runs.
    Running {
        pid: i32,
        checks: Checks,
        /// Stopped by this signal (SIGSTOP, …): health checks wait until it is continued.
        paused: Option<String>,
    },
    /// The stop signal was sent to `pid`; the timer escalates to SIGKILL.
    Stopping {
        pid: i32,
        process: Process,
        reason: StopReason,
        /// What the checks said when the stop began.
        health: Health,
    },
    /// `exit` happened and the launcher's cleanup `task` runs; what follows the exit waits
    /// for it. The timer kills the task at its limit.
    Cleaning {
        task: i32,
        exit: ExitStatus,
        reason: Option<StopReason>,
    },
    /// Exited; the timer restarts it after `delay`.
    Backoff { delay: Duration },
    /// Exited and stays so. `note`: `stopped` or empty.
    Exited { note: &'static str },
    /// Failed (the reason is the unit's error). `note`: `invalid`, `start limit`, ….
    Failed { note: &'static str },
    /// A free slot: the unit was removed.
    Removed,
}

impl Default for Phase {
    fn default() -> Phase {
        Phase::Inactive {
            note: String::new(),
        }
    }
}

/// What the exit of one of the unit's processes means (see [`Phase::reaped`]).
#[derive(Debug)]
pub(super) enum Reaped {
    /// A preparation step succeeded: `done` steps are now complete.
    Prepared { done: u32 },
    /// The main process or a preparation step ended (`main` is the main process): clean
    /// up, then decide what follows.
    Ended {
        main: Option<i32>,
        preparation: bool,
        reason: Option<StopReason>,
    },
    /// The cleanup task ended: what follows the exit it cleaned up after can go on.
    Cleaned {
        exit: ExitStatus,
        reason: Option<StopReason>,
    },
}

impl Phase {
    /// The first phase of a run: the main process started.
    pub(super) fn running(pid: i32) -> Phase {
        Phase::Running {
            pid,
            checks: Checks::default(),
            paused: None,
        }
    }

    /// The state the API shows.
    pub(super) fn state(&self) -> State {
        match self {
            Phase::Inactive { .. } | Phase::Removed => State::Inactive,
            Phase::Preparing { .. } => State::Starting,
            Phase::Running {
                paused: Some(_), ..
            } => State::Paused,
            Phase::Running { checks, .. } if checks.health == Health::Healthy => State::Healthy,
            Phase::Running { .. } => State::Running,
            Phase::Stopping { .. } | Phase::Cleaning { .. } => State::Stopping,
            Phase::Backoff { .. } | Phase::Exited { .. } => State::Exited,
            Phase::Failed { .. } => State::Failed,
        }
    }

    /// The sub-state in words.
    pub(super) fn detail(&self) -> Cow<'_, str> {
        match self {
            Phase::Inactive { note } => Cow::Borrowed(note),
            Phase::Preparing { .. } => Cow::Borrowed("preparing"),
            Phase::Running {
                paused: Some(signal),
                ..
            } => Cow::Owned(format!("stopped by {signal}")),
            Phase::Running { checks, .. } if checks.health == Health::Unhealthy => {
                Cow::Borrowed("unhealthy")
            }
            Phase::Cleaning { .. } => Cow::Borrowed("cleaning up"),
            Phase::Backoff { delay } => {
                Cow::Owned(format!("restarting in {}", format_duration(*delay)))
            }
            Phase::Exited { note } | Phase::Failed { note } => Cow::Borrowed(note),
            Phase::Running { .. } | Phase::Stopping { .. } | Phase::Removed => Cow::Borrowed(""),
        }
    }

    /// What the health checks of the current run say.
    pub(super) fn health(&self) -> Health {
        match self {
            Phase::Running { checks, .. } => checks.health,
            Phase::Stopping { health, .. } => *health,
            _ => Health::Unknown,
        }
    }

    /// The process the unit waits for (main, preparation step or cleanup task).
    pub(super) fn pid(&self) -> Option<i32> {
        match self {
            Phase::Preparing { task, .. } | Phase::Cleaning { task, .. } => Some(*task),
            Phase::Running { pid, .. } | Phase::Stopping { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// The main process, as the API shows it.
    pub(super) fn main_pid(&self) -> Option<i32> {
        match self {
            Phase::Running { pid, .. }
            | Phase::Stopping {
                pid,
                process: Process::Main,
                ..
            } => Some(*pid),
            _ => None,
        }
    }

    /// The unit's process is a task in a process group of its own (preparation, cleanup).
    pub(super) fn runs_task(&self) -> bool {
        matches!(
            self,
            Phase::Preparing { .. }
                | Phase::Cleaning { .. }
                | Phase::Stopping {
                    process: Process::Preparation,
                    ..
                }
        )
    }

    /// Has a process or a pending restart: a start request has nothing to do.
    pub(super) fn is_active(&self) -> bool {
        self.pid().is_some() || matches!(self, Phase::Backoff { .. })
    }

    /// Runs and is not paused: health checks apply.
    pub(super) fn is_checked(&self) -> bool {
        matches!(self, Phase::Running { paused: None, .. })
    }

    /// Stopping or cleaning up: what follows is decided by the stop reason.
    pub(super) fn is_stopping(&self) -> bool {
        matches!(self, Phase::Stopping { .. } | Phase::Cleaning { .. })
    }

    /// Changes why a unit that is stopping or cleaning up was stopped. False for any other
    /// phase.
    pub(super) fn restop(&mut self, new: StopReason) -> bool {
        match self {
            Phase::Stopping { reason, .. } => *reason = new,
            Phase::Cleaning { reason, .. } => *reason = Some(new),
            _ => return false,
        }
        true
    }

    /// A start or restart request on a unit that is stopping or cleaning up: it runs again
    /// once stopped, with the new definition if one is waiting (the one its file now
    /// holds). False for any other phase.
    pub(super) fn restart_after_stop(&mut self) -> bool {
        self.has_replacement() || self.restop(StopReason::Restart)
    }

    /// A new definition waits for the stop under way.
    fn has_replacement(&self) -> bool {
        matches!(
            self,
            Phase::Stopping {
                reason: StopReason::Replace(_),
                ..
            } | Phase::Cleaning {
                reason: Some(StopReason::Replace(_)),
                ..
            }
        )
    }

    /// Begins stopping the process of a preparing or running unit: the phase becomes
    /// `Stopping` and the pid to signal is returned. Any other phase stays as it is and the
    /// reason is given back: it has no process to stop, or is stopping already.
    pub(super) fn begin_stop(&mut self, reason: StopReason) -> Result<i32, StopReason> {
        let (pid, process, health) = match self {
            Phase::Preparing { task, .. } => (*task, Process::Preparation, Health::Unknown),
            Phase::Running { pid, checks, .. } => (*pid, Process::Main, checks.health),
            _ => return Err(reason),
        };
        *self = Phase::Stopping {
            pid,
            process,
            reason,
            health,
        };
        Ok(pid)
    }

    /// Why a stopping unit is stopped.
    pub(super) fn stop_reason(&self) -> Option<&StopReason> {
        match self {
            Phase::Stopping { reason, .. } => Some(reason),
            Phase::Cleaning { reason, .. } => reason.as_ref(),
            _ => None,
        }
    }

    /// A stop of a unit without a process: it stays stopped (`stopped`), or fails when a
    /// required dependency is gone. Phases with a process stay as they are.
    pub(super) fn stop_idle(&mut self, dependency_failed: bool) {
        match self {
            Phase::Backoff { .. }
            | Phase::Inactive { .. }
            | Phase::Exited { .. }
            | Phase::Failed { .. }
                if dependency_failed =>
            {
                *self = Phase::Failed {
                    note: "dependency failed",
                };
            }
            Phase::Backoff { .. } | Phase::Exited { .. } => {
                *self = Phase::Exited { note: "stopped" }
            }
            Phase::Inactive { note } => *note = "stopped".into(),
            _ => {}
        }
    }

    /// The process `pid` exited with `status`: what that means for this phase. A pid that is
    /// not this phase's process gives the phase back.
    pub(super) fn reaped(self, pid: i32, status: ExitStatus) -> Result<Reaped, Phase> {
        if self.pid() != Some(pid) {
            return Err(self);
        }
        Ok(match self {
            Phase::Preparing { done, .. } if status.success() => {
                Reaped::Prepared { done: done + 1 }
            }
            Phase::Preparing { .. } => Reaped::Ended {
                main: None,
                preparation: true,
                reason: None,
            },
            Phase::Running { pid, .. } => Reaped::Ended {
                main: Some(pid),
                preparation: false,
                reason: None,
            },
            Phase::Stopping {
                pid,
                process,
                reason,
                ..
            } => Reaped::Ended {
                main: (process == Process::Main).then_some(pid),
                preparation: process == Process::Preparation,
                reason: Some(reason),
            },
            Phase::Cleaning { exit, reason, .. } => Reaped::Cleaned { exit, reason },
            other => return Err(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(health: Health) -> Phase {
        Phase::Running {
            pid: 7,
            checks: Checks {
                health,
                failures: 0,
            },
            paused: None,
        }
    }

    #[test]
    fn the_display_state_follows_from_the_phase() {
        let cases: Vec<(Phase, State, &str)> = vec![
            (Phase::default(), State::Inactive, ""),
            (
                Phase::Preparing { task: 3, done: 0 },
                State::Starting,
                "preparing",
            ),
            (running(Health::Unknown), State::Running, ""),
            (running(Health::Healthy), State::Healthy, ""),
            (running(Health::Unhealthy), State::Running, "unhealthy"),
            (
                Phase::Running {
                    pid: 7,
                    checks: Checks::default(),
                    paused: Some("SIGSTOP".into()),
                },
                State::Paused,
                "stopped by SIGSTOP",
            ),
            (
                Phase::Cleaning {
                    task: 9,
                    exit: ExitStatus::Exited(1),
                    reason: None,
                },
                State::Stopping,
                "cleaning up",
            ),
            (
                Phase::Backoff {
                    delay: Duration::from_millis(400),
                },
                State::Exited,
                "restarting in 400ms",
            ),
            (
                Phase::Failed {
                    note: "start limit",
                },
                State::Failed,
                "start limit",
            ),
        ];
        for (phase, state, detail) in cases {
            assert_eq!((phase.state(), phase.detail().as_ref()), (state, detail));
        }
    }

    #[test]
    fn only_a_process_can_be_stopped_and_the_stop_keeps_what_it_needs() {
        let mut phase = running(Health::Unhealthy);
        assert_eq!(phase.begin_stop(StopReason::Unhealthy).ok(), Some(7));
        assert!(matches!(
            phase,
            Phase::Stopping {
                pid: 7,
                process: Process::Main,
                reason: StopReason::Unhealthy,
                health: Health::Unhealthy,
            }
        ));
        assert_eq!(phase.main_pid(), Some(7));
        // A second stop finds it stopping: it stays as it was.
        let reason = phase.begin_stop(StopReason::Requested).unwrap_err();
        assert!(matches!(reason, StopReason::Requested));
        assert!(matches!(phase.stop_reason(), Some(StopReason::Unhealthy)));
        // A preparation step stops as a task; the API shows no main pid for it.
        let mut prep = Phase::Preparing { task: 4, done: 1 };
        assert_eq!(prep.begin_stop(StopReason::Requested).ok(), Some(4));
        assert!(prep.runs_task());
        assert_eq!((prep.pid(), prep.main_pid()), (Some(4), None));
        // Without a process there is nothing to signal.
        let mut backoff = Phase::Backoff {
            delay: Duration::from_secs(1),
        };
        assert!(backoff.begin_stop(StopReason::Requested).is_err());
        backoff.stop_idle(false);
        assert!(matches!(backoff, Phase::Exited { note: "stopped" }));
        let mut waiting = Phase::default();
        waiting.stop_idle(true);
        assert!(matches!(
            waiting,
            Phase::Failed {
                note: "dependency failed"
            }
        ));
        // A stop of a process phase through stop_idle changes nothing.
        let mut run = running(Health::Unknown);
        run.stop_idle(true);
        assert!(matches!(run, Phase::Running { pid: 7, .. }));
    }

    #[test]
    fn an_exit_means_what_the_phase_says() {
        let ok = ExitStatus::Exited(0);
        assert!(matches!(
            Phase::Preparing { task: 4, done: 1 }.reaped(4, ok),
            Ok(Reaped::Prepared { done: 2 })
        ));
        assert!(matches!(
            Phase::Preparing { task: 4, done: 0 }.reaped(4, ExitStatus::Exited(1)),
            Ok(Reaped::Ended {
                main: None,
                preparation: true,
                reason: None
            })
        ));
        // A preparation step that was being stopped ends the start even when it succeeded.
        let mut stopped_prep = Phase::Preparing { task: 4, done: 0 };
        assert!(stopped_prep.begin_stop(StopReason::Remove).is_ok());
        assert!(matches!(
            stopped_prep.reaped(4, ok),
            Ok(Reaped::Ended {
                main: None,
                preparation: true,
                reason: Some(StopReason::Remove)
            })
        ));
        assert!(matches!(
            running(Health::Healthy).reaped(7, ok),
            Ok(Reaped::Ended {
                main: Some(7),
                preparation: false,
                reason: None
            })
        ));
        let cleaning = Phase::Cleaning {
            task: 9,
            exit: ExitStatus::Signaled(9),
            reason: Some(StopReason::Restart),
        };
        assert!(matches!(
            cleaning.reaped(9, ok),
            Ok(Reaped::Cleaned {
                exit: ExitStatus::Signaled(9),
                reason: Some(StopReason::Restart)
            })
        ));
        // Not the phase's process (or a phase without one): given back unchanged.
        assert!(matches!(
            running(Health::Unknown).reaped(8, ok),
            Err(Phase::Running { pid: 7, .. })
        ));
        assert!(matches!(
            Phase::Exited { note: "" }.reaped(7, ok),
            Err(Phase::Exited { .. })
        ));
    }

    #[test]
    fn a_waiting_replacement_survives_a_start_or_restart_request_but_not_a_removal() {
        let loaded = Loaded {
            name: "web".into(),
            path: "web.toml".into(),
            unit: crate::unit::parse("web", "web.toml", "[container]\ncommand = [\"x\"]\n"),
        };
        let mut phase = running(Health::Unknown);
        assert!(phase
            .begin_stop(StopReason::Replace(Box::new(loaded)))
            .is_ok());
        assert!(phase.restart_after_stop());
        assert!(matches!(
            phase,
            Phase::Stopping {
                reason: StopReason::Replace(_),
                ..
            }
        ));
        assert!(phase.restop(StopReason::Remove));
        assert!(matches!(
            phase,
            Phase::Stopping {
                reason: StopReason::Remove,
                ..
            }
        ));
        // A cleanup after an exit of its own gains a reason.
        let mut cleaning = Phase::Cleaning {
            task: 9,
            exit: ExitStatus::Exited(0),
            reason: None,
        };
        assert!(cleaning.restop(StopReason::Remove));
        assert!(matches!(
            cleaning,
            Phase::Cleaning {
                reason: Some(StopReason::Remove),
                ..
            }
        ));
        let mut idle = Phase::default();
        assert!(!idle.restop(StopReason::Remove));
        assert!(!idle.restart_after_stop());
        assert!(matches!(idle, Phase::Inactive { .. }));
    }
}
