//! `/v1/update`: the A/B update status of the machine, applying a bundle as a job (from a
//! source the machine fetches, or streamed in the request body), following and cancelling
//! that job, and rolling back to the other slot.
//!
//! Updates run as `berth-init update-apply SOURCE` child processes ([`super::jobs`]), one at a
//! time. A bundle in the body (`Content-Type: application/octet-stream`) is streamed into the
//! child's stdin by the connection ([`super::upload`]), never buffered or stored.

use serde::Deserialize;

use super::context::{param, ApiContext, Params, Reply};
use super::http::{Request, Response};
use super::images::bad_json;
use super::jobs::{Job, JobError, JobKind, JobState, UpdateSource};
use crate::shutdown::PowerAction;
use crate::update::machine::{status_of_this_machine, MachineError};
use crate::update::rollback::{rollback_this_machine, RollbackError};

/// Longest `source` accepted.
const MAX_SOURCE: usize = 4096;

/// `GET /v1/update`: both slots (version, build id, state, booted, next). `409` when
/// berth-init did not boot from a Berth disk (host mode, a test's namespaces).
pub fn status(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    if !on_berth_disk(ctx) {
        return not_berth().into();
    }
    match status_of_this_machine() {
        Ok(s) => Response::json(200, &s).into(),
        Err(MachineError::NotBerth) => not_berth().into(),
        Err(e @ MachineError::UpdateWriting) => {
            Response::error(409, "update in progress", &e.to_string()).into()
        }
        Err(e) => Response::error(500, "update status", &e.to_string()).into(),
    }
}

fn on_berth_disk(ctx: &ApiContext<'_>) -> bool {
    ctx.system.mode == "pid1" && ctx.system.slot.is_some()
}

fn not_berth() -> Response {
    Response::error(409, "no A/B slots", &MachineError::NotBerth.to_string())
}

/// Updates can run: PID 1 on a Berth disk, or a host-mode berth-init given a stand-in
/// update program (`$BERTH_UPDATER`, for development and tests).
fn available(ctx: &ApiContext<'_>) -> Result<(), Response> {
    let pid1_elsewhere = ctx.system.mode == "pid1" && ctx.system.slot.is_none();
    if !ctx.jobs.has_updater() || pid1_elsewhere {
        return Err(not_berth());
    }
    Ok(())
}

fn job_error(e: &JobError) -> Response {
    match e {
        JobError::UpdateRunning(_) => Response::error(409, "an update is running", &e.to_string()),
        JobError::NoUpdater => not_berth(),
        _ => Response::error(500, "cannot start the update", &e.to_string()),
    }
}

/// A request that streams the bundle in its body: `POST /v1/update` with
/// `Content-Type: application/octet-stream`. Decided on the head alone.
pub fn is_upload(req: &Request) -> bool {
    let path = req.path.trim_end_matches('/');
    let media = req
        .header("content-type")
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    req.method == "POST"
        && path == "/v1/update"
        && media.is_some_and(|m| m.eq_ignore_ascii_case("application/octet-stream"))
}

/// Starts the update job of an upload (`?allow_downgrade=1`, `?reboot=1`): its id and the
/// write end of its stdin. The answer comes once the body is consumed.
pub fn start_upload(
    req: &Request,
    ctx: &mut ApiContext<'_>,
) -> Result<(u64, std::os::fd::OwnedFd), Response> {
    available(ctx)?;
    let allow = req.flag("allow_downgrade");
    let reboot = req.flag("reboot");
    match ctx
        .jobs
        .start_update(UpdateSource::Upload, allow, reboot, ctx.reactor)
    {
        Ok((job, Some(pipe))) => Ok((job.id, pipe)),
        Ok((job, None)) => Err(Response::error(
            500,
            "cannot start the update",
            &format!("job {} has no input", job.id),
        )),
        Err(e) => Err(job_error(&e)),
    }
}

/// The answer to an upload whose body is consumed: `202` with the job while it runs or once
/// it succeeded, its error when it failed.
pub fn upload_answer(job: Option<&Job>) -> Response {
    match job {
        Some(j) if matches!(j.state, JobState::Running | JobState::Succeeded) => {
            Response::json(202, j)
        }
        Some(j) => failed(j, j.error.as_deref().unwrap_or("")),
        None => Response::error(500, "update failed", "the job is gone"),
    }
}

