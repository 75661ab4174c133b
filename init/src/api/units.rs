//! `/v1/units`: list and show units, install or replace one from TOML, remove one, and
//! start, stop or restart it.
//!
//! An uploaded unit is validated before anything changes; errors name line, column and key.
//! A valid one is written atomically into the user units directory and handed to the
//! supervisor. Actions answer `202 Accepted` with the unit's state at once: stopping and
//! starting go on in the event loop (clients poll `GET /v1/units/{name}`).

use std::path::Path;

use log::warn;

use super::context::{param, ApiContext, Params, Reply};
use super::http::{Request, Response};
use crate::supervisor::{ActionError, InstallError, Installed, Removed};
use crate::tomlfile::Diagnostics;
use crate::unit::{self, value, Loaded};

pub fn list(_: &Request, _: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    Response::json(200, &ctx.supervisor.statuses()).into()
}

pub fn show(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let name = param(params, "name");
    status(200, name, ctx)
}

fn status(code: u16, name: &str, ctx: &ApiContext<'_>) -> Reply {
    match ctx.supervisor.status(name) {
        Some(s) => Response::json(code, &s).into(),
        None => unknown(name),
    }
}

fn unknown(name: &str) -> Reply {
    Response::error(404, "unknown unit", name).into()
}

/// `400` with every validation error, also as a list of `{file, line, column, key, message}`.
pub fn invalid_unit(d: &Diagnostics) -> Response {
    Response::json(
        400,
        &serde_json::json!({
            "error": "invalid unit",
            "detail": d.to_string(),
            "diagnostics": d.0,
        }),
    )
}

/// `PUT /v1/units/{name}[?start=1]` with the unit file as body.
pub fn install(req: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let name = param(params, "name");
    if !value::is_name(name) {
        let detail = format!("`{name}`: letters, digits, `-`, `_` and `.` only");
        return Response::error(400, "invalid unit name", &detail).into();
    }
    if req.body.len() as u64 > unit::MAX_UNIT_FILE {
        let detail = format!("a unit file has at most {} bytes", unit::MAX_UNIT_FILE);
        return Response::error(413, "unit file too large", &detail).into();
    }
    let Ok(text) = std::str::from_utf8(&req.body) else {
        return Response::error(400, "invalid unit", "the unit file is not UTF-8").into();
    };
    let Some(dir) = ctx.paths.unit_dirs.last() else {
        return Response::error(500, "no unit directory", "").into();
    };
    let path = dir.join(format!("{name}.toml"));
    let unit = match unit::parse(name, &path.display().to_string(), text) {
        Ok(u) => u,
        Err(d) => return invalid_unit(&d).into(),
    };
    let loaded = Loaded {
        name: name.to_string(),
        path: path.clone(),
        unit: Ok(unit),
    };
    if let Err(e) = ctx.supervisor.check_install(&loaded) {
        return install_error(&e).into();
    }
    if let Err(e) = berth_store::fsutil::write_atomic(&path, text.as_bytes()) {
        let detail = format!("{}: {e}", path.display());
        return Response::error(500, "cannot write the unit file", &detail).into();
    }
    let start = req.flag("start");
    match ctx.supervisor.install(loaded, start, ctx.now, ctx.reactor) {
        Ok(Installed::Added) => status(201, name, ctx),
        Ok(Installed::Replaced) => status(200, name, ctx),
        Err(e) => install_error(&e).into(),
    }
}

fn install_error(e: &InstallError) -> Response {
    let (code, error) = match e {
        InstallError::ShuttingDown => (409, "shutting down"),
        InstallError::Invalid(_) => (400, "invalid unit"),
        InstallError::Unsupported => (422, "unsupported unit"),
        InstallError::Cycle(_) => (409, "dependency cycle"),
    };
    Response::error(code, error, &e.to_string())
}

fn action_error(e: &ActionError) -> Reply {
    match e {
        ActionError::Unknown(name) => unknown(name),
        ActionError::Unrunnable { .. } => {
            Response::error(409, "unit cannot run", &e.to_string()).into()
        }
        ActionError::ShuttingDown => Response::error(409, "shutting down", "").into(),
        ActionError::Removing(_) => {
            Response::error(409, "unit being removed", &e.to_string()).into()
        }
    }
}

