//! The control API through its real unix socket, against `berth-init --root-dir`: every
//! endpoint, its errors, log streaming, metrics, images, power, and robustness against slow
//! and greedy clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{new_umoci_image, raw, run, temp_dir, Host, DEADLINE};
use serde_json::Value;

const SLEEP: &str = "[container]\ncommand = [\"sleep\", \"300\"]\n";

/// (status, JSON body) of `method path` with an optional body.
fn call(host: &Host, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let (status, head, body) = raw(&host.socket(), &req);
    assert!(head.contains("Content-Type: application/json"), "{head}");
    (status, serde_json::from_slice(&body).unwrap())
}

fn text(host: &Host, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, _, body) = raw(&host.socket(), req.as_bytes());
    (status, String::from_utf8(body).unwrap())
}

fn error_of(v: &Value) -> (&str, &str) {
    (
        v["error"].as_str().unwrap_or_else(|| panic!("{v}")),
        v["detail"].as_str().unwrap_or_else(|| panic!("{v}")),
    )
}

fn pid(host: &Host, name: &str) -> Option<i64> {
    host.unit(name)["pid"].as_i64()
}

#[test]
fn units_are_installed_replaced_controlled_and_removed() {
    let host = Host::start(
        "api-units",
        &[("base", SLEEP), ("broken", "[container]\nbogus = 1\n")],
    );
    let file = host.dir.join("units/web.toml");
    let v1 = "[unit]\ndescription = \"v1\"\n[container]\ncommand = [\"sleep\", \"300\"]\n";
    let (status, unit) = call(&host, "PUT", "/v1/units/web?start=1", v1.as_bytes());
    assert_eq!(
        (status, unit["name"].as_str()),
        (201, Some("web")),
        "{unit}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), v1);
    host.wait_state("web", &["running"]);
    let first = pid(&host, "web");

    // Replacing a running unit stops the old process and starts the new definition.
    let v2 = v1.replace("v1", "v2");
    let (status, _) = call(&host, "PUT", "/v1/units/web", v2.as_bytes());
    assert_eq!(status, 200);
    host.wait_for("web v2 running", || {
        let u = host.unit("web");
        u["description"] == "v2" && u["state"] == "running" && u["pid"].as_i64() != first
    });

    // Invalid uploads change nothing and name line, column and key.
    let bad = "[container]\ncommand = [\"sleep\", \"1\"]\n[service]\nrestart = \"sometimes\"\n";
    let (status, err) = call(&host, "PUT", "/v1/units/web", bad.as_bytes());
    assert_eq!(status, 400, "{err}");
    assert_eq!(error_of(&err).0, "invalid unit");
    let d = &err["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64(), d["key"].as_str()),
        (Some(4), Some(11), Some("service.restart")),
        "{err}"
    );
    let (status, err) = call(&host, "PUT", "/v1/units/web", b"[container\n");
    assert_eq!(status, 400);
    assert!(error_of(&err).1.contains(":1:"), "{err}");
    let (status, _) = call(&host, "PUT", "/v1/units/web", &[0xff, 0xfe]);
    assert_eq!(status, 400);
    let huge = format!("# {}\n{SLEEP}", "x".repeat(300 * 1024));
    let (status, err) = call(&host, "PUT", "/v1/units/web", huge.as_bytes());
    assert_eq!((status, error_of(&err).0), (413, "unit file too large"));
    let (status, err) = call(&host, "PUT", "/v1/units/bad%20name", SLEEP.as_bytes());
    assert_eq!((status, error_of(&err).0), (400, "invalid unit name"));
    let cyclic = "[unit]\nrequires = [\"loop2\"]\n[container]\ncommand = [\"true\"]\n";
    assert_eq!(
        call(&host, "PUT", "/v1/units/loop1", cyclic.as_bytes()).0,
        201
    );
    let back = cyclic.replace("loop2", "loop1");
    let (status, err) = call(&host, "PUT", "/v1/units/loop2", back.as_bytes());
    assert_eq!(
        (status, error_of(&err).0),
        (409, "dependency cycle"),
        "{err}"
    );
    assert!(!host.dir.join("units/loop2.toml").exists());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), v2);
    assert_eq!(host.unit("web")["description"], "v2");

    // Actions answer 202 at once; the unit gets there in the loop.
    let (status, u) = call(&host, "POST", "/v1/units/web/stop", b"");
    assert_eq!((status, u["name"].as_str()), (202, Some("web")));
    host.wait_for("web stopped", || {
        let u = host.unit("web");
        u["state"] == "exited" && u["pid"].is_null()
    });
    assert_eq!(call(&host, "POST", "/v1/units/web/start", b"").0, 202);
    host.wait_state("web", &["running"]);
    let before = pid(&host, "web");
    assert_eq!(call(&host, "POST", "/v1/units/web/restart", b"").0, 202);
    host.wait_for("web restarted", || {
        host.state("web") == "running" && pid(&host, "web") != before
    });
    let (status, err) = call(&host, "POST", "/v1/units/broken/start", b"");
    assert_eq!((status, error_of(&err).0), (409, "unit cannot run"));
    for (method, path) in [
        ("POST", "/v1/units/nope/start"),
        ("POST", "/v1/units/nope/stop"),
        ("POST", "/v1/units/nope/restart"),
        ("DELETE", "/v1/units/nope"),
        ("GET", "/v1/units/nope"),
        ("GET", "/v1/units/nope/logs"),
    ] {
        let (status, err) = call(&host, method, path, b"");
        assert_eq!(
            (status, error_of(&err)),
            (404, ("unknown unit", "nope")),
            "{method} {path}"
        );
    }

    // Removal stops the unit, then forgets it and deletes its file.
    let web_pid = pid(&host, "web").unwrap() as i32;
    let (status, v) = call(&host, "DELETE", "/v1/units/web", b"");
    assert_eq!((status, v["removing"].as_bool()), (202, Some(true)));
    // The file is gone before the answer: a stop from here on cannot bring the unit back.
    assert!(!file.exists());
    host.wait_for("web gone", || {
        call(&host, "GET", "/v1/units/web", b"").0 == 404
    });
    assert!(!common::alive(web_pid));
    let names: Vec<String> = host
        .try_get("/v1/units")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["base", "broken", "loop1"]);
}