/// `422` with the update's error and the job.
pub fn failed(job: &Job, detail: &str) -> Response {
    Response::json(
        422,
        &serde_json::json!({ "error": "update failed", "detail": detail, "job": job }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    source: String,
    #[serde(default)]
    allow_downgrade: bool,
    #[serde(default)]
    reboot: bool,
}

/// `POST /v1/update` with `{"source": ..., "allow_downgrade": bool, "reboot": bool}`: starts
/// an update job on a source the machine fetches (URL, registry reference, path on the
/// machine), `202` with the job; `409` while another update runs.
pub fn start(req: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    if let Err(resp) = available(ctx) {
        return resp.into();
    }
    let body: UpdateBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return bad_json(&e),
    };
    let source = body.source.trim();
    let problem = if source.is_empty() {
        Some("empty".to_string())
    } else if source.len() > MAX_SOURCE {
        Some(format!("longer than {MAX_SOURCE} bytes"))
    } else if source.starts_with('-') {
        // It would read as an option of update-apply (`-` is stdin: send the body instead).
        Some("starts with `-`".to_string())
    } else if source.chars().any(char::is_control) {
        Some("holds control characters".to_string())
    } else {
        None
    };
    if let Some(p) = problem {
        return Response::error(400, "bad update source", &format!("source {p}")).into();
    }
    match ctx.jobs.start_update(
        UpdateSource::Named(source),
        body.allow_downgrade,
        body.reboot,
        ctx.reactor,
    ) {
        Ok((job, _)) => Response::json(202, job).into(),
        Err(e) => job_error(&e).into(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    reboot: bool,
}

/// `POST /v1/update/rollback` (optional `{"reboot": true}` or `?reboot=1`): the other slot
/// boots next when it holds a good system; `409` with the reason otherwise, or while an
/// update runs.
pub fn rollback(req: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    if !on_berth_disk(ctx) {
        return not_berth().into();
    }
    let body: RollbackBody = if req.body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(e) => return bad_json(&e),
        }
    };
    let reboot = body.reboot || req.flag("reboot");
    if let Some(id) = ctx.jobs.running_update() {
        let detail = format!("update job {id} is running; cancel it or wait for it");
        return Response::error(409, "an update is running", &detail).into();
    }
    match rollback_this_machine() {
        Ok(done) => {
            let rebooting = reboot && !ctx.supervisor.shutting_down() && ctx.power.is_none();
            if rebooting {
                *ctx.power = Some(PowerAction::Reboot);
            }
            Response::json(
                200,
                &serde_json::json!({ "next": done.next, "changed": done.changed,
                    "rebooting": rebooting }),
            )
            .into()
        }
        Err(RollbackError::Machine(MachineError::NotBerth)) => not_berth().into(),
        Err(e @ (RollbackError::NotGood { .. } | RollbackError::Busy)) => {
            Response::error(409, "cannot roll back", &e.to_string()).into()
        }
        Err(e) => Response::error(500, "rollback", &e.to_string()).into(),
    }
}

/// The update job `{id}`, or a 404 answer.
fn update_job<'j>(params: &Params, ctx: &'j ApiContext<'_>) -> Result<&'j Job, Reply> {
    let id = param(params, "id");
    id.parse()
        .ok()
        .and_then(|id| ctx.jobs.get(id))
        .filter(|j| j.kind == JobKind::Update)
        .ok_or_else(|| Response::error(404, "unknown update job", id).into())
}

pub fn jobs(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    Response::json(200, &ctx.jobs.list_of(true)).into()
}

pub fn job(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    match update_job(params, ctx) {
        Ok(job) => Response::json(200, job).into(),
        Err(r) => r,
    }
}

/// `DELETE /v1/update/jobs/{id}`: kills a running update (`200`, now `cancelled`); the
/// running slot keeps booting next (a slot half written is never bootable). `409` once
/// finished.
pub fn cancel_job(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let id = match update_job(params, ctx) {
        Ok(job) => job.id,
        Err(r) => return r,
    };
    match ctx.jobs.cancel(id) {
        Some(Ok(job)) => Response::json(200, job).into(),
        Some(Err(e)) => Response::error(409, "job finished", &e.to_string()).into(),
        None => Response::error(404, "unknown update job", &id.to_string()).into(),
    }
}
