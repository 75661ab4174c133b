//! The route table of the control API: `(method, pattern, handler)` rows under `/v1/`.
//! Patterns are literal segments and `{name}` parameters (percent-decoded). New endpoints are
//! new rows; `docs/api/openapi.yaml` documents every row (a test keeps the two in step).
//!
//! Layout: `/v1/system` (facts, reboot, poweroff), `/v1/metrics`, `/v1/units/...`,
//! `/v1/images/...`, `/v1/update/...` (A/B update status, apply, jobs, rollback). A bundle
//! streamed in the body of `POST /v1/update` is taken before dispatch (see
//! [`super::update::is_upload`]): the table sees only requests with their whole body.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::http::{percent_decode, Request, Response};
use super::jobs::Jobs;
use super::{images, log_cursor, metrics, units, update};
use crate::boot::Paths;
use crate::event::Reactor;
use crate::shutdown::PowerAction;
use crate::supervisor::{State, Supervisor};

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
    Log(Box<log_cursor::LogCursor>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::Full(r)
    }
}

pub type Params = Vec<(&'static str, String)>;
type Handler = fn(&Request, &Params, &mut ApiContext<'_>) -> Reply;

pub struct Route {
    pub method: &'static str,
    pub pattern: &'static str,
    handler: Handler,
}

const fn route(method: &'static str, pattern: &'static str, handler: Handler) -> Route {
    Route {
        method,
        pattern,
        handler,
    }
}

/// Every endpoint of the API.
pub const ROUTES: &[Route] = &[
    route("GET", "/v1/system", system),
    route("POST", "/v1/system/reboot", reboot),
    route("POST", "/v1/system/poweroff", poweroff),
    route("GET", "/v1/metrics", metrics::get),
    route("GET", "/v1/units", units::list),
    route("GET", "/v1/units/{name}", units::show),
    route("PUT", "/v1/units/{name}", units::install),
    route("DELETE", "/v1/units/{name}", units::remove),
    route("POST", "/v1/units/{name}/start", units::start),
    route("POST", "/v1/units/{name}/stop", units::stop),
    route("POST", "/v1/units/{name}/restart", units::restart),
    route("GET", "/v1/units/{name}/logs", log_cursor::get),
    route("GET", "/v1/images", images::list),
    route("POST", "/v1/images/pull", images::pull),
    route("GET", "/v1/images/jobs", images::jobs),
    route("GET", "/v1/images/jobs/{id}", images::job),
    route("DELETE", "/v1/images/jobs/{id}", images::cancel_job),
    route("GET", "/v1/images/{reference}", images::show),
    route("DELETE", "/v1/images/{reference}", images::remove),
    route("GET", "/v1/update", update::status),
    route("POST", "/v1/update", update::start),
    route("POST", "/v1/update/rollback", update::rollback),
    route("GET", "/v1/update/jobs", update::jobs),
    route("GET", "/v1/update/jobs/{id}", update::job),
    route("DELETE", "/v1/update/jobs/{id}", update::cancel_job),
];

/// Matches `path` against `pattern`, returning the decoded `{param}` values.
fn matches(pattern: &'static str, path: &str) -> Option<Params> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(g)) if p.starts_with('{') && p.ends_with('}') && !g.is_empty() => {
                let name = p.trim_start_matches('{').trim_end_matches('}');
                params.push((name, percent_decode(g)?));
            }
            (Some(p), Some(g)) if p == g => {}
            _ => return None,
        }
    }
}

pub fn dispatch(req: &Request, ctx: &mut ApiContext<'_>) -> Reply {
    let path = if req.path.len() > 1 {
        req.path.trim_end_matches('/')
    } else {
        &req.path
    };
    let mut allowed = Vec::new();
    for route in ROUTES {
        if let Some(params) = matches(route.pattern, path) {
            if route.method == req.method {
                return (route.handler)(req, &params, ctx);
            }
            allowed.push(route.method);
        }
    }
    if allowed.is_empty() {
        Response::error(404, "no such endpoint", &req.path).into()
    } else {
        let detail = format!(
            "{} {}: allowed: {}",
            req.method,
            req.path,
            allowed.join(", ")
        );
        Response::error(405, "method not allowed", &detail).into()
    }
}

