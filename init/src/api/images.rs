//! `/v1/images`: the image store. Listing, showing and untagging go through the
//! `berth_store` library (small reads and one index update); pulls and the space
//! reclaiming after a removal run as `berth-runtime image` child processes ([`super::jobs`]),
//! so PID 1 never waits on a registry or a big directory tree.

use serde::{Deserialize, Serialize};

use berth_store::registry::Reference;
use berth_store::{Error as ImageError, Image, Store};

use super::context::{param, ApiContext, Params, Reply};
use super::http::{Request, Response};
use super::jobs::{JobError, JobKind};

fn open(ctx: &ApiContext<'_>) -> Result<Store, Reply> {
    Store::open(ctx.jobs.store()).map_err(|e| image_error(&e))
}

fn image_error(e: &ImageError) -> Reply {
    let (code, error) = match e {
        ImageError::NotFound(_) => (404, "unknown image"),
        ImageError::Reference(_) => (400, "bad image reference"),
        ImageError::InUse { .. } => (409, "image in use"),
        _ => (500, "image store"),
    };
    Response::error(code, error, &e.to_string()).into()
}

pub fn list(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let store = match open(ctx) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match store.list() {
        Ok(images) => Response::json(200, &images).into(),
        Err(e) => image_error(&e),
    }
}

#[derive(Serialize)]
struct ImageBody<'a> {
    reference: &'a str,
    id: String,
    digest: String,
    size: u64,
    layers: usize,
    entrypoint: &'a Option<Vec<String>>,
    cmd: &'a Option<Vec<String>>,
    env: &'a Option<Vec<String>>,
    user: &'a str,
    created: &'a Option<String>,
}

/// The store and the image `{reference}` names.
fn resolve(params: &Params, ctx: &ApiContext<'_>) -> Result<(Store, Image), Reply> {
    let store = open(ctx)?;
    let image = store
        .resolve(param(params, "reference"))
        .map_err(|e| image_error(&e))?;
    Ok((store, image))
}

pub fn show(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let image = match resolve(params, ctx) {
        Ok((_, image)) => image,
        Err(r) => return r,
    };
    let c = &image.config.config;
    Response::json(
        200,
        &ImageBody {
            reference: &image.reference,
            id: image.id().to_string(),
            digest: image.manifest_digest.to_string(),
            size: image.size(),
            layers: image.layers.len(),
            entrypoint: &c.entrypoint,
            cmd: &c.cmd,
            env: &c.env,
            user: &c.user,
            created: &image.config.created,
        },
    )
    .into()
}

/// `DELETE /v1/images/{reference}`: refused while a container holds the image; otherwise the
/// reference goes at once and a prune job frees what nothing uses any more.
pub fn remove(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let (store, image) = match resolve(params, ctx) {
        Ok(found) => found,
        Err(r) => return r,
    };
    let users: Vec<String> = match store.leases() {
        Ok(leases) => leases
            .into_iter()
            .filter(|(_, d)| d.as_ref() == Some(&image.manifest_digest))
            .map(|(c, _)| c)
            .collect(),
        Err(e) => return image_error(&e),
    };
    if !users.is_empty() {
        return image_error(&ImageError::InUse {
            reference: image.reference,
            containers: users.join(", "),
        });
    }
    if let Err(e) = store.untag(&image.reference) {
        return image_error(&e);
    }
    let prune = match ctx.jobs.prune(ctx.reactor) {
        Ok(job) => Some(job.id),
        Err(e) => {
            log::warn!(
                "image {}: removed; space not reclaimed yet: {e}",
                image.reference
            );
            None
        }
    };
    Response::json(
        200,
        &serde_json::json!({ "removed": image.reference, "prune_job": prune }),
    )
    .into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullBody {
    reference: String,
}

/// `POST /v1/images/pull` with `{"reference": "..."}`: starts a pull job (`202`).
pub fn pull(req: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let body: PullBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return bad_json(&e),
    };
    let reference = match Reference::parse(&body.reference) {
        Ok(r) => r,
        Err(e) => return Response::error(400, "bad image reference", &e.to_string()).into(),
    };
    match ctx.jobs.pull(&reference, ctx.reactor) {
        Ok(job) => Response::json(202, job).into(),
        Err(e @ JobError::Busy) => Response::error(503, "busy", &e.to_string()).into(),
        Err(e) => Response::error(500, "cannot start the pull", &e.to_string()).into(),
    }
}

/// `400` for a JSON body that does not parse, naming line and column.
pub fn bad_json(e: &serde_json::Error) -> Reply {
    // serde_json's message names line and column.
    Response::error(400, "bad JSON", &e.to_string()).into()
}

/// Image jobs (pulls and prunes; updates are under `/v1/update/jobs`).
pub fn jobs(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    Response::json(200, &ctx.jobs.list_of(false)).into()
}

/// The image job `{id}`.
fn image_job(params: &Params, ctx: &ApiContext<'_>) -> Option<u64> {
    param(params, "id")
        .parse()
        .ok()
        .and_then(|id| ctx.jobs.get(id))
        .filter(|j| j.kind != JobKind::Update)
        .map(|j| j.id)
}

pub fn job(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    match image_job(params, ctx).and_then(|id| ctx.jobs.get(id)) {
        Some(job) => Response::json(200, job).into(),
        None => Response::error(404, "unknown job", param(params, "id")).into(),
    }
}

/// `DELETE /v1/images/jobs/{id}`: kills a running job (`200`, the job now `cancelled`);
/// `409` when it has finished already.
pub fn cancel_job(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let id = param(params, "id");
    match image_job(params, ctx).and_then(|id| ctx.jobs.cancel(id)) {
        Some(Ok(job)) => Response::json(200, job).into(),
        Some(Err(e)) => Response::error(409, "job finished", &e.to_string()).into(),
        None => Response::error(404, "unknown job", id).into(),
    }
}