#[test]
fn http_errors_are_json_with_fitting_status_codes() {
    let host = Host::start("api-errors", &[("base", SLEEP)]);
    let socket = host.socket();
    let json = |req: &[u8]| {
        let (status, _, body) = raw(&socket, req);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].is_string() && v["detail"].is_string(), "{v}");
        (status, v)
    };
    assert_eq!(json(b"GET /v2/units HTTP/1.1\r\n\r\n").0, 404);
    let (status, v) = json(b"PATCH /v1/units/base HTTP/1.1\r\n\r\n");
    assert_eq!(status, 405);
    assert!(error_of(&v).1.contains("allowed: GET, PUT, DELETE"), "{v}");
    assert_eq!(json(b"\x01\x02 nonsense\r\n\r\n").0, 400);
    let big = format!(
        "PUT /v1/units/x HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        64 << 20
    );
    assert_eq!(json(big.as_bytes()).0, 413);
    assert_eq!(
        json(b"PUT /v1/units/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").0,
        411
    );
    let long_header = format!(
        "GET /v1/system HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(20000)
    );
    assert_eq!(json(long_header.as_bytes()).0, 431);
    let (status, v) = call(&host, "POST", "/v1/images/pull", b"{\"reference\": ");
    assert_eq!(status, 400);
    assert!(error_of(&v).1.contains("line 1"), "{v}");
    let (status, v) = call(&host, "POST", "/v1/images/pull", b"{\"ref\": \"x\"}");
    assert_eq!((status, error_of(&v).0), (400, "bad JSON"));
    let (status, v) = call(
        &host,
        "POST",
        "/v1/images/pull",
        b"{\"reference\": \"UPPER/Case\"}",
    );
    assert_eq!((status, error_of(&v).0), (400, "bad image reference"));
    let (status, _) = call(&host, "GET", "/v1/units/base/logs?tail=many", b"");
    assert_eq!(status, 400);
    assert_eq!(call(&host, "GET", "/v1/images/jobs/77", b"").0, 404);
    // A trailing slash is the same path.
    assert_eq!(call(&host, "GET", "/v1/units/", b"").0, 200);
}

