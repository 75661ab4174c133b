//! Each berthctl command as API calls. Actions wait (bounded by `--timeout`) until the unit
//! or job has settled, so scripts can rely on the exit code.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{Client, Reply};
use crate::table::{cell, duration, human_size, pairs, table};
use crate::Options;
use berth_init::log::escape_control;
use berth_init::unit;

pub enum Failure {
    /// Wrong command line: usage is printed, exit code 2.
    Usage(String),
    /// The operation failed: the message is printed, exit code 1.
    Failed(String),
}

type Result<T = ()> = std::result::Result<T, Failure>;

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure::Failed(e.to_string())
}

/// How often a waiting command looks again.
const POLL: Duration = Duration::from_millis(100);

pub fn run(client: &Client, o: &Options) -> Result {
    let w: Vec<&str> = o.words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["status"] => status(client, o),
        ["units" | "ps"] => units(client, o),
        ["show", name] => show(client, o, name),
        [action @ ("start" | "stop" | "restart"), name] => act(client, o, action, name),
        ["apply", file] => apply(client, o, Path::new(file)),
        ["rm", name] => remove(client, o, name),
        ["logs", name] => logs(client, o, name),
        ["metrics"] => metrics(client, None),
        ["metrics", name] => metrics(client, Some(name)),
        ["image", "pull", reference] => image_pull(client, o, reference),
        ["image", "ls" | "list"] => image_list(client, o),
        ["image", "rm", reference] => image_remove(client, o, reference),
        ["update", "status"] => update_status(client, o),
        ["update", "apply", source] => update_apply(client, o, source),
        ["update", "rollback"] => update_rollback(client, o),
        [power @ ("reboot" | "poweroff")] => {
            let v = call(client, "POST", &format!("/v1/system/{power}"), None)?;
            print_or(o, &v, || format!("{power}: {}\n", cell(&v["detail"])));
            Ok(())
        }
        _ => Err(Failure::Usage(format!(
            "unknown command or wrong arguments: {}",
            o.words.join(" ")
        ))),
    }
}

