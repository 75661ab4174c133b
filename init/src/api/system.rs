//! `/v1/system`: facts about the running system, reboot and poweroff.

use serde::Serialize;

use super::context::{ApiContext, Params, Reply};
use super::http::{Request, Response};
use crate::boot::extensions::MountedExtension;
use crate::shutdown::PowerAction;
use crate::supervisor::State;

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
    extensions: &'a [MountedExtension],
}

#[derive(Serialize, Default)]
struct UnitCounts {
    total: usize,
    running: usize,
    failed: usize,
}

pub fn get(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
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
            extensions: &sys.extensions,
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

pub fn reboot(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    power(ctx, PowerAction::Reboot, "reboot")
}

pub fn poweroff(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    power(ctx, PowerAction::Poweroff, "poweroff")
}