#[test]
fn a_client_sending_expect_continue_gets_100_before_its_body() {
    let host = Host::start("api-continue", &[]);
    let mut s = UnixStream::connect(host.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "PUT /v1/units/late HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        SLEEP.len()
    )
    .unwrap();
    let mut buf = [0u8; 25];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(SLEEP.as_bytes()).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 201 Created\r\n"), "{rest}");
}

#[test]
fn greedy_and_slow_clients_cost_only_their_own_connections() {
    let host = Host::start("api-greedy", &[("base", SLEEP)]);
    // Half a request holds a connection until its deadline; others are served meanwhile.
    let mut slow: Vec<UnixStream> = (0..63)
        .map(|_| {
            let mut s = UnixStream::connect(host.socket()).unwrap();
            s.write_all(b"GET /v1/sys").unwrap();
            s
        })
        .collect();
    assert_eq!(host.try_get("/v1/units/base").unwrap()["name"], "base");
    // Past the connection limit a client is told so at once instead of waiting.
    slow.push(UnixStream::connect(host.socket()).unwrap());
    let mut extra = UnixStream::connect(host.socket()).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable"),
        "{answer}"
    );
    drop(slow);
    host.wait_for("the API to serve again", || {
        host.try_get("/v1/system").is_some()
    });
}

/// A unit printing `tick N` every 50 ms.
const TICKER: &str = "[container]\ncommand = [\"sh\", \"-c\", \"i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done\"]\n";

fn tick_numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect()
}

#[test]
fn logs_tail_and_follow_streams_new_lines() {
    let host = Host::start("api-logs", &[("ticker", TICKER)]);
    host.wait_for("five ticks", || {
        tick_numbers(&host.read("state/logs/ticker.log")).len() >= 5
    });
    let (status, tail) = text(&host, "/v1/units/ticker/logs?tail=2");
    assert_eq!(status, 200);
    let got = tick_numbers(&tail);
    assert_eq!(got.len(), 2, "{tail}");
    assert_eq!(got[1], got[0] + 1);
    let (_, all) = text(&host, "/v1/units/ticker/logs");
    assert!(tick_numbers(&all).len() >= 5);

    // Follow: the backlog, then lines written after the request, as chunks.
    let mut s = UnixStream::connect(host.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /v1/units/ticker/logs?tail=1&follow=1 HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        reader.read_line(&mut head).unwrap();
    }
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    let mut seen = Vec::new();
    let start = Instant::now();
    while seen.len() < 4 {
        assert!(start.elapsed() < DEADLINE, "no streamed lines: {seen:?}");
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        seen.extend(tick_numbers(&line));
    }
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
    assert!(seen[3] > got[1], "{seen:?} came after {got:?}");

    // berthctl logs -f does the same from the command line.
    let mut ctl = Command::new(common::berthctl_bin())
        .arg("--socket")
        .arg(host.socket())
        .args(["logs", "-f", "--tail", "1", "ticker"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(ctl.stdout.take().unwrap());
    let mut lines = Vec::new();
    while lines.len() < 3 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        lines.extend(tick_numbers(&line));
    }
    ctl.kill().unwrap();
    ctl.wait().unwrap();
    assert!(lines.windows(2).all(|w| w[1] == w[0] + 1), "{lines:?}");
}

#[test]
fn a_follower_that_does_not_read_gets_a_gap_not_unbounded_buffering() {
    // 24 MiB of output, far more than a stream may buffer; then, once the test says so, a
    // last line.
    let flood = "[container]\ncommand = [\"sh\", \"-c\", \"sleep 0.5; yes 0123456789abcdef0123456789abcdef | head -c 25165824; echo; echo FLOOD-DONE; while [ ! -f {dir}/go ]; do sleep 0.05; done; echo AFTER-GAP; exec sleep 300\"]\n";
    let host = Host::start("api-flood", &[("flood", flood)]);
    let mut s = UnixStream::connect(host.socket()).unwrap();
    s.write_all(b"GET /v1/units/flood/logs?follow=1 HTTP/1.1\r\n\r\n")
        .unwrap();
    host.wait_for("the flood to end", || {
        host.read("state/logs/flood.log").contains("FLOOD-DONE")
    });
    // Others are served while the follower sits on its backlog.
    assert!(host.try_get("/v1/units/flood").is_some());
    std::fs::write(host.dir.join("go"), "").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let start = Instant::now();
    while !String::from_utf8_lossy(&got[got.len().saturating_sub(300)..]).contains("AFTER-GAP") {
        assert!(start.elapsed() < DEADLINE);
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("bytes of output dropped: slow reader]"),
        "no gap note"
    );
    assert!(got.len() < 12 << 20, "received {} bytes", got.len());
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Bytes waiting to be read on `s`.
fn readable(s: &UnixStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0);
    n as usize
}

/// Line `i` of the test log: 64 bytes.
fn numbered(i: u64) -> String {
    format!("{i:08} {}\n", "x".repeat(54))
}

/// Decodes a chunked body from `r` until its text ends with `end`.
fn read_chunked_until(r: &mut BufReader<UnixStream>, end: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let start = Instant::now();
    while !out.ends_with(end.as_bytes()) {
        assert!(
            start.elapsed() < DEADLINE,
            "stream stopped after {} bytes",
            out.len()
        );
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        assert!(size > 0, "the stream ended");
        let at = out.len();
        out.resize(at + size, 0);
        r.read_exact(&mut out[at..]).unwrap();
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).unwrap();
        assert_eq!(&crlf, b"\r\n");
    }
    out
}

