//! `/v1/update`: the A/B update status of the machine.

use super::http::{Request, Response};
use super::routes::{ApiContext, Params, Reply};
use crate::update::machine::{status_of_this_machine, MachineError};

/// `GET /v1/update`: both slots (version, build id, state, booted, next). `409` when
/// berth-init did not boot from a Berth disk (host mode, a test's namespaces).
pub fn status(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    if ctx.system.mode != "pid1" || ctx.system.slot.is_none() {
        return not_berth();
    }
    match status_of_this_machine() {
        Ok(s) => Response::json(200, &s).into(),
        Err(MachineError::NotBerth) => not_berth(),
        Err(e) => Response::error(500, "update status", &e.to_string()).into(),
    }
}

fn not_berth() -> Reply {
    Response::error(409, "no A/B slots", &MachineError::NotBerth.to_string()).into()
}
