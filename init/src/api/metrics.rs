//! `GET /v1/metrics`: Prometheus text format (version 0.0.4). Per unit: state, restarts,
//! output lost to a full or failing log disk, and what its cgroup reports (CPU, memory
//! current/peak/max, io bytes, pids); units without a cgroup are left out of those families
//! rather than shown as zeros. System: uptime, boot duration, and version and slot as labels
//! of `berth_info`.

use std::fmt::Write;

use super::context::{ApiContext, Params, Reply, SystemInfo};
use super::http::{Request, Response};
use crate::launch::Usage;
use crate::supervisor::{State, UnitStatus};
use berth_runtime::cgroups::Limit;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STATES: [State; 8] = [
    State::Inactive,
    State::Starting,
    State::Running,
    State::Healthy,
    State::Paused,
    State::Stopping,
    State::Exited,
    State::Failed,
];

pub fn get(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let units: Vec<(UnitStatus, Option<Usage>)> = ctx
        .supervisor
        .statuses()
        .into_iter()
        .map(|s| {
            let usage = ctx.supervisor.usage(&s.name);
            (s, usage)
        })
        .collect();
    let text = render(ctx.system, ctx.now, &units, crate::log::forward_stats());
    Response::text(200, CONTENT_TYPE, text.into_bytes()).into()
}

/// A metric family being written: HELP and TYPE come before its first sample.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    started: bool,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        if !self.started {
            self.started = true;
            let _ = writeln!(self.out, "# HELP {} {}", self.name, self.help);
            let _ = writeln!(self.out, "# TYPE {} {}", self.name, self.kind);
        }
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

fn family<'a>(
    out: &'a mut String,
    name: &'static str,
    kind: &'static str,
    help: &'static str,
) -> Family<'a> {
    Family {
        out,
        name,
        kind,
        help,
        started: false,
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}

/// One per-unit family from the cgroup usage; units without the value are left out.
fn usage_family(
    out: &mut String,
    units: &[(UnitStatus, Option<Usage>)],
    (name, kind, help): (&'static str, &'static str, &'static str),
    value: impl Fn(&Usage) -> Option<f64>,
) {
    let mut f = family(out, name, kind, help);
    for (s, usage) in units {
        if let Some(v) = usage.as_ref().and_then(&value) {
            f.sample(&[("unit", &s.name)], v);
        }
    }
}

/// A family with one sample per unit, from what the supervisor knows of it.
fn status_family(
    out: &mut String,
    units: &[(UnitStatus, Option<Usage>)],
    (name, kind, help): (&'static str, &'static str, &'static str),
    value: impl Fn(&UnitStatus) -> f64,
) {
    let mut f = family(out, name, kind, help);
    for (s, _) in units {
        f.sample(&[("unit", &s.name)], value(s));
    }
}

pub fn render(
    system: &SystemInfo,
    now: std::time::Instant,
    units: &[(UnitStatus, Option<Usage>)],
    forwarding: crate::log::ForwardStats,
) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "berth_info",
        "gauge",
        "Berth build and boot facts (always 1).",
    )
    .sample(
        &[
            ("version", system.version),
            ("mode", system.mode),
            ("slot", system.slot.as_deref().unwrap_or("")),
            ("hostname", &system.hostname),
        ],
        1.0,
    );
    family(
        &mut out,
        "berth_uptime_seconds",
        "gauge",
        "Time since the kernel started (host mode: since berth-init started).",
    )
    .sample(&[], system.uptime(now).as_secs_f64());
    if let Some(d) = system.boot_duration {
        family(
            &mut out,
            "berth_boot_duration_seconds",
            "gauge",
            "From kernel start (host mode: berth-init start) until every unit was started.",
        )
        .sample(&[], d.as_secs_f64());
    }
    let mut f = family(
        &mut out,
        "berth_unit_state",
        "gauge",
        "1 for the state each unit is in, 0 for the others.",
    );
    for (s, _) in units {
        for state in STATES {
            f.sample(
                &[("unit", &s.name), ("state", state.as_str())],
                if s.state == state { 1.0 } else { 0.0 },
            );
        }
    }
    status_family(
        &mut out,
        units,
        (
            "berth_unit_restarts_total",
            "counter",
            "Automatic restarts of the unit.",
        ),
        |s| f64::from(s.restarts),
    );
    status_family(
        &mut out,
        units,
        (
            "berth_unit_log_dropped_bytes",
            "gauge",
            "Output of the unit lost since its log was last written (its disk is full or failing).",
        ),
        |s| s.log_dropped as f64,
    );
    let us = |v: Option<u64>| v.map(|v| v as f64 / 1e6);
    let n = |v: Option<u64>| v.map(|v| v as f64);
    usage_family(
        &mut out,
        units,
        (
            "berth_unit_cpu_usage_seconds_total",
            "counter",
            "CPU time used by the unit's cgroup.",
        ),
        |u| us(u.stats.cpu_usage_usec),
    );
    usage_family(
        &mut out,
        units,
        (
            "berth_unit_memory_current_bytes",
            "gauge",
            "Memory used by the unit's cgroup.",
        ),
        |u| n(u.stats.memory_current),
    );
    usage_family(
        &mut out,
        units,
        (
            "berth_unit_memory_peak_bytes",
            "gauge",
            "Most memory the unit's cgroup used.",
        ),
        |u| n(u.stats.memory_peak),
    );
    usage_family(
        &mut out,
        units,
        (
            "berth_unit_memory_max_bytes",
            "gauge",
            "Memory limit of the unit's cgroup (+Inf without one).",
        ),
        |u| match u.memory_max? {
            Limit::Max => Some(f64::INFINITY),
            Limit::Value(v) => Some(v as f64),
        },
    );
    usage_family(
        &mut out,
        units,
        (
            "berth_unit_io_read_bytes_total",
            "counter",
            "Bytes the unit's cgroup read from block devices.",
        ),
        |u| n(u.stats.io_read_bytes),
    );
    usage_family(
        &mut out,
        units,
        (
            "berth_unit_io_write_bytes_total",
            "counter",
            "Bytes the unit's cgroup wrote to block devices.",
        ),
        |u| n(u.stats.io_write_bytes),
    );
    usage_family(
        &mut out,
        units,
        (
            "berth_unit_pids",
            "gauge",
            "Processes and threads in the unit's cgroup.",
        ),
        |u| n(u.stats.pids_current),
    );
    usage_family(
        &mut out,
        units,
        (
            "berth_unit_oom_kills_total",
            "counter",
            "Processes of the unit killed by the OOM killer.",
        ),
        |u| n(u.stats.oom_kills),
    );
    if forwarding.configured {
        family(
            &mut out,
            "berth_syslog_forwarded_total",
            "counter",
            "Log messages handed to the remote syslog server.",
        )
        .sample(&[], forwarding.sent as f64);
        family(
            &mut out,
            "berth_syslog_dropped_total",
            "counter",
            "Log messages dropped because the remote syslog server could not take them.",
        )
        .sample(&[], forwarding.dropped as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_labels_and_formats_special_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
    }
}