#[test]
fn log_followers_cost_bounded_memory_whatever_the_backlog() {
    // 2.5 MiB of log before the start (two rotated files and the current one), and 2 MiB
    // more once the test says so: more than a follower's whole backlog, across rotations.
    let dir = temp_dir("api-followers");
    let logs = dir.join("state/logs");
    std::fs::create_dir_all(&logs).unwrap();
    let lines = |r: std::ops::Range<u64>| r.map(numbered).collect::<String>();
    std::fs::write(logs.join("big.log.2"), lines(0..16384)).unwrap();
    std::fs::write(logs.join("big.log.1"), lines(16384..32768)).unwrap();
    std::fs::write(logs.join("big.log"), lines(32768..40960)).unwrap();
    let unit = format!(
        "[container]\ncommand = [\"sh\", \"-c\", \"while [ ! -f {{dir}}/go ]; do sleep 0.05; done; awk 'BEGIN {{ for (i = 40960; i < 73728; i++) printf \\\"%08d {}\\\\n\\\", i }}'; echo DONE; exec sleep 300\"]\n",
        "x".repeat(54)
    );
    let host = Host::start_in(dir, &[("big", &unit)]);
    let before = rss(host.pid);
    // Readers of everything that never read, following or not, and one that will.
    let ask = |query: &str| {
        let mut s = UnixStream::connect(host.socket()).unwrap();
        write!(s, "GET /v1/units/big/logs?{query} HTTP/1.1\r\n\r\n").unwrap();
        s
    };
    let stalled: Vec<UnixStream> = (0..28).map(|_| ask("tail=all&follow=1")).collect();
    let plain: Vec<UnixStream> = (0..28).map(|_| ask("tail=all")).collect();
    let reader = ask("tail=all&follow=1");
    host.wait_for("every reader to be served", || {
        stalled
            .iter()
            .chain(&plain)
            .chain([&reader])
            .all(|s| readable(s) > 0)
    });
    let bound = 24 << 20;
    let grown = rss(host.pid).saturating_sub(before);
    eprintln!("57 readers of a 2 MiB backlog: RSS {before} + {grown} bytes");
    assert!(
        grown < bound,
        "57 readers of a 2 MiB backlog: +{grown} bytes RSS"
    );

    // The reader gets every byte in order: the backlog (the last 2 MiB, whole lines), then
    // everything the unit writes, across two rotations.
    std::fs::write(host.dir.join("go"), "").unwrap();
    let mut reader = BufReader::new(reader);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        reader.read_line(&mut head).unwrap();
    }
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    let got = read_chunked_until(&mut reader, "DONE\n");
    let text = String::from_utf8(got).unwrap();
    let first: u64 = text[..8].parse().unwrap();
    assert!(
        (8192..=8193).contains(&first),
        "backlog starts at line {first}"
    );
    assert_eq!(text, lines(first..73728) + "DONE\n");
    let grown = rss(host.pid).saturating_sub(before);
    assert!(
        grown < bound,
        "after the unit wrote 2 MiB more: +{grown} bytes RSS"
    );
    // The stalled followers are still there, and still get their stream when they read.
    let mut one = BufReader::new(stalled.into_iter().next().unwrap());
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        one.read_line(&mut head).unwrap();
    }
    let got = read_chunked_until(&mut one, "DONE\n");
    assert_eq!(String::from_utf8(got).unwrap(), text);
    // A plain request gets the log as it was when the request came.
    let mut one = plain.into_iter().next().unwrap();
    one.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    one.read_to_end(&mut answer).unwrap();
    let backlog = lines(first..40960);
    let head = format!("Content-Length: {}\r\n", backlog.len());
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.contains(&head), "{}", &answer[..200]);
    assert!(answer.ends_with(&format!("\r\n\r\n{backlog}")));
}