pub fn param<'p>(params: &'p Params, name: &str) -> &'p str {
    params
        .iter()
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| v.as_str())
}

#[derive(Serialize)]
struct SystemBody<'a> {
    version: &'a str,
    mode: &'a str,
    hostname: &'a str,
    slot: Option<&'a str>,
    boot_id: &'a str,
    uptime_seconds: f64,
    boot_duration_seconds: Option<f64>,
    remote_api: Option<String>,
    shutting_down: bool,
    units: UnitCounts,
}

#[derive(Serialize, Default)]
struct UnitCounts {
    total: usize,
    running: usize,
    failed: usize,
}

fn system(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let mut counts = UnitCounts::default();
    for s in ctx.supervisor.statuses() {
        counts.total += 1;
        match s.state {
            State::Running | State::Healthy => counts.running += 1,
            State::Failed => counts.failed += 1,
            _ => {}
        }
    }
    let sys = ctx.system;
    Response::json(
        200,
        &SystemBody {
            version: sys.version,
            mode: sys.mode,
            hostname: &sys.hostname,
            slot: sys.slot.as_deref(),
            boot_id: &sys.boot_id,
            uptime_seconds: sys.uptime(ctx.now).as_secs_f64(),
            boot_duration_seconds: sys.boot_duration.map(|d| d.as_secs_f64()),
            remote_api: sys.remote_api.map(|a| a.to_string()),
            shutting_down: ctx.supervisor.shutting_down(),
            units: counts,
        },
    )
    .into()
}

fn power(ctx: &mut ApiContext<'_>, action: PowerAction, name: &str) -> Reply {
    if ctx.supervisor.shutting_down() || ctx.power.is_some() {
        return Response::error(409, "already shutting down", "").into();
    }
    *ctx.power = Some(action);
    Response::json(
        202,
        &serde_json::json!({ "action": name, "detail": "stopping every unit in order" }),
    )
    .into()
}

fn reboot(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    power(ctx, PowerAction::Reboot, "reboot")
}

fn poweroff(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    power(ctx, PowerAction::Poweroff, "poweroff")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_bind_decoded_parameters() {
        let got =
            |p, path| matches(p, path).map(|v| v.into_iter().map(|(_, v)| v).collect::<Vec<_>>());
        assert_eq!(
            got("/v1/units/{name}", "/v1/units/web"),
            Some(vec!["web".to_string()])
        );
        assert_eq!(got("/v1/units/{name}", "/v1/units/"), None);
        assert_eq!(got("/v1/units", "/v1/units/web"), None);
        assert_eq!(got("/v1/system", "/v1/system"), Some(vec![]));
        assert_eq!(
            got(
                "/v1/images/{reference}",
                "/v1/images/docker.io%2Flibrary%2Fbusybox:1"
            ),
            Some(vec!["docker.io/library/busybox:1".to_string()])
        );
        assert_eq!(got("/v1/images/{reference}", "/v1/images/%zz"), None);
    }

    #[test]
    fn every_route_is_unique_and_versioned() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(r.pattern.starts_with("/v1/"), "{}", r.pattern);
            assert!(
                seen.insert((r.method, r.pattern)),
                "{} {}",
                r.method,
                r.pattern
            );
        }
    }

    #[test]
    fn reads_the_slot_from_the_kernel_command_line() {
        assert_eq!(slot_of("ro berth.slot=B quiet").as_deref(), Some("B"));
        assert_eq!(slot_of("ro quiet"), None);
        assert_eq!(slot_of("berth.slot="), None);
    }
}
