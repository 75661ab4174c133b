//! The validated, typed unit the supervisor works with.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::value::{ImageRef, PortMapping, UserSpec, Volume};

/// A unit: its name is the file stem (`web.toml` → `web`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    pub name: String,
    /// Where it was read from (for messages).
    pub path: String,
    pub description: String,
    pub after: Vec<String>,
    pub requires: Vec<String>,
    pub critical: bool,
    pub container: Container,
    pub resources: Resources,
    pub service: Service,
    pub health: Option<Health>,
}

impl Unit {
    /// A unit with no image runs its command from the host's root: a system unit.
    pub fn is_system(&self) -> bool {
        self.container.image.is_none()
    }

    /// Every unit this one is ordered after (`after` and `requires`, without repeats).
    pub fn ordered_after(&self) -> impl Iterator<Item = &str> {
        let extra = self.requires.iter().filter(|r| !self.after.contains(r));
        self.after.iter().chain(extra).map(String::as_str)
    }
}

/// `[container] network`: how the unit's container is networked (the engine's
/// `builder::NetworkMode` says the same to the spec builder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Bridge,
    Host,
    None,
}

/// `[container] pid`: whose pid namespace the container's processes live in (the engine's
/// `builder::PidMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PidMode {
    Container,
    Host,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub image: Option<ImageRef>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub user: Option<UserSpec>,
    pub network: NetworkMode,
    pub ports: Vec<PortMapping>,
    pub volumes: Vec<Volume>,
    pub read_only: bool,
    /// Every capability and device, the host's /dev, no seccomp filter (containers only).
    pub privileged: bool,
    pub pid: PidMode,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes.
    pub memory_max: Option<u64>,
    /// CPUs (0.5 = half a CPU).
    pub cpu_max: Option<f64>,
    pub pids_max: Option<u64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub restart: Restart,
    pub restart_delay: Duration,
    pub restart_delay_max: Duration,
    pub start_limit_burst: u32,
    pub start_limit_interval: Duration,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
}

impl Default for Service {
    fn default() -> Self {
        Service {
            restart: Restart::OnFailure,
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_secs(30),
            start_limit_burst: 5,
            start_limit_interval: Duration::from_secs(10),
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub exec: Vec<String>,
    pub interval: Duration,
    pub retries: u32,
}

pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;