#[test]
fn ambiguous_request_framing_is_refused_at_once() {
    let host = Host::start("api-framing", &[]);
    // Answered as soon as the head is in: the 5 s request deadline would give 408.
    for req in [
        "PUT /v1/units/x HTTP/1.1\r\nContent-Length: 40\r\nContent-Length: 5\r\n\r\nabcde",
        "PUT /v1/units/x HTTP/1.1\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
        "PUT /v1/units/x HTTP/1.1\r\nContent-Length: 40, 5\r\n\r\nabcde",
        "PUT /v1/units/x HTTP/1.1\r\nX-Note: a\r\n folded\r\nContent-Length: 5\r\n\r\nabcde",
    ] {
        let (status, _, body) = raw(&host.socket(), req.as_bytes());
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 400, "{req:?}: {v}");
    }
    // berthctl over the local limit says so (not "Broken pipe").
    let slow: Vec<UnixStream> = (0..berth_init::api::MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(host.socket()).unwrap())
        .collect();
    let out = Command::new(common::berthctl_bin())
        .arg("--socket")
        .arg(host.socket())
        .arg("status")
        .output()
        .unwrap();
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("too many connections"), "{why}");
    drop(slow);
}

/// A metric sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A strict reader of the Prometheus text format: every sample belongs to a family declared
/// by HELP and TYPE before it, families are contiguous, names and labels are well formed,
/// values are numbers, series are unique. Returns (name, labels, value) samples.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut declared: Vec<(String, String)> = Vec::new();
    let mut helped: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    let mut series = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(
                name_ok(name) && !helped.contains(&name.to_string()),
                "{line}"
            );
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                helped.last().map(String::as_str) == Some(name),
                "TYPE without HELP: {line}"
            );
            assert!(
                !declared.iter().any(|(n, _)| n == name),
                "family declared twice: {line}"
            );
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} should end in _total"
                );
            }
            declared.push((name.to_string(), kind.to_string()));
            current = Some(name.to_string());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("no value: {line}"),
        };
        assert_eq!(
            Some(name),
            current.as_deref(),
            "sample outside its family: {line}"
        );
        let mut labels = Vec::new();
        let value_text = if let Some(body) = rest.strip_prefix('{') {
            let end = body.rfind("} ").unwrap_or_else(|| panic!("{line}"));
            let mut chars = body[..end].chars().peekable();
            while chars.peek().is_some() {
                let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                assert!(name_ok(&key), "label name {key:?} in {line}");
                assert_eq!(chars.next(), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars
                        .next()
                        .unwrap_or_else(|| panic!("unterminated: {line}"))
                    {
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some(c @ ('\\' | '"')) => value.push(c),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.push((key, value));
                match chars.next() {
                    Some(',') | None => {}
                    other => panic!("unexpected {other:?} in {line}"),
                }
            }
            &body[end + 2..]
        } else {
            rest.trim_start()
        };
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
        };
        assert!(
            series.insert(format!("{name}{labels:?}")),
            "duplicate series {line}"
        );
        samples.push((name.to_string(), labels, value));
    }
    samples
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let crash = "[container]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n[service]\nrestart = \"always\"\nrestart_delay = \"20ms\"\nstart_limit_burst = 3\n";
    let host = Host::start(
        "api-metrics",
        &[("base", SLEEP), ("crash", crash), ("quote\"d", SLEEP)],
    );
    host.wait_state("base", &["running"]);
    host.wait_state("crash", &["failed"]);
    let req = b"GET /v1/metrics HTTP/1.1\r\n\r\n";
    let (status, head, body) = raw(&host.socket(), req);
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let text = String::from_utf8(body).unwrap();
    let samples = parse_prometheus(&text);
    let get = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
    };
    assert_eq!(
        get(
            "berth_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("mode", "host")]
        ),
        Some(1.0)
    );
    assert!(get("berth_uptime_seconds", &[]).unwrap() > 0.0);
    assert!(get("berth_boot_duration_seconds", &[]).unwrap() > 0.0);
    assert_eq!(
        get(
            "berth_unit_state",
            &[("unit", "base"), ("state", "running")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get("berth_unit_state", &[("unit", "base"), ("state", "failed")]),
        Some(0.0)
    );
    assert_eq!(
        get(
            "berth_unit_state",
            &[("unit", "crash"), ("state", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get("berth_unit_restarts_total", &[("unit", "crash")]),
        Some(2.0)
    );
    assert_eq!(
        get("berth_unit_log_dropped_bytes", &[("unit", "base")]),
        Some(0.0)
    );
    // The unit name with a quote is escaped and read back intact.
    assert_eq!(
        get(
            "berth_unit_state",
            &[("unit", "quote\"d"), ("state", "failed")]
        ),
        Some(1.0)
    );
    // Host mode runs units without cgroups: no cgroup families rather than zeros.
    assert!(!text.contains("berth_unit_memory_current_bytes"), "{text}");
    assert!(
        !text.contains("berth_unit_cpu_usage_seconds_total"),
        "{text}"
    );
}

#[test]
fn system_facts_and_poweroff() {
    let mut host = Host::start("api-power", &[("base", SLEEP)]);
    let (status, sys) = call(&host, "GET", "/v1/system", b"");
    assert_eq!(status, 200);
    assert_eq!(sys["mode"], "host");
    assert_eq!(sys["version"], env!("CARGO_PKG_VERSION"));
    assert!(sys["boot_id"].as_str().unwrap().len() >= 32, "{sys}");
    assert!(sys["uptime_seconds"].as_f64().unwrap() > 0.0);
    assert!(sys["slot"].is_null() && sys["remote_api"].is_null());
    let base = pid(&host, "base").unwrap() as i32;
    let (status, v) = call(&host, "POST", "/v1/system/poweroff", b"");
    assert_eq!((status, v["action"].as_str()), (202, Some("poweroff")));
    assert_eq!(host.wait_exit(), Some(0));
    assert!(!common::alive(base));
    assert!(host.log().contains("API request: shutting down"));
}

#[test]
fn berthctl_reboot_ends_host_mode_in_order() {
    let mut host = Host::start("api-reboot", &[("base", SLEEP)]);
    let out = Command::new(common::berthctl_bin())
        .arg("--socket")
        .arg(host.socket())
        .arg("reboot")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(host.wait_exit(), Some(0));
    assert!(host.log().contains("unit base: stopping (requested)"));
}

/// Debian's docker-registry on 127.0.0.1 with a kernel-chosen port; killed on drop.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  secret: berth-test\n",
            dir.join("registry").display()
        );
        std::fs::write(dir.join("registry.yml"), config).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("registry.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker-registry (scripts/install-deps.sh installs it)");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on ") {
                    let addr: String = line[i + 13..]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
                        .collect();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20));
        let mut registry = Registry {
            child,
            addr: String::new(),
        };
        registry.addr = addr.expect("docker-registry did not say where it listens");
        assert!(registry.addr.starts_with("127.0.0.1:"), "{}", registry.addr);
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-file image pushed to `registry` as `berth/api:1`.
fn push_small_image(dir: &Path, registry: &str) {
    let (layout, bundle) = (dir.join("layout"), dir.join("bundle"));
    let image = new_umoci_image(&layout, &bundle);
    std::fs::write(bundle.join("rootfs/hello"), "hello from the api test\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker://{registry}/berth/api:1")));
}

