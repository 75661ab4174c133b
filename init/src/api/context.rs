//! What the control API's handlers see and answer: the [`ApiContext`] they act on, the
//! [`Reply`] they give, the path parameters the route table bound, and the [`SystemInfo`]
//! facts. The route table ([`super::routes`]) and every handler use this module; it uses
//! neither, so the arrows go one way: routes -> handlers -> context.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::http::Response;
use super::jobs::Jobs;
use super::log_cursor::LogCursor;
use crate::boot::extensions::MountedExtension;
use crate::boot::Paths;
use crate::event::Reactor;
use crate::shutdown::PowerAction;
use crate::supervisor::Supervisor;

/// Facts about the running system for `/v1/system` and `/v1/metrics`.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub version: &'static str,
    /// `pid1` or `host`.
    pub mode: &'static str,
    pub started: Instant,
    pub hostname: String,
    /// The A/B slot booted (`berth.slot=` on the kernel command line).
    pub slot: Option<String>,
    /// The kernel's random id of this boot.
    pub boot_id: String,
    /// From kernel start (PID 1; from berth-init's start in host mode) until supervision
    /// began with every unit started or waiting for its dependencies.
    pub boot_duration: Option<Duration>,
    /// The mutual-TLS listener's address, when there is one.
    pub remote_api: Option<SocketAddr>,
    /// System extensions mounted at boot.
    pub extensions: Vec<MountedExtension>,
}

impl SystemInfo {
    /// Facts read from the kernel: slot and boot id.
    pub fn new(version: &'static str, mode: &'static str, hostname: String) -> SystemInfo {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        SystemInfo {
            version,
            mode,
            started: Instant::now(),
            hostname,
            slot: slot_of(&cmdline),
            boot_id,
            boot_duration: None,
            remote_api: None,
            extensions: Vec::new(),
        }
    }

    /// Time since the kernel started (PID 1) or since berth-init started (host mode).
    pub fn uptime(&self, now: Instant) -> Duration {
        if self.mode == "pid1" {
            if let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
                return Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32);
            }
        }
        now.saturating_duration_since(self.started)
    }
}

/// `berth.slot=X` on a kernel command line.
pub fn slot_of(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("berth.slot="))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// What a handler can see and change.
pub struct ApiContext<'a> {
    pub supervisor: &'a mut Supervisor,
    pub reactor: &'a mut dyn Reactor,
    pub system: &'a SystemInfo,
    pub paths: &'a Paths,
    pub jobs: &'a mut Jobs,
    /// Set by reboot/poweroff; the main loop starts the ordered shutdown.
    pub power: &'a mut Option<PowerAction>,
    pub now: Instant,
}

/// A handler's answer.
pub enum Reply {
    /// One response, then the connection closes.
    Full(Response),
    /// A unit's log, read from its files as the socket drains (chunked and open-ended when
    /// following).
    Log(Box<LogCursor>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::Full(r)
    }
}

/// The `{name}` parameters a route bound, percent-decoded.
pub type Params = Vec<(&'static str, String)>;

/// The value of the path parameter `name`; empty when the route has none.
pub fn param<'p>(params: &'p Params, name: &str) -> &'p str {
    params
        .iter()
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_slot_from_the_kernel_command_line() {
        assert_eq!(slot_of("ro berth.slot=B quiet").as_deref(), Some("B"));
        assert_eq!(slot_of("ro quiet"), None);
        assert_eq!(slot_of("berth.slot="), None);
    }
}
