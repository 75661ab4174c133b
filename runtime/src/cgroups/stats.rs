//! Usage counters read from a cgroup's interface files.

use serde::Serialize;

/// Counters of one cgroup; `None` when the controller (or the kernel) does not provide it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub cpu_usage_usec: Option<u64>,
    pub cpu_user_usec: Option<u64>,
    pub cpu_system_usec: Option<u64>,
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    pub pids_current: Option<u64>,
    /// Times the memory limit was hit and the OOM killer ran (`memory.events` `oom`).
    pub oom_events: Option<u64>,
    /// Processes killed by the OOM killer (`memory.events` `oom_kill`).
    pub oom_kills: Option<u64>,
}

fn key_values(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let mut it = l.split_whitespace();
        let key = it.next()?;
        let value = it.next()?.parse().ok()?;
        Some((key, value))
    })
}

impl Stats {
    pub(crate) fn parse_cpu_stat(&mut self, text: &str) {
        for (key, v) in key_values(text) {
            match key {
                "usage_usec" => self.cpu_usage_usec = Some(v),
                "user_usec" => self.cpu_user_usec = Some(v),
                "system_usec" => self.cpu_system_usec = Some(v),
                _ => {}
            }
        }
    }

    pub(crate) fn parse_memory_events(&mut self, text: &str) {
        for (key, v) in key_values(text) {
            match key {
                "oom" => self.oom_events = Some(v),
                "oom_kill" => self.oom_kills = Some(v),
                _ => {}
            }
        }
    }

    /// `io.stat`: one line per device, `8:0 rbytes=1 wbytes=2 rios=3 ...`; summed.
    pub(crate) fn parse_io_stat(&mut self, text: &str) {
        let (mut read, mut write) = (0u64, 0u64);
        for field in text.split_whitespace() {
            if let Some((key, value)) = field.split_once('=') {
                let v: u64 = value.parse().unwrap_or(0);
                match key {
                    "rbytes" => read = read.saturating_add(v),
                    "wbytes" => write = write.saturating_add(v),
                    _ => {}
                }
            }
        }
        self.io_read_bytes = Some(read);
        self.io_write_bytes = Some(write);
    }
}