#[test]
fn images_are_pulled_by_a_child_listed_and_removed() {
    common::runtime_bin();
    let dir = temp_dir("api-images");
    let registry = Registry::start(&dir);
    push_small_image(&dir, &registry.addr);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(
        dir.join("state/machine.toml"),
        format!("[registries]\ninsecure = [\"{}\"]\n", registry.addr),
    )
    .unwrap();
    let host = Host::start_in(dir, &[]);
    assert_eq!(
        call(&host, "GET", "/v1/images", b"").1,
        serde_json::json!([])
    );
    let reference = format!("{}/berth/api:1", registry.addr);
    let body = serde_json::json!({ "reference": reference }).to_string();
    let (status, job) = call(&host, "POST", "/v1/images/pull", body.as_bytes());
    assert_eq!(
        (status, job["state"].as_str()),
        (202, Some("running")),
        "{job}"
    );
    let id = job["id"].as_u64().unwrap();
    let mut job = Value::Null;
    host.wait_for("the pull to finish", || {
        job = call(&host, "GET", &format!("/v1/images/jobs/{id}"), b"").1;
        job["state"] != "running"
    });
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["kind"], "pull");
    let (_, images) = call(&host, "GET", "/v1/images", b"");
    assert_eq!(
        images[0]["reference"].as_str(),
        Some(reference.as_str()),
        "{images}"
    );
    let encoded = reference.replace('/', "%2F");
    let (status, image) = call(&host, "GET", &format!("/v1/images/{encoded}"), b"");
    assert_eq!(
        (status, image["layers"].as_u64()),
        (200, Some(1)),
        "{image}"
    );
    let (status, removed) = call(&host, "DELETE", &format!("/v1/images/{encoded}"), b"");
    assert_eq!(
        (status, removed["removed"].as_str()),
        (200, Some(reference.as_str()))
    );
    assert_eq!(
        call(&host, "GET", "/v1/images", b"").1,
        serde_json::json!([])
    );
    let (status, err) = call(&host, "DELETE", &format!("/v1/images/{encoded}"), b"");
    assert_eq!((status, error_of(&err).0), (404, "unknown image"));
    // A failed pull is a failed job with the reason.
    let body = b"{\"reference\": \"127.0.0.1:9/berth/none:1\"}";
    let (_, mut job) = call(&host, "POST", "/v1/images/pull", body);
    let id = job["id"].as_u64().unwrap();
    host.wait_for("the bad pull to fail", || {
        job = call(&host, "GET", &format!("/v1/images/jobs/{id}"), b"").1;
        job["state"] == "failed"
    });
    assert!(
        job["error"].as_str().unwrap().contains("127.0.0.1:9"),
        "{job}"
    );
    let (_, jobs) = call(&host, "GET", "/v1/images/jobs", b"");
    assert!(jobs.as_array().unwrap().len() >= 3, "{jobs}");
}

