//! `GET /v1/units/{name}/logs[?tail=N][&follow=1]`: a unit's captured output, newest last,
//! streamed from a [`LogCursor`] as the socket drains (see [`super::log_cursor`]).

use super::context::{param, ApiContext, Params, Reply};
use super::http::{Request, Response};
use super::log_cursor::LogCursor;

pub fn get(req: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let name = param(params, "name");
    if !ctx.supervisor.contains(name) {
        return Response::error(404, "unknown unit", name).into();
    }
    let lines = match req.query_param("tail") {
        None | Some("all") => None,
        Some(n) => match n.parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => {
                let detail = format!("tail={n}: a number of lines, or `all`");
                return Response::error(400, "bad query", &detail).into();
            }
        },
    };
    let follow = req.flag("follow");
    match LogCursor::open(ctx.supervisor.log_policy(), name, lines, follow) {
        Ok(cursor) => Reply::Log(Box::new(cursor)),
        Err(e) => Response::error(500, "cannot read the log", &e.to_string()).into(),
    }
}
