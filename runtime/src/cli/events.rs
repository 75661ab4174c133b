//! `events [--stats] [--interval DURATION] ID`: the container's resource usage as runc's
//! event JSON (one `{"type":"stats","id":…,"data":{…}}` per line), once with `--stats`, else
//! every interval (5s by default) plus an `oom` event whenever the OOM killer ran, until the
//! container stops.

use super::{flag, opt, parse, CliResult, Global, Usage};
use berth_runtime::cgroups::Stats;
use berth_runtime::state::Status;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

/// Parses a Go duration as runc's `--interval` takes it: `5s`, `250ms`, `1m`, `1.5s`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().ok()?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let secs = n * scale;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

/// runc's `types.Stats` from Berth's counters (CPU times in nanoseconds, as runc reports them).
pub fn stats_json(s: &Stats) -> Value {
    let ns = |us: Option<u64>| us.unwrap_or(0).saturating_mul(1000);
    json!({
        "cpu": {
            "usage": {
                "total": ns(s.cpu_usage_usec),
                "kernel": ns(s.cpu_system_usec),
                "user": ns(s.cpu_user_usec)
            },
            "throttling": {}
        },
        "memory": {
            "usage": {
                "limit": 0,
                "usage": s.memory_current.unwrap_or(0),
                "max": s.memory_peak.unwrap_or(0),
                "failcnt": s.oom_events.unwrap_or(0)
            },
            "swap": { "limit": 0, "failcnt": 0 },
            "kernel": { "limit": 0, "failcnt": 0 },
            "kernelTCP": { "limit": 0, "failcnt": 0 }
        },
        "pids": { "current": s.pids_current.unwrap_or(0) },
        "blkio": {},
        "hugetlb": {},
        "intel_rdt": {},
        "network_interfaces": null
    })
}

fn event(kind: &str, id: &str, data: Option<Value>) -> String {
    let mut e = json!({ "type": kind, "id": id });
    if let Some(d) = data {
        e["data"] = d;
    }
    e.to_string()
}

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[flag(&["stats"]), opt(&["interval"])], false)?;
    let id = p.id()?;
    let interval = match p.get("interval") {
        Some(v) => parse_duration(v)
            .ok_or_else(|| Usage(format!("--interval `{v}` is not a duration like 5s")))?,
        None => Duration::from_secs(5),
    };
    let runtime = g.runtime();
    let mut c = runtime.load(id)?;
    let stats = c.stats()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", event("stats", id, Some(stats_json(&stats))))?;
    out.flush()?;
    if p.is_set("stats") {
        return Ok(0);
    }
    let mut ooms = stats.oom_kills.unwrap_or(0);
    loop {
        std::thread::sleep(interval);
        c.refresh();
        if c.status() == Status::Stopped {
            return Ok(0);
        }
        let Ok(stats) = c.stats() else {
            // The cgroup went away with the container.
            return Ok(0);
        };
        let now = stats.oom_kills.unwrap_or(0);
        if now > ooms {
            writeln!(out, "{}", event("oom", id, None))?;
        }
        ooms = now;
        writeln!(out, "{}", event("stats", id, Some(stats_json(&stats))))?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("xs"), None);
    }

    #[test]
    fn stats_event_has_runc_shape() {
        let s = Stats {
            cpu_usage_usec: Some(3),
            memory_current: Some(4096),
            pids_current: Some(2),
            ..Stats::default()
        };
        let v: Value = serde_json::from_str(&event("stats", "c1", Some(stats_json(&s)))).unwrap();
        assert_eq!(v["type"], "stats");
        assert_eq!(v["id"], "c1");
        assert_eq!(v["data"]["cpu"]["usage"]["total"], 3000);
        assert_eq!(v["data"]["memory"]["usage"]["usage"], 4096);
        assert_eq!(v["data"]["pids"]["current"], 2);
    }
}