/// A request whose answer must be 2xx; its JSON body.
fn call(client: &Client, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Result<Value> {
    let reply = client.request(method, path, body).map_err(failed)?;
    if reply.ok() {
        Ok(reply.json())
    } else {
        Err(api_error(&reply))
    }
}

fn api_error(reply: &Reply) -> Failure {
    let v = reply.json();
    match (v["error"].as_str(), v["detail"].as_str()) {
        (Some(e), Some(d)) if !d.is_empty() => failed(format!("{e}: {d}")),
        (Some(e), _) => failed(e),
        _ => failed(format!(
            "HTTP {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body).trim()
        )),
    }
}

fn print_or(o: &Options, v: &Value, human: impl FnOnce() -> String) {
    let text = if o.json {
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
    } else {
        human()
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// A path segment with `/`, `%`, `?`, `#` and spaces escaped.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'/' | b'%' | b'?' | b'#' | b' ' | b'&' | b'+' => out.push_str(&format!("%{b:02X}")),
            _ if b.is_ascii_graphic() => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn unit_path(name: &str) -> String {
    format!("/v1/units/{}", encode_segment(name))
}

fn timeout(o: &Options) -> Duration {
    Duration::from_secs(o.timeout.unwrap_or(60))
}

fn status(client: &Client, o: &Options) -> Result {
    let v = call(client, "GET", "/v1/system", None)?;
    print_or(o, &v, || {
        let u = &v["units"];
        pairs(&[
            ("version", cell(&v["version"])),
            ("mode", cell(&v["mode"])),
            ("hostname", cell(&v["hostname"])),
            ("slot", cell(&v["slot"])),
            ("boot id", cell(&v["boot_id"])),
            (
                "uptime",
                duration(v["uptime_seconds"].as_f64().unwrap_or(0.0)),
            ),
            (
                "boot time",
                v["boot_duration_seconds"]
                    .as_f64()
                    .map_or("-".into(), duration),
            ),
            (
                "units",
                format!(
                    "{} ({} running, {} failed)",
                    u["total"], u["running"], u["failed"]
                ),
            ),
            ("remote API", cell(&v["remote_api"])),
            ("extensions", extension_names(&v["extensions"])),
        ])
    });
    Ok(())
}

/// `containerd, hello` from `/v1/system`'s extensions; `-` when there are none.
fn extension_names(v: &Value) -> String {
    let names: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    match names.is_empty() {
        true => "-".into(),
        false => names.join(", "),
    }
}

fn units(client: &Client, o: &Options) -> Result {
    let v = call(client, "GET", "/v1/units", None)?;
    print_or(o, &v, || {
        let rows: Vec<Vec<String>> = v
            .as_array()
            .map(|units| {
                units
                    .iter()
                    .map(|u| {
                        vec![
                            cell(&u["name"]),
                            cell(&u["kind"]),
                            cell(&u["state"]),
                            cell(&u["health"]),
                            cell(&u["pid"]),
                            cell(&u["restarts"]),
                            cell(&u["detail"]),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(
            &[
                "NAME", "KIND", "STATE", "HEALTH", "PID", "RESTARTS", "DETAIL",
            ],
            &rows,
        )
    });
    Ok(())
}

fn describe_unit(u: &Value) -> String {
    let mut items = Vec::new();
    for key in [
        "name",
        "description",
        "kind",
        "state",
        "detail",
        "health",
        "pid",
        "restarts",
        "last_exit",
        "log_dropped",
        "error",
        "critical",
        "after",
        "requires",
        "path",
    ] {
        items.push((key, cell(&u[key])));
    }
    pairs(&items)
}

fn show(client: &Client, o: &Options, name: &str) -> Result {
    let v = call(client, "GET", &unit_path(name), None)?;
    print_or(o, &v, || describe_unit(&v));
    Ok(())
}

/// Polls the unit until `settled` holds; fails after the timeout.
fn wait_unit(
    client: &Client,
    o: &Options,
    name: &str,
    what: &str,
    settled: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let start = Instant::now();
    loop {
        let v = call(client, "GET", &unit_path(name), None)?;
        if settled(&v) {
            return Ok(v);
        }
        if start.elapsed() >= timeout(o) {
            return Err(failed(format!(
                "unit {name}: still {} after {}s waiting for it to {what}",
                cell(&v["state"]),
                timeout(o).as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
}

fn state_in(v: &Value, states: &[&str]) -> bool {
    v["state"].as_str().is_some_and(|s| states.contains(&s))
}

/// The unit as the outcome of an action: a failed unit fails the command.
fn report_unit(o: &Options, v: &Value) -> Result {
    print_or(o, v, || {
        let pid = v["pid"]
            .as_i64()
            .map_or(String::new(), |p| format!(" (pid {p})"));
        let detail = v["detail"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map_or(String::new(), |d| format!(": {d}"));
        format!("{}: {}{pid}{detail}\n", cell(&v["name"]), cell(&v["state"]))
    });
    if state_in(v, &["failed"]) {
        return Err(failed(format!(
            "unit {} failed: {}",
            cell(&v["name"]),
            cell(&v["error"])
        )));
    }
    Ok(())
}

const UP: [&str; 4] = ["running", "healthy", "exited", "failed"];

/// The unit as the outcome of a start: it failed, or it exited without success (a start that
/// failed and waits to be retried, a program that exits with an error) fails the command.
fn report_started(o: &Options, v: &Value) -> Result {
    report_unit(o, v)?;
    let unsuccessful = v["last_exit_code"].as_i64().is_some_and(|c| c != 0);
    if state_in(v, &["exited"]) && (unsuccessful || !v["error"].is_null()) {
        let why = v["error"]
            .as_str()
            .or(v["last_exit"].as_str())
            .unwrap_or("exited without success");
        return Err(failed(format!(
            "unit {} did not start: {}",
            cell(&v["name"]),
            escape_control(why)
        )));
    }
    Ok(())
}

fn act(client: &Client, o: &Options, action: &str, name: &str) -> Result {
    let before = call(
        client,
        "POST",
        &format!("{}/{action}", unit_path(name)),
        None,
    )?;
    if o.no_wait {
        return report_unit(o, &before);
    }
    let old_pid = before["pid"].as_i64();
    let v = match action {
        "stop" => wait_unit(client, o, name, "stop", |v| {
            v["pid"].is_null() && !state_in(v, &["stopping"])
        })?,
        "restart" => wait_unit(client, o, name, "restart", |v| {
            (state_in(v, &["running", "healthy"]) && v["pid"].as_i64() != old_pid)
                || state_in(v, &["exited", "failed"])
        })?,
        _ => wait_unit(client, o, name, "start", |v| state_in(v, &UP))?,
    };
    if action == "stop" {
        report_unit(o, &v)
    } else {
        report_started(o, &v)
    }
}

fn apply(client: &Client, o: &Options, file: &Path) -> Result {
    let name = unit::name_of(file);
    let text = std::fs::read(file).map_err(|e| failed(format!("{}: {e}", file.display())))?;
    let query = if o.no_start { "" } else { "?start=1" };
    let reply = client
        .request(
            "PUT",
            &format!("{}{query}", unit_path(&name)),
            Some(("application/toml", &text)),
        )
        .map_err(failed)?;
    if !reply.ok() {
        let v = reply.json();
        if let Some(list) = v["diagnostics"].as_array() {
            // The server names its own copy; point at the file given instead.
            for d in list {
                let key = d["key"]
                    .as_str()
                    .filter(|k| !k.is_empty())
                    .map_or(String::new(), |k| format!("key `{k}`: "));
                let line = format!(
                    "{}:{}:{}: {key}{}",
                    file.display(),
                    d["line"],
                    d["column"],
                    cell(&d["message"])
                );
                eprintln!("{}", escape_control(&line));
            }
            return Err(failed(""));
        }
        return Err(api_error(&reply));
    }
    let created = reply.status == 201;
    if !o.json {
        println!(
            "unit {name}: {}",
            if created { "created" } else { "replaced" }
        );
    }
    if o.no_start || o.no_wait {
        return report_unit(o, &reply.json());
    }
    let v = wait_unit(client, o, &name, "start", |v| state_in(v, &UP))?;
    report_started(o, &v)
}

fn remove(client: &Client, o: &Options, name: &str) -> Result {
    let v = call(client, "DELETE", &unit_path(name), None)?;
    if !o.no_wait {
        let start = Instant::now();
        loop {
            let reply = client
                .request("GET", &unit_path(name), None)
                .map_err(failed)?;
            if reply.status == 404 {
                break;
            }
            if start.elapsed() >= timeout(o) {
                return Err(failed(format!(
                    "unit {name}: not gone after {}s (state {})",
                    timeout(o).as_secs(),
                    cell(&reply.json()["state"])
                )));
            }
            std::thread::sleep(POLL);
        }
    }
    print_or(o, &v, || format!("unit {name}: removed\n"));
    Ok(())
}

fn logs(client: &Client, o: &Options, name: &str) -> Result {
    let mut query = Vec::new();
    if let Some(n) = &o.tail {
        query.push(format!("tail={}", encode_segment(n)));
    }
    if o.follow {
        query.push("follow=1".to_string());
    }
    let path = format!("{}/logs?{}", unit_path(name), query.join("&"));
    let mut out = std::io::stdout().lock();
    if !o.follow {
        let reply = client.request("GET", &path, None).map_err(failed)?;
        if !reply.ok() {
            return Err(api_error(&reply));
        }
        let _ = out.write_all(&reply.body);
        return Ok(());
    }
    let mut sink = |data: &[u8]| {
        let _ = out.write_all(data);
        let _ = out.flush();
    };
    match client.stream(&path, &mut sink).map_err(failed)? {
        Some(reply) if !reply.ok() => Err(api_error(&reply)),
        _ => Ok(()),
    }
}

/// The Prometheus text of `/v1/metrics`; with a unit, only that unit's samples.
fn metrics(client: &Client, unit: Option<&str>) -> Result {
    let reply = client.request("GET", "/v1/metrics", None).map_err(failed)?;
    if !reply.ok() {
        return Err(api_error(&reply));
    }
    let text = String::from_utf8_lossy(&reply.body);
    let label = unit.map(|u| format!("unit=\"{}\"", u.replace('\\', "\\\\").replace('"', "\\\"")));
    let mut out = std::io::stdout().lock();
    let mut printed = false;
    for line in text.lines() {
        if label
            .as_ref()
            .is_none_or(|l| !line.starts_with('#') && line.contains(l.as_str()))
        {
            let _ = writeln!(out, "{line}");
            printed = true;
        }
    }
    match unit {
        // Every unit has its lines: none means no such unit.
        Some(u) if !printed => Err(failed(format!("unknown unit: {}", escape_control(u)))),
        _ => Ok(()),
    }
}

/// Index in `now` of the first line not already in `seen` (the job keeps a window of lines).
fn first_new(seen: &[String], now: &[String]) -> usize {
    (0..=seen.len().min(now.len()))
        .rev()
        .find(|&k| seen[seen.len() - k..] == now[..k])
        .unwrap_or(0)
}

/// SIGINT and SIGTERM held back while blocked, taken by [`Interrupts::wait`] instead of
/// killing berthctl: a command can then undo what it started (cancel its job).
struct Interrupts {
    set: nix::sys::signal::SigSet,
}

impl Interrupts {
    fn block() -> Result<Interrupts> {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block()
            .map_err(|e| failed(format!("cannot block signals: {e}")))?;
        Ok(Interrupts { set })
    }

    /// Waits up to `d`; true when an interrupt arrived (now or before).
    fn wait(&self, d: Duration) -> bool {
        let timeout = libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        // SAFETY: a valid signal set and timespec; no siginfo wanted.
        let n = unsafe { libc::sigtimedwait(self.set.as_ref(), std::ptr::null_mut(), &timeout) };
        n > 0
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        let _ = self.set.thread_unblock();
    }
}

fn image_pull(client: &Client, o: &Options, reference: &str) -> Result {
    let body = json!({ "reference": reference }).to_string();
    // From before the job exists: a Ctrl-C during the request still cancels it.
    let interrupts = (!o.no_wait).then(Interrupts::block).transpose()?;
    let job = call(
        client,
        "POST",
        "/v1/images/pull",
        Some(("application/json", body.as_bytes())),
    )?;
    let id = job["id"].as_u64().unwrap_or(0);
    let Some(interrupts) = interrupts else {
        print_or(o, &job, || format!("pull job {id} started\n"));
        return Ok(());
    };
    let start = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    let mut wait = Duration::ZERO;
    loop {
        if interrupts.wait(wait) {
            let job = call(client, "DELETE", &format!("/v1/images/jobs/{id}"), None)?;
            print_or(o, &job, String::new);
            return Err(failed(format!(
                "pull of {reference} interrupted: job {id} {}",
                cell(&job["state"])
            )));
        }
        wait = POLL * 2;
        let job = call(client, "GET", &format!("/v1/images/jobs/{id}"), None)?;
        let lines: Vec<String> = job["output"]
            .as_array()
            .map(|l| l.iter().map(cell).collect())
            .unwrap_or_default();
        if !o.json {
            for line in &lines[first_new(&seen, &lines)..] {
                println!("{}", escape_control(line));
            }
        }
        seen = lines;
        match job["state"].as_str() {
            Some("running") if start.elapsed() < timeout(o) => {}
            Some("running") => {
                return Err(failed(format!(
                    "pull of {reference} still running after {}s (job {id})",
                    timeout(o).as_secs()
                )))
            }
            Some("succeeded") => {
                print_or(o, &job, String::new);
                return Ok(());
            }
            _ => {
                if o.json {
                    print_or(o, &job, String::new);
                }
                return Err(failed(format!(
                    "pull of {reference} failed: {}",
                    cell(&job["error"])
                )));
            }
        }
    }
}

fn image_list(client: &Client, o: &Options) -> Result {
    let v = call(client, "GET", "/v1/images", None)?;
    print_or(o, &v, || {
        let rows: Vec<Vec<String>> = v
            .as_array()
            .map(|images| {
                images
                    .iter()
                    .map(|i| {
                        let id = cell(&i["id"]);
                        let short = id.trim_start_matches("sha256:").chars().take(12).collect();
                        vec![
                            cell(&i["reference"]),
                            short,
                            human_size(i["size"].as_u64().unwrap_or(0)),
                            cell(&i["created"]),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(&["REFERENCE", "IMAGE ID", "SIZE", "CREATED"], &rows)
    });
    Ok(())
}

/// The rows of `berthctl update status`: one per slot.
pub fn update_rows(v: &Value) -> Vec<Vec<String>> {
    let flag = |b: &Value, text: &str| {
        if b.as_bool() == Some(true) {
            text.to_string()
        } else {
            String::new()
        }
    };
    v["slots"]
        .as_array()
        .map(|slots| {
            slots
                .iter()
                .map(|s| {
                    let state = match s["attempts_left"].as_u64() {
                        Some(n) => format!("{} ({n} attempts left)", cell(&s["state"])),
                        None => cell(&s["state"]),
                    };
                    vec![
                        cell(&s["slot"]),
                        state,
                        cell(&s["version"]),
                        cell(&s["build_id"]),
                        flag(&s["booted"], "booted"),
                        flag(&s["next"], "next"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One line per retired slot: which version failed and why.
pub fn update_failures(v: &Value) -> String {
    let mut out = String::new();
    for s in v["slots"].as_array().into_iter().flatten() {
        let f = &s["failure"];
        if f.is_object() {
            out.push_str(&format!(
                "slot {} ({}) failed: {}\n",
                cell(&s["slot"]),
                cell(&f["version"]),
                cell(&f["reason"])
            ));
        }
    }
    out
}

fn update_status(client: &Client, o: &Options) -> Result {
    let v = call(client, "GET", "/v1/update", None)?;
    print_or(o, &v, || {
        let mut out = table(
            &["SLOT", "STATE", "VERSION", "BUILD", "RUNNING", "BOOTS NEXT"],
            &update_rows(&v),
        );
        out.push_str(&update_failures(&v));
        out
    });
    Ok(())
}

/// How long `update apply` follows its job by default.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(3600);

/// `update apply FILE|URL|REF`: a file on this machine is streamed as the request body;
/// anything else is a source the Berth machine fetches (URL, registry reference, or a path
/// on it). Then follows the job until it ends; Ctrl-C cancels it.
fn update_apply(client: &Client, o: &Options, source: &str) -> Result {
    let interrupts = Interrupts::block()?;
    let bar = Bar::new(!o.json && std::io::stderr().is_terminal());
    let local = Path::new(source);
    let job = if local.is_file() {
        upload_bundle(client, o, local, &interrupts, &bar)?
    } else {
        let body = json!({ "source": source, "allow_downgrade": o.allow_downgrade,
            "reboot": o.reboot })
        .to_string();
        call(
            client,
            "POST",
            "/v1/update",
            Some(("application/json", body.as_bytes())),
        )?
    };
    let id = job["id"].as_u64().unwrap_or(0);
    if o.no_wait {
        print_or(o, &job, || {
            format!(
                "update job {id} started
"
            )
        });
        return Ok(());
    }
    follow_update(client, o, id, &interrupts, &bar)
}

/// Streams the bundle file as the body of `POST /v1/update`; the job it started.
fn upload_bundle(
    client: &Client,
    o: &Options,
    file: &Path,
    interrupts: &Interrupts,
    bar: &Bar,
) -> Result<Value> {
    let open_err = |e: std::io::Error| failed(format!("{}: {e}", file.display()));
    let mut f = std::fs::File::open(file).map_err(open_err)?;
    let len = f.metadata().map_err(open_err)?.len();
    let mut query = Vec::new();
    if o.reboot {
        query.push("reboot=1");
    }
    if o.allow_downgrade {
        query.push("allow_downgrade=1");
    }
    let path = if query.is_empty() {
        "/v1/update".to_string()
    } else {
        format!("/v1/update?{}", query.join("&"))
    };
    let mut stopped = false;
    let mut sent = |done: u64| {
        bar.show("upload", done, len);
        stopped = interrupts.wait(Duration::ZERO);
        !stopped
    };
    let reply = client.request_streaming(
        "POST",
        &path,
        "application/octet-stream",
        &mut f,
        len,
        &mut sent,
    );
    bar.clear();
    let reply = match reply {
        Ok(r) => r,
        // The server sees the body end early: the update reads a truncated bundle and stops.
        Err(e) if e.interrupted() || stopped => {
            return Err(failed(format!(
                "update interrupted while sending {}",
                file.display()
            )))
        }
        Err(e) => return Err(failed(e)),
    };
    if !reply.ok() {
        if o.json {
            print_or(o, &reply.json(), String::new);
        }
        return Err(api_error(&reply));
    }
    Ok(reply.json())
}

/// Polls update job `id` until it ends, with its progress (a bar on a terminal, lines
/// otherwise); Ctrl-C cancels it.
fn follow_update(
    client: &Client,
    o: &Options,
    id: u64,
    interrupts: &Interrupts,
    bar: &Bar,
) -> Result {
    let limit = o.timeout.map_or(UPDATE_TIMEOUT, Duration::from_secs);
    let start = Instant::now();
    let mut wait = Duration::ZERO;
    let mut seen: Vec<String> = Vec::new();
    let mut last_step: Option<(String, u64)> = None;
    let mut almost_done = false;
    let path = format!("/v1/update/jobs/{id}");
    loop {
        if interrupts.wait(wait) {
            bar.clear();
            let job = call(client, "DELETE", &path, None)?;
            print_or(o, &job, String::new);
            return Err(failed(format!(
                "update interrupted: job {id} {}",
                cell(&job["state"])
            )));
        }
        wait = POLL * 2;
        let job = match client.request("GET", &path, None) {
            Ok(reply) if reply.ok() => reply.json(),
            Ok(reply) => return Err(api_error(&reply)),
            // Rebooting into the update takes the API down with it.
            Err(_) if o.reboot && almost_done => {
                bar.clear();
                if !o.json {
                    println!("update job {id}: applied; the machine is rebooting");
                }
                return Ok(());
            }
            Err(e) => return Err(failed(e)),
        };
        let p = &job["progress"];
        if let (Some(phase), Some(done), Some(total)) =
            (p["phase"].as_str(), p["done"].as_u64(), p["total"].as_u64())
        {
            almost_done = phase == "kernel" && done >= total;
            if bar.on {
                bar.show(phase, done, total);
            } else if !o.json {
                // Plain lines: one per phase and tenth.
                let step = (phase.to_string(), done.saturating_mul(10) / total.max(1));
                if last_step.as_ref() != Some(&step) {
                    println!(
                        "update job {id}: {phase} {}% ({} of {})",
                        step.1 * 10,
                        human_size(done),
                        human_size(total)
                    );
                    last_step = Some(step);
                }
            }
        }
        let lines: Vec<String> = job["output"]
            .as_array()
            .map(|l| l.iter().map(cell).collect())
            .unwrap_or_default();
        if !o.json {
            let new = &lines[first_new(&seen, &lines)..];
            if !new.is_empty() {
                bar.clear();
            }
            for line in new {
                eprintln!("{}", escape_control(line));
            }
        }
        seen = lines;
        match job["state"].as_str() {
            Some("running") if start.elapsed() < limit => {}
            Some("running") => {
                bar.clear();
                return Err(failed(format!(
                    "update still running after {}s (job {id})",
                    limit.as_secs()
                )));
            }
            Some("succeeded") => {
                bar.clear();
                let a = &job["applied"];
                print_or(o, &job, || {
                    let reboot = if o.reboot {
                        "; rebooting into it"
                    } else {
                        "; reboot to run it"
                    };
                    format!(
                        "update job {id}: Berth {} (build {}) applied to slot {}{reboot}\n",
                        cell(&a["version"]),
                        cell(&a["build_id"]),
                        cell(&a["slot"])
                    )
                });
                return Ok(());
            }
            _ => {
                bar.clear();
                if o.json {
                    print_or(o, &job, String::new);
                }
                return Err(failed(format!("update failed: {}", cell(&job["error"]))));
            }
        }
    }
}

/// A one-line progress bar on stderr (only on a terminal).
struct Bar {
    on: bool,
}

impl Bar {
    fn new(on: bool) -> Bar {
        Bar { on }
    }

    fn show(&self, what: &str, done: u64, total: u64) {
        if !self.on {
            return;
        }
        const WIDTH: u64 = 30;
        let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(0);
        let pct = (done.min(total) * 100).checked_div(total).unwrap_or(0);
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{what:<7} [{bar}] {pct:>3}% {} of {}",
            human_size(done),
            human_size(total)
        );
        let _ = err.flush();
    }

    fn clear(&self) {
        if self.on {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// `update rollback`: the other slot boots next (when it is good).
fn update_rollback(client: &Client, o: &Options) -> Result {
    let body = json!({ "reboot": o.reboot }).to_string();
    let v = call(
        client,
        "POST",
        "/v1/update/rollback",
        Some(("application/json", body.as_bytes())),
    )?;
    print_or(o, &v, || {
        let next = cell(&v["next"]);
        let what = if v["changed"].as_bool() == Some(true) {
            format!("slot {next} boots next")
        } else {
            format!("slot {next} boots next already")
        };
        if v["rebooting"].as_bool() == Some(true) {
            format!("{what}; rebooting\n")
        } else {
            format!("{what}\n")
        }
    });
    Ok(())
}

fn image_remove(client: &Client, o: &Options, reference: &str) -> Result {
    let path = format!("/v1/images/{}", encode_segment(reference));
    let v = call(client, "DELETE", &path, None)?;
    print_or(o, &v, || format!("removed {}\n", cell(&v["removed"])));
    Ok(())
}

/// Validates every file; prints each error as `file:line:column: key `k`: message`. With
/// `cache`, writes the unit cache of the files there when every one is valid.
pub fn check(files: &[String], cache: Option<&str>) -> ExitCode {
    if files.is_empty() {
        eprintln!(
            "berthctl: check needs at least one unit file\n{}",
            crate::USAGE
        );
        return ExitCode::from(2);
    }
    let mut ok = true;
    let mut compiled = unit::cache::UnitCache::default();
    for file in files {
        // One read: the cache keys each unit by the text it was validated from.
        match unit::load_file_with_text(Path::new(file)) {
            Ok((text, u)) => {
                compiled.insert(&text, &u);
                let line = format!(
                    "{file}: ok ({} unit `{}`)",
                    if u.is_system() { "system" } else { "container" },
                    u.name
                );
                println!("{}", escape_control(&line));
            }
            Err(errors) => {
                ok = false;
                // One line per error; what a file name or value holds cannot add lines.
                for e in &errors.0 {
                    eprintln!("{}", escape_control(&e.to_string()));
                }
            }
        }
    }
    if !ok {
        return ExitCode::FAILURE;
    }
    if let Some(path) = cache {
        if let Err(e) = compiled.write(Path::new(path)) {
            eprintln!("{}", escape_control(&format!("berthctl: {path}: {e}")));
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists_extension_names() {
        let v = json!([{"name": "containerd", "size": 4096}, {"name": "hello", "size": 8192}]);
        assert_eq!(extension_names(&v), "containerd, hello");
        assert_eq!(extension_names(&json!([])), "-");
        assert_eq!(extension_names(&Value::Null), "-");
    }

    #[test]
    fn update_status_rows_show_state_attempts_and_flags() {
        let v = json!({"booted": "A", "next": "B", "slots": [
            {"slot": "A", "state": "good", "attempts_left": null, "version": "0.1.0",
             "build_id": "abc", "booted": true, "next": false},
            {"slot": "B", "state": "new", "attempts_left": 3, "version": "0.1.1",
             "build_id": "def", "booted": false, "next": true}]});
        let rows = update_rows(&v);
        assert_eq!(rows[0], ["A", "good", "0.1.0", "abc", "booted", ""]);
        assert_eq!(
            rows[1],
            ["B", "new (3 attempts left)", "0.1.1", "def", "", "next"]
        );
        assert_eq!(update_failures(&v), "");
        let v = json!({"booted": "A", "next": "A", "slots": [
            {"slot": "A", "state": "good", "failure": null},
            {"slot": "B", "state": "retired",
             "failure": {"version": "0.1.1", "reason": "critical units not healthy within 60s: web"}}]});
        assert_eq!(
            update_failures(&v),
            "slot B (0.1.1) failed: critical units not healthy within 60s: web\n"
        );
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(
            encode_segment("127.0.0.1:5000/app:1"),
            "127.0.0.1:5000%2Fapp:1"
        );
        assert_eq!(
            berth_init::api::http::percent_decode(&encode_segment("a b%/?#&+é")).as_deref(),
            Some("a b%/?#&+é")
        );
    }

    #[test]
    fn finds_where_new_job_lines_start() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(first_new(&s(&[]), &s(&["a"])), 0);
        assert_eq!(first_new(&s(&["a", "b"]), &s(&["a", "b", "c"])), 2);
        assert_eq!(first_new(&s(&["a", "b", "c"]), &s(&["b", "c", "d"])), 2);
        assert_eq!(first_new(&s(&["x"]), &s(&["y"])), 0);
    }
}