type Action = fn(
    &mut crate::supervisor::Supervisor,
    &str,
    std::time::Instant,
    &mut dyn crate::event::Reactor,
) -> Result<(), ActionError>;

fn act(params: &Params, ctx: &mut ApiContext<'_>, action: Action) -> Reply {
    let name = param(params, "name");
    match action(ctx.supervisor, name, ctx.now, ctx.reactor) {
        Ok(()) => status(202, name, ctx),
        Err(e) => action_error(&e),
    }
}

pub fn start(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    act(params, ctx, crate::supervisor::Supervisor::request_start)
}

pub fn stop(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    act(params, ctx, crate::supervisor::Supervisor::request_stop)
}

pub fn restart(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    act(params, ctx, crate::supervisor::Supervisor::request_restart)
}

/// True when `path` is in the user units directory (the last one), not built into the image.
fn is_user_unit(path: &Path, ctx: &ApiContext<'_>) -> bool {
    ctx.paths
        .unit_dirs
        .last()
        .is_some_and(|dir| path.parent() == Some(dir.as_path()))
}

/// `DELETE /v1/units/{name}`: the unit file goes first (unlinked, the directory synced), then
/// the unit is stopped and forgotten. In the other order a stop or crash in between would
/// bring the unit back at the next start, and the API would already deny a unit whose file
/// is still there.
pub fn remove(_: &Request, params: &Params, ctx: &mut ApiContext<'_>) -> Reply {
    let name = param(params, "name");
    let Some(path) = ctx.supervisor.unit_path(name) else {
        return unknown(name);
    };
    let path = Path::new(path).to_path_buf();
    if !is_user_unit(&path, ctx) {
        let detail = format!(
            "{} is part of the system image; stop it instead",
            path.display()
        );
        return Response::error(409, "built-in unit", &detail).into();
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            let detail = format!("{}: {e}", path.display());
            return Response::error(500, "cannot remove unit file", &detail).into();
        }
    }
    if let Some(dir) = path.parent() {
        if let Err(e) = berth_store::fsutil::fsync_dir(dir) {
            warn!("unit {name}: cannot sync {}: {e}", dir.display());
        }
    }
    match ctx.supervisor.remove_unit(name, ctx.now, ctx.reactor) {
        Ok(()) => {
            Response::json(202, &serde_json::json!({ "name": name, "removing": true })).into()
        }
        Err(e) => action_error(&e),
    }
}