#[test]
fn logs_and_messages_are_forwarded_to_remote_syslog() {
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let dir = temp_dir("api-syslog");
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(
        dir.join("state/machine.toml"),
        format!(
            "hostname = \"berth-test\"\n[syslog]\nserver = \"udp://{}\"\n",
            server.local_addr().unwrap()
        ),
    )
    .unwrap();
    let unit = "[container]\ncommand = [\"sh\", \"-c\", \"echo hello syslog; exec sleep 300\"]\n";
    let _host = Host::start_in(dir, &[("greeter", unit)]);
    let mut messages = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < DEADLINE
        && !(messages
            .iter()
            .any(|m: &String| m.contains(" greeter - - - hello syslog"))
            && messages.iter().any(|m| m.contains("unit greeter: started")))
    {
        if let Ok(n) = server.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let unit_line = messages
        .iter()
        .find(|m| m.contains("hello syslog"))
        .unwrap_or_else(|| panic!("{messages:#?}"));
    assert!(unit_line.starts_with("<30>1 20"), "{unit_line}");
    assert!(
        unit_line.contains(" berth-test greeter - - - hello syslog"),
        "{unit_line}"
    );
    let own = messages
        .iter()
        .find(|m| m.contains("unit greeter: started"))
        .unwrap_or_else(|| panic!("{messages:#?}"));
    assert!(own.contains(" berth-test berth-init "), "{own}");
}
