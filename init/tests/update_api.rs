//! The update API against `berth-init --root-dir` with a stand-in for `berth-init
//! update-apply` (`$BERTH_UPDATER`, a shell script that hashes what it reads on stdin):
//! a bundle streamed in the request body reaches the update byte for byte while berth-init's
//! memory stays flat, a client that goes mid-body leaves the update with a truncated bundle,
//! an update that dies early is answered with its error, one update runs at a time, other
//! routes keep their body limit, and berthctl applies, follows and cancels updates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{temp_dir, Host, DEADLINE};
use serde_json::Value;

/// The stand-in update program. A streamed bundle (`-`) is hashed and counted: the hash goes
/// to `sum`, a count other than `expect` fails like a truncated bundle. `mode` = `die` makes
/// it read a little and fail, `stall` read nothing until the file `go` exists. A named source `slow:…` runs until killed, `fail:…` fails,
/// anything else succeeds. Its arguments go to `args`.
const UPDATER: &str = r#"#!/bin/sh
dir=@DIR@
echo "$@" > "$dir/args.tmp" && mv "$dir/args.tmp" "$dir/args"
case "$2" in
-)
    if [ "$(cat "$dir/mode" 2>/dev/null)" = die ]; then
        head -c 1000 > /dev/null
        echo "berth-init update-apply: bundle signature: no trusted key signed it" >&2
        exit 1
    fi
    if [ "$(cat "$dir/mode" 2>/dev/null)" = stall ]; then
        # Reads nothing until the test says go (a minute at most).
        i=0
        while [ ! -e "$dir/go" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    echo '{"phase":"root","done":0,"total":1}'
    sum=$(dd bs=65536 2> "$dir/dd.log" | sha256sum | cut -d' ' -f1)
    n=$(sed -n 's/^\([0-9]*\) bytes.*/\1/p' "$dir/dd.log")
    if [ "$n" != "$(cat "$dir/expect")" ]; then
        echo "berth-init update-apply: truncated bundle: $n bytes" >&2
        exit 1
    fi
    echo "$sum" > "$dir/sum"
    echo "{\"phase\":\"root\",\"done\":$n,\"total\":$n}"
    ;;
slow:*)
    echo '{"phase":"root","done":0,"total":100}'
    exec sleep 60
    ;;
fail:*)
    echo "berth-init update-apply: $2: registry said 404" >&2
    exit 1
    ;;
esac
echo '{"phase":"kernel","done":10,"total":10}'
echo '{"applied":{"slot":"B","version":"9.9.9","build_id":"fake","key":"test"}}'
"#;

/// berth-init in host mode whose update program is [`UPDATER`].
fn fake_host(tag: &str) -> Host {
    fake_host_in(temp_dir(tag))
}

fn fake_host_in(dir: PathBuf) -> Host {
    let updater = dir.join("updater");
    std::fs::write(
        &updater,
        UPDATER.replace("@DIR@", &dir.display().to_string()),
    )
    .unwrap();
    std::fs::set_permissions(&updater, std::fs::Permissions::from_mode(0o755)).unwrap();
    Host::start_with_env(dir, &[], &[("BERTH_UPDATER", &updater)])
}