/// A removal completed (its file went before it began): a built-in unit of that name,
/// overridden until now, takes its place.
pub fn finish_removal(removed: &Removed, ctx: &mut ApiContext<'_>) {
    let dirs = &ctx.paths.unit_dirs;
    let builtin = dirs[..dirs.len().saturating_sub(1)]
        .iter()
        .rev()
        .map(|d| d.join(format!("{}.toml", removed.name)))
        .find(|p| p.is_file());
    if let Some(file) = builtin {
        let loaded = Loaded {
            name: removed.name.clone(),
            unit: unit::load_file(&file),
            path: file,
        };
        if let Err(e) = ctx.supervisor.install(loaded, true, ctx.now, ctx.reactor) {
            warn!("unit {}: built-in unit not restored: {e}", removed.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::context::SystemInfo;
    use crate::api::http::{percent_decode, Request};
    use crate::api::jobs::Jobs;
    use crate::boot::{Mode, Paths};
    use crate::event::{Key, Timer};
    use crate::launch::cgroup::NoCgroups;
    use crate::launch::process::ProcessLauncher;
    use crate::supervisor::Supervisor;
    use crate::unit_logs::LogPolicy;
    use proptest::prelude::*;
    use std::os::fd::BorrowedFd;

    struct NoLoop;
    impl crate::event::Reactor for NoLoop {
        fn watch(&mut self, _: BorrowedFd<'_>, _: Key, _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn unwatch(&mut self, _: BorrowedFd<'_>) {}
        fn schedule(&mut self, _: std::time::Instant, _: Timer) {}
    }

    /// Uploads `body` as unit `name` (percent-encoded, as in a path; never started) and returns
    /// the status.
    fn upload(dir: &std::path::Path, name: &str, body: &[u8]) -> u16 {
        let paths = Paths::for_mode(&Mode::Host {
            root: dir.to_path_buf(),
        });
        std::fs::create_dir_all(&paths.unit_dirs[0]).unwrap();
        let launchers: Vec<Box<dyn crate::launch::Launcher>> =
            vec![Box::new(ProcessLauncher::new(Box::new(NoCgroups)))];
        let mut sup = Supervisor::new(vec![], launchers, LogPolicy::new(paths.logs.clone()));
        let mut jobs = Jobs::new("/nonexistent".into(), dir, dir);
        let system = SystemInfo::new("test", "host", "h".into());
        let mut power = None;
        let mut ctx = ApiContext {
            supervisor: &mut sup,
            reactor: &mut NoLoop,
            system: &system,
            paths: &paths,
            jobs: &mut jobs,
            power: &mut power,
            now: std::time::Instant::now(),
        };
        let req = Request {
            method: "PUT".into(),
            path: format!("/v1/units/{name}"),
            query: String::new(),
            headers: vec![],
            body: body.to_vec(),
        };
        let params = vec![("name", percent_decode(name).unwrap())];
        match install(&req, &params, &mut ctx) {
            Reply::Full(r) => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                if r.status >= 400 {
                    assert!(v["error"].is_string() && v["detail"].is_string(), "{v}");
                }
                r.status
            }
            Reply::Log(_) => panic!("an upload does not stream"),
        }
    }

    /// TOML-ish unit text: real sections and keys with values of any type.
    fn unit_text() -> impl Strategy<Value = String> {
        let section = prop::sample::select(vec![
            "[unit]",
            "[container]",
            "[resources]",
            "[service]",
            "[health]",
            "[bogus]",
            "[[unit]]",
        ]);
        let key = prop::sample::select(vec![
            "description",
            "after",
            "requires",
            "critical",
            "image",
            "command",
            "env",
            "user",
            "network",
            "ports",
            "volumes",
            "read_only",
            "privileged",
            "pid",
            "memory_max",
            "cpu_max",
            "pids_max",
            "restart",
            "restart_delay",
            "stop_signal",
            "stop_timeout",
            "exec",
            "interval",
            "retries",
            "nope",
        ]);
        let value = prop_oneof![
            Just("\"x\"".to_string()),
            Just("[\"sleep\", \"1\"]".to_string()),
            Just("[]".to_string()),
            Just("{ A = \"b\" }".to_string()),
            Just("-1".to_string()),
            Just("1e999".to_string()),
            Just("\"64Q\"".to_string()),
            Just("\"8080:80/tcp\"".to_string()),
            Just("true".to_string()),
            "[ -~]{0,12}".prop_map(|s| format!("\"{}\"", s.replace(['"', '\\'], ""))),
            "[ -~]{0,8}",
        ];
        prop::collection::vec((section, prop::collection::vec((key, value), 0..4)), 0..5).prop_map(
            |sections| {
                sections
                    .into_iter()
                    .map(|(s, kvs)| {
                        let body: Vec<String> =
                            kvs.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                        format!("{s}\n{}\n", body.join("\n"))
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn unit_uploads_never_panic(text in unit_text(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let dir = std::env::temp_dir().join(format!("berth-upload-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            // 422: a valid unit no launcher here runs (an image-backed unit: this supervisor
            // has only the process launcher).
            let status = upload(&dir, "u", text.as_bytes());
            prop_assert!([201, 400, 422].contains(&status), "{status} for {text:?}");
            let status = upload(&dir, "u", &bytes);
            prop_assert!([201, 400, 422].contains(&status), "{status}");
            let status = upload(&dir, "a%2Fb", text.as_bytes());
            prop_assert_eq!(status, 400);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn a_valid_upload_is_written_and_an_invalid_one_is_not() {
        let dir = std::env::temp_dir().join(format!("berth-upload-ok-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let good = b"[container]\ncommand = [\"sleep\", \"1\"]\n";
        assert_eq!(upload(&dir, "good", good), 201);
        assert_eq!(std::fs::read(dir.join("units/good.toml")).unwrap(), good);
        assert_eq!(upload(&dir, "bad", b"[container]\ncommand = 1\n"), 400);
        assert!(!dir.join("units/bad.toml").exists());
        // Valid, but nothing here can run an image: refused and not written.
        assert_eq!(upload(&dir, "img", b"[container]\nimage = \"x\"\n"), 422);
        assert!(!dir.join("units/img.toml").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
