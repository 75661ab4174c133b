//! Questions asked of a booted Berth through its admin shell.

use std::time::{Duration, Instant};

use crate::{HarnessError, Result, Vm};

/// Unit counts from `berthctl --json status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitCounts {
    pub total: u64,
    pub running: u64,
    pub failed: u64,
}

/// Parses the JSON `berthctl --json status` prints (the API's `/v1/system`).
pub fn parse_status(output: &str) -> Option<UnitCounts> {
    let start = output.find('{')?;
    let end = output.rfind('}')?;
    let v: serde_json::Value = serde_json::from_str(&output[start..=end]).ok()?;
    let units = v.get("units")?;
    Some(UnitCounts {
        total: units.get("total")?.as_u64()?,
        running: units.get("running")?.as_u64()?,
        failed: units.get("failed")?.as_u64()?,
    })
}

impl Vm {
    /// Waits until `berthctl status` reports every unit running (and at least `min_units`).
    pub fn wait_all_units_running(
        &mut self,
        min_units: u64,
        timeout: Duration,
    ) -> Result<UnitCounts> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let (_, out) = self.run("berthctl --json status", Duration::from_secs(60))?;
            if let Some(c) = parse_status(&out) {
                if c.total >= min_units && c.running == c.total {
                    return Ok(c);
                }
            }
            last = out;
            std::thread::sleep(Duration::from_millis(500));
        }
        let (_, units) = self.run("berthctl units", Duration::from_secs(60))?;
        Err(HarnessError::Timeout {
            what: format!("all units running (at least {min_units})"),
            waited: timeout,
            tail: format!("{last}\n{units}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_is_read_through_console_noise() {
        let out = "{\"version\":\"0.1.0\",\"mode\":\"pid1\",\"units\":{\"total\":4,\"running\":3,\"failed\":1}}\n";
        assert_eq!(
            parse_status(out),
            Some(UnitCounts {
                total: 4,
                running: 3,
                failed: 1
            })
        );
        assert_eq!(parse_status("berthctl: connection refused"), None);
    }
}
