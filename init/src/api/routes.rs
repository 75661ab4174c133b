//! The route table of the control API: `(method, pattern, handler)` rows under `/v1/`.
//! Patterns are literal segments and `{name}` parameters (percent-decoded). New endpoints are
//! new rows; `init/openapi.yaml` documents every row (a test keeps the two in step).
//!
//! Layout: `/v1/system` (facts, reboot, poweroff), `/v1/metrics`, `/v1/units/...`,
//! `/v1/images/...`, `/v1/update/...` (A/B update status, apply, jobs, rollback). A bundle
//! streamed in the body of `POST /v1/update` is taken before dispatch (see
//! [`super::update::is_upload`]): the table sees only requests with their whole body.

use super::context::{ApiContext, Params, Reply};
use super::http::{percent_decode, Request, Response};
use super::{images, logs, metrics, system, units, update};

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
    route("GET", "/v1/system", system::get),
    route("POST", "/v1/system/reboot", system::reboot),
    route("POST", "/v1/system/poweroff", system::poweroff),
    route("GET", "/v1/metrics", metrics::get),
    route("GET", "/v1/units", units::list),
    route("GET", "/v1/units/{name}", units::show),
    route("PUT", "/v1/units/{name}", units::install),
    route("DELETE", "/v1/units/{name}", units::remove),
    route("POST", "/v1/units/{name}/start", units::start),
    route("POST", "/v1/units/{name}/stop", units::stop),
    route("POST", "/v1/units/{name}/restart", units::restart),
    route("GET", "/v1/units/{name}/logs", logs::get),
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
}
