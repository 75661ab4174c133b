//! What a unit is doing, as the API and the log show it (derived from the supervisor's
//! per-unit `Phase`).

use serde::Serialize;

/// The per-unit state machine:
/// `inactive → starting → running → (healthy) → stopping → exited | failed`.
/// `starting` covers preparation steps (image pulls); a unit without preparation passes
/// through it instantly. A unit waiting for a restart is `exited` with detail
/// `restarting in …`. A running unit whose main process was stopped by a signal (SIGSTOP,
/// SIGTSTP, …) is `paused` (detail `stopped by SIGSTOP`) until it is continued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Inactive,
    Starting,
    Running,
    Healthy,
    Paused,
    Stopping,
    Exited,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Starting => "starting",
            State::Running => "running",
            State::Healthy => "healthy",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }
}

/// Result of the unit's health checks, when it has any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No check has passed yet (or the unit is not running).
    Unknown,
    Healthy,
    /// `retries` consecutive checks failed.
    Unhealthy,
}

/// A snapshot of one unit for the API.
#[derive(Debug, Clone, Serialize)]
pub struct UnitStatus {
    pub name: String,
    pub path: String,
    pub description: String,
    /// `system` (runs from the host root) or `container`; absent for invalid units.
    pub kind: Option<&'static str>,
    pub critical: bool,
    pub state: State,
    /// Sub-state in words: `waiting for db`, `restarting in 400ms`, `unhealthy`, ….
    pub detail: String,
    /// Present when the unit has a health check.
    pub health: Option<Health>,
    pub pid: Option<i32>,
    /// Automatic restarts so far.
    pub restarts: u32,
    /// Shell-style code of the last exit (128 + signal when killed).
    pub last_exit_code: Option<i32>,
    pub last_exit: Option<String>,
    /// Bytes of output lost since the unit's log was last written (its disk is full or
    /// failing); 0 while output reaches the log.
    pub log_dropped: u64,
    /// Why the unit is failed or invalid (validation errors with file:line:column).
    pub error: Option<String>,
    pub after: Vec<String>,
    pub requires: Vec<String>,
}