/// A file of `len` pseudo-random bytes.
fn write_pattern(path: &Path, len: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// (status, JSON body) of a whole response on `s`. A reset after it counts as its end: a
/// server that closes with part of the body unread resets the connection.
fn answer(s: &mut UnixStream) -> (u16, Value) {
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn connect(host: &Host) -> UnixStream {
    let s = UnixStream::connect(host.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn stream_head(query: &str, len: u64) -> String {
    format!(
        "POST /v1/update{query} HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\n\r\n"
    )
}

/// `POST /v1/update{query}` with the file as its body (Content-Length).
fn post_file(host: &Host, query: &str, file: &Path) -> (u16, Value) {
    let len = std::fs::metadata(file).unwrap().len();
    let mut s = connect(host);
    s.write_all(stream_head(query, len).as_bytes()).unwrap();
    std::io::copy(&mut std::fs::File::open(file).unwrap(), &mut s).unwrap();
    answer(&mut s)
}

/// (status, JSON) of a small request.
fn call(host: &Host, method: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    host.request(&raw)
        .unwrap_or_else(|| panic!("{method} {path}: no answer\n{}", host.log()))
}

fn job(host: &Host, id: u64) -> Value {
    host.try_get(&format!("/v1/update/jobs/{id}"))
        .unwrap_or_else(|| panic!("no update job {id}"))
}

/// Waits until update job `id` is no longer running; returns it.
fn finished(host: &Host, id: u64) -> Value {
    host.wait_for(&format!("update job {id} to end"), || {
        job(host, id)["state"] != "running"
    });
    job(host, id)
}

fn only_job(host: &Host) -> Value {
    let jobs = host.try_get("/v1/update/jobs").unwrap();
    let list = jobs.as_array().unwrap();
    assert_eq!(list.len(), 1, "{jobs}");
    list[0].clone()
}

#[test]
fn a_streamed_bundle_reaches_the_update_byte_for_byte_in_bounded_memory() {
    let host = fake_host("update-stream");
    let bundle = host.dir.join("bundle");
    let size = 64usize << 20;
    write_pattern(&bundle, size);
    let want = sha256_of(&bundle);
    std::fs::write(host.dir.join("expect"), size.to_string()).unwrap();
    let before = peak_rss(host.pid);
    let start = Instant::now();
    let (status, started) = post_file(&host, "?allow_downgrade=1", &bundle);
    let took = start.elapsed();
    assert_eq!(status, 202, "{started}\n{}", host.log());
    assert_eq!(
        (started["kind"].as_str(), started["target"].as_str()),
        (Some("update"), Some("upload"))
    );
    let id = started["id"].as_u64().unwrap();
    let done = finished(&host, id);
    let after = peak_rss(host.pid);
    eprintln!(
        "64 MiB streamed in {:.2} s ({:.0} MiB/s); berth-init peak RSS {} KiB -> {} KiB",
        took.as_secs_f64(),
        64.0 / took.as_secs_f64(),
        before / 1024,
        after / 1024
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(host.read("sum").trim(), want);
    assert_eq!(host.read("args").trim(), "update-apply - --allow-downgrade");
    assert_eq!(done["uploaded"].as_u64(), Some(size as u64));
    assert_eq!(done["progress"]["phase"], "kernel");
    assert_eq!(done["progress"]["done"], 10);
    assert_eq!(done["applied"]["version"], "9.9.9");
    // Progress and result lines are not kept as output.
    assert_eq!(done["output"].as_array().map(Vec::len), Some(0), "{done}");
    // The body never sat in berth-init: its peak grew by a small fraction of it.
    assert!(
        after.saturating_sub(before) < 8 << 20,
        "peak RSS grew from {before} to {after} bytes for a {size}-byte body"
    );
    // Image jobs are listed apart.
    assert_eq!(host.try_get("/v1/images/jobs"), Some(serde_json::json!([])));
    let (status, _) = call(&host, "GET", &format!("/v1/images/jobs/{id}"), "x", "");
    assert_eq!(status, 404);

    // The same with chunked framing, in chunks of odd sizes, and a trailer.
    let small = host.dir.join("small");
    let len = (3 << 20) + 7;
    write_pattern(&small, len);
    std::fs::write(host.dir.join("expect"), len.to_string()).unwrap();
    let data = std::fs::read(&small).unwrap();
    let mut s = connect(&host);
    s.write_all(
        b"POST /v1/update/ HTTP/1.1\r\nHost: t\r\nContent-Type: Application/Octet-Stream\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    let sizes = [1usize, 4095, 65536, 100_000, 3];
    let mut at = 0;
    for i in 0.. {
        if at == data.len() {
            break;
        }
        let n = sizes[i % sizes.len()].min(data.len() - at);
        s.write_all(format!("{n:x};x=y\r\n").as_bytes()).unwrap();
        s.write_all(&data[at..at + n]).unwrap();
        s.write_all(b"\r\n").unwrap();
        at += n;
    }
    s.write_all(b"0\r\nX-Checksum: none\r\n\r\n").unwrap();
    let (status, started) = answer(&mut s);
    assert_eq!(status, 202, "{started}");
    let done = finished(&host, started["id"].as_u64().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(host.read("sum").trim(), sha256_of(&small));
    assert_eq!(host.read("args").trim(), "update-apply -");
}

#[test]
fn a_client_that_goes_mid_body_leaves_the_update_with_a_truncated_bundle() {
    let host = fake_host("update-gone");
    std::fs::write(host.dir.join("expect"), (64u64 << 20).to_string()).unwrap();
    let mut s = connect(&host);
    s.write_all(stream_head("", 64 << 20).as_bytes()).unwrap();
    s.write_all(&vec![7u8; 1 << 20]).unwrap();
    drop(s);
    let id = only_job(&host)["id"].as_u64().unwrap();
    let done = finished(&host, id);
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(
        done["error"].as_str(),
        Some("berth-init update-apply: truncated bundle: 1048576 bytes"),
        "{done}"
    );
    assert_eq!(done["uploaded"].as_u64(), Some(1 << 20));
    // Nothing is left open: the API answers and holds no connection.
    let (status, _) = call(&host, "GET", "/v1/system", "x", "");
    assert_eq!(status, 200);
}

#[test]
fn an_update_that_dies_early_is_answered_with_its_error() {
    let host = fake_host("update-dies");
    std::fs::write(host.dir.join("mode"), "die").unwrap();
    let mut s = connect(&host);
    let mut writer = s.try_clone().unwrap();
    // The client keeps sending until berth-init stops reading and closes.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(stream_head("", 256 << 20).as_bytes());
        let block = vec![1u8; 1 << 16];
        let mut sent = 0u64;
        while sent < 256 << 20 {
            if writer.write_all(&block).is_err() {
                return sent;
            }
            sent += block.len() as u64;
        }
        sent
    });
    let (status, v) = answer(&mut s);
    let sent = sender.join().unwrap();
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"], "update failed");
    assert_eq!(
        v["detail"],
        "berth-init update-apply: bundle signature: no trusted key signed it"
    );
    assert_eq!(v["job"]["state"], "failed");
    assert!(sent < 256 << 20, "the whole body was taken");
}

#[test]
fn one_update_at_a_time_and_named_sources_run_as_jobs() {
    let host = fake_host("update-one");
    std::fs::write(host.dir.join("expect"), "2000000").unwrap();
    // An upload in progress: the update waits for the rest of the body.
    let mut first = connect(&host);
    first
        .write_all(stream_head("", 2_000_000).as_bytes())
        .unwrap();
    first.write_all(&vec![3u8; 1_000_000]).unwrap();
    host.wait_for("the upload to reach the update", || {
        only_job(&host)["uploaded"].as_u64() == Some(1_000_000)
    });
    let json = r#"{"source": "https://example.invalid/b.bundle"}"#;
    let (status, v) = call(&host, "POST", "/v1/update", "application/json", json);
    assert_eq!(
        (status, v["error"].as_str()),
        (409, Some("an update is running"))
    );
    let mut second = connect(&host);
    second.write_all(stream_head("", 10).as_bytes()).unwrap();
    let (status, v) = answer(&mut second);
    assert_eq!(status, 409, "{v}");
    // Rolling back is refused here anyway (no A/B slots).
    let (status, _) = call(&host, "POST", "/v1/update/rollback", "x", "");
    assert_eq!(status, 409);
    first.write_all(&vec![3u8; 1_000_000]).unwrap();
    let (status, started) = answer(&mut first);
    assert_eq!(status, 202, "{started}");
    let done = finished(&host, started["id"].as_u64().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");

    // A source the machine fetches: passed on as it is.
    let json = r#"{"source": "oci://127.0.0.1:5000/berth/bundle:1", "allow_downgrade": true}"#;
    let (status, v) = call(&host, "POST", "/v1/update", "application/json", json);
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["target"], "oci://127.0.0.1:5000/berth/bundle:1");
    assert_eq!(v["reboot"], false);
    let done = finished(&host, v["id"].as_u64().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        host.read("args").trim(),
        "update-apply oci://127.0.0.1:5000/berth/bundle:1 --allow-downgrade"
    );
    let (status, v) = call(
        &host,
        "POST",
        "/v1/update",
        "application/json",
        r#"{"source": "fail:x"}"#,
    );
    assert_eq!(status, 202, "{v}");
    let done = finished(&host, v["id"].as_u64().unwrap());
    assert_eq!(
        done["error"],
        "berth-init update-apply: fail:x: registry said 404"
    );
    // Bad requests.
    for body in [
        r#"{"source": ""}"#,
        r#"{"source": "--keys=/tmp"}"#,
        r#"{"source": "-"}"#,
        r#"{"source": "x", "bogus": 1}"#,
        "not json",
    ] {
        let (status, v) = call(&host, "POST", "/v1/update", "application/json", body);
        assert_eq!(status, 400, "{body}: {v}");
    }
    // A running update is cancelled: its process group is killed.
    let (status, v) = call(
        &host,
        "POST",
        "/v1/update",
        "application/json",
        r#"{"source": "slow:x"}"#,
    );
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_u64().unwrap();
    let (status, v) = call(&host, "DELETE", &format!("/v1/update/jobs/{id}"), "x", "");
    assert_eq!(
        (status, v["state"].as_str()),
        (200, Some("cancelled")),
        "{v}"
    );
    host.wait_for("the cancelled update to go", || {
        common::children_of(host.pid).is_empty()
    });
    let (status, _) = call(&host, "DELETE", &format!("/v1/update/jobs/{id}"), "x", "");
    assert_eq!(status, 409);
    assert_eq!(
        host.try_get("/v1/update/jobs")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn other_routes_keep_their_body_limit() {
    let host = fake_host("update-limits");
    let big = berth_init::api::http::MAX_BODY + 1;
    for (method, path, content_type) in [
        ("PUT", "/v1/units/x", "application/toml"),
        ("POST", "/v1/update", "application/json"),
        ("POST", "/v1/update/rollback", "application/octet-stream"),
        ("POST", "/v1/images/pull", "application/octet-stream"),
    ] {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n\
             Content-Length: {big}\r\n\r\n"
        );
        let (status, v) = host.request(&raw).unwrap();
        assert_eq!(status, 413, "{method} {path} {content_type}: {v}");
    }
    // Chunked bodies stay refused elsewhere.
    let raw = "PUT /v1/units/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(host.request(raw).unwrap().0, 411);
    assert!(host
        .try_get("/v1/update/jobs")
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn updates_are_refused_without_an_update_program() {
    let host = Host::start("update-none", &[]);
    let json = r#"{"source": "https://example.invalid/b.bundle"}"#;
    let (status, v) = call(&host, "POST", "/v1/update", "application/json", json);
    assert_eq!(
        (status, v["error"].as_str()),
        (409, Some("no A/B slots")),
        "{v}"
    );
    // Refused on the head alone: answered and closed before any of the body is sent.
    let mut s = connect(&host);
    s.write_all(stream_head("", 5).as_bytes()).unwrap();
    assert_eq!(answer(&mut s).0, 409);
    let late = s.write_all(b"hello").map_err(|e| e.kind());
    assert_eq!(late, Err(std::io::ErrorKind::BrokenPipe));
    let (status, v) = call(
        &host,
        "POST",
        "/v1/update/rollback",
        "application/json",
        "{}",
    );
    assert_eq!(
        (status, v["error"].as_str()),
        (409, Some("no A/B slots")),
        "{v}"
    );
    assert_eq!(call(&host, "GET", "/v1/update/jobs/1", "x", "").0, 404);
}

#[test]
fn an_update_asking_for_a_reboot_reboots_once_it_succeeded() {
    let mut host = fake_host("update-reboot");
    let bundle = host.dir.join("bundle");
    write_pattern(&bundle, 100_000);
    std::fs::write(host.dir.join("expect"), "100000").unwrap();
    let (status, v) = post_file(&host, "?reboot=1", &bundle);
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["reboot"], true);
    // Host mode ends where PID 1 would reboot.
    assert_eq!(host.wait_exit(), Some(0));
    assert!(
        host.log().contains("update applied: shutting down"),
        "{}",
        host.log()
    );
}

fn ctl(host: &Host, args: &[&str]) -> Output {
    Command::new(common::berthctl_bin())
        .arg("--socket")
        .arg(host.socket())
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn berthctl_applies_follows_and_cancels_updates() {
    let host = fake_host("update-ctl");
    let bundle: PathBuf = host.dir.join("bundle.berth");
    write_pattern(&bundle, 5 << 20);
    std::fs::write(host.dir.join("expect"), (5u64 << 20).to_string()).unwrap();
    let b = bundle.to_str().unwrap();
    // A local file is streamed; plain lines (no terminal), the result at the end.
    let o = ctl(&host, &["update", "apply", b, "--allow-downgrade"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Berth 9.9.9 (build fake) applied to slot B; reboot to run it"),
        "{}",
        text(&o)
    );
    assert!(out.contains(": kernel 100%"), "{}", text(&o));
    assert_eq!(host.read("sum").trim(), sha256_of(&bundle));
    assert_eq!(host.read("args").trim(), "update-apply - --allow-downgrade");
    // --json: the finished job.
    let o = ctl(&host, &["--json", "update", "apply", b]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["uploaded"].as_u64()),
        (Some("succeeded"), Some(5 << 20))
    );
    // Not a local file: a source for the machine.
    let o = ctl(&host, &["update", "apply", "http://10.0.2.2:8080/x"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        host.read("args").trim(),
        "update-apply http://10.0.2.2:8080/x"
    );
    // Failures: exit 1 with the update's error.
    let o = ctl(&host, &["update", "apply", "fail:y"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("update failed: berth-init update-apply: fail:y: registry said 404"),
        "{}",
        text(&o)
    );
    std::fs::write(host.dir.join("mode"), "die").unwrap();
    let o = ctl(&host, &["update", "apply", b]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("update failed: berth-init update-apply: bundle signature"),
        "{}",
        text(&o)
    );
    // Rollback needs A/B slots.
    let o = ctl(&host, &["update", "rollback"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no A/B slots"),
        "{}",
        text(&o)
    );

    // Ctrl-C while following cancels the job.
    let mut child = Command::new(common::berthctl_bin())
        .arg("--socket")
        .arg(host.socket())
        .args(["update", "apply", "slow:z"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    host.wait_for("the slow update to run", || {
        host.try_get("/v1/update/jobs")
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|l| {
                l.iter()
                    .any(|j| j["target"] == "slow:z" && j["state"] == "running")
            })
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berthctl did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("update interrupted: job"), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    host.wait_for("the cancelled update to go", || {
        common::children_of(host.pid).is_empty()
    });
}

#[test]
fn berthctl_streams_a_bundle_over_mutual_tls() {
    let dir = temp_dir("update-tls");
    let tls = dir.join("state/tls");
    berth_qemu_tests::pki::Pki::create(&tls).unwrap();
    std::fs::write(
        dir.join("state/machine.toml"),
        "[api]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/server.crt\"\nkey = \"tls/server.key\"\n\
         client_ca = \"tls/ca.crt\"\n",
    )
    .unwrap();
    let host = fake_host_in(dir);
    let addr = host.try_get("/v1/system").unwrap()["remote_api"]
        .as_str()
        .unwrap_or_else(|| panic!("no remote API:\n{}", host.log()))
        .to_string();
    let remote = |args: &[&str]| {
        Command::new(common::berthctl_bin())
            .args(["--host", &addr])
            .arg("--ca")
            .arg(tls.join("ca.crt"))
            .arg("--cert")
            .arg(tls.join("client.crt"))
            .arg("--key")
            .arg(tls.join("client.key"))
            .args(args)
            .output()
            .unwrap()
    };
    let bundle = host.dir.join("bundle");
    let size = 24usize << 20;
    write_pattern(&bundle, size);
    std::fs::write(host.dir.join("expect"), size.to_string()).unwrap();
    let o = remote(&["update", "apply", bundle.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{}", text(&o), host.log());
    assert_eq!(host.read("sum").trim(), sha256_of(&bundle));
    // An update that stops reading early: its error still reaches the client over TCP.
    std::fs::write(host.dir.join("mode"), "die").unwrap();
    let o = remote(&["update", "apply", bundle.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bundle signature"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_stalled_update_stops_the_reading_of_the_body() {
    let host = fake_host("update-stall");
    std::fs::write(host.dir.join("mode"), "stall").unwrap();
    let size: u64 = 64 << 20;
    std::fs::write(host.dir.join("expect"), size.to_string()).unwrap();
    let before = peak_rss(host.pid);
    let mut s = connect(&host);
    let mut writer = s.try_clone().unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let sender = std::thread::spawn(move || {
        writer.write_all(stream_head("", size).as_bytes()).unwrap();
        let block = vec![5u8; 1 << 16];
        for _ in 0..size / block.len() as u64 {
            writer.write_all(&block).unwrap();
            counter.fetch_add(block.len() as u64, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // The pipe fills (the update reads nothing), then berth-init stops reading the socket:
    // what it took is bounded by the pipe, and the client is held back.
    host.wait_for("the pipe to fill", || {
        let jobs = host.try_get("/v1/update/jobs").unwrap_or_default();
        jobs[0]["uploaded"].as_u64().unwrap_or(0) >= 64 << 10
    });
    let max_pipe: u64 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .map_or(1 << 20, |t| t.trim().parse().unwrap());
    for _ in 0..100 {
        let uploaded = only_job(&host)["uploaded"].as_u64().unwrap();
        assert!(
            uploaded <= max_pipe,
            "{uploaded} bytes in a pipe of at most {max_pipe}"
        );
        assert!(sent.load(std::sync::atomic::Ordering::SeqCst) < size / 2);
    }
    assert!(peak_rss(host.pid).saturating_sub(before) < 8 << 20);
    // Going on: the whole body arrives, unchanged.
    std::fs::write(host.dir.join("go"), "").unwrap();
    sender.join().unwrap();
    let (status, v) = answer(&mut s);
    assert_eq!(status, 202, "{v}");
    let done = finished(&host, v["id"].as_u64().unwrap());
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["uploaded"].as_u64(), Some(size));
    assert!(peak_rss(host.pid).saturating_sub(before) < 8 << 20);
}
