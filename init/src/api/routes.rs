//! The route table of the control API: `(method, pattern, handler)` rows under `/v1/`.
//! Patterns are literal segments and `{name}` parameters. New endpoints are new rows.

use std::time::Instant;

use serde::Serialize;

use super::http::{Request, Response};
use crate::event::Reactor;
use crate::supervisor::{State, Supervisor};

/// Facts about the running system for `/v1/system`.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub version: &'static str,
    /// `pid1` or `host`.
    pub mode: &'static str,
    pub started: Instant,
    pub hostname: String,
}

/// What a handler can see and change.
pub struct ApiContext<'a> {
    pub supervisor: &'a mut Supervisor,
    pub reactor: &'a mut dyn Reactor,
    pub system: &'a SystemInfo,
    pub now: Instant,
}

pub type Params<'p> = Vec<(&'static str, &'p str)>;
type Handler = fn(&Request, &Params<'_>, &mut ApiContext<'_>) -> Response;

pub struct Route {
    pub method: &'static str,
    pub pattern: &'static str,
    handler: Handler,
}

/// Every endpoint of the API.
pub const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        pattern: "/v1/system",
        handler: system,
    },
    Route {
        method: "GET",
        pattern: "/v1/units",
        handler: units,
    },
    Route {
        method: "GET",
        pattern: "/v1/units/{name}",
        handler: unit,
    },
];

/// Matches `path` against `pattern`, returning the `{param}` values.
fn matches<'p>(pattern: &'static str, path: &'p str) -> Option<Params<'p>> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(g)) if p.starts_with('{') && p.ends_with('}') && !g.is_empty() => {
                params.push((p.trim_start_matches('{').trim_end_matches('}'), g));
            }
            (Some(p), Some(g)) if p == g => {}
            _ => return None,
        }
    }
}

pub fn dispatch(req: &Request, ctx: &mut ApiContext<'_>) -> Response {
    let path = if req.path.len() > 1 {
        req.path.trim_end_matches('/')
    } else {
        &req.path
    };
    let mut path_known = false;
    for route in ROUTES {
        if let Some(params) = matches(route.pattern, path) {
            path_known = true;
            if route.method == req.method {
                return (route.handler)(req, &params, ctx);
            }
        }
    }
    if path_known {
        Response::error(
            405,
            "method not allowed",
            &format!("{} {}", req.method, req.path),
        )
    } else {
        Response::error(404, "no such endpoint", &req.path)
    }
}

fn param<'p>(params: &Params<'p>, name: &str) -> &'p str {
    params
        .iter()
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| *v)
}

#[derive(Serialize)]
struct SystemBody<'a> {
    version: &'a str,
    mode: &'a str,
    hostname: &'a str,
    uptime_seconds: f64,
    units: UnitCounts,
}

#[derive(Serialize, Default)]
struct UnitCounts {
    total: usize,
    running: usize,
    failed: usize,
}

fn system(_: &Request, _: &Params<'_>, ctx: &mut ApiContext<'_>) -> Response {
    let mut counts = UnitCounts::default();
    for s in ctx.supervisor.statuses() {
        counts.total += 1;
        match s.state {
            State::Running | State::Healthy => counts.running += 1,
            State::Failed => counts.failed += 1,
            _ => {}
        }
    }
    Response::json(
        200,
        &SystemBody {
            version: ctx.system.version,
            mode: ctx.system.mode,
            hostname: &ctx.system.hostname,
            uptime_seconds: ctx
                .now
                .saturating_duration_since(ctx.system.started)
                .as_secs_f64(),
            units: counts,
        },
    )
}

fn units(_: &Request, _: &Params<'_>, ctx: &mut ApiContext<'_>) -> Response {
    Response::json(200, &ctx.supervisor.statuses())
}

fn unit(_: &Request, params: &Params<'_>, ctx: &mut ApiContext<'_>) -> Response {
    let name = param(params, "name");
    match ctx.supervisor.status(name) {
        Some(s) => Response::json(200, &s),
        None => Response::error(404, "unknown unit", name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_bind_parameters() {
        assert_eq!(
            matches("/v1/units/{name}", "/v1/units/web"),
            Some(vec![("name", "web")])
        );
        assert_eq!(matches("/v1/units/{name}", "/v1/units/"), None);
        assert_eq!(matches("/v1/units", "/v1/units/web"), None);
        assert_eq!(matches("/v1/system", "/v1/system"), Some(vec![]));
    }
}
