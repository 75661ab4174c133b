//! Image jobs against a registry that drips its answers: a job can be cancelled and frees its
//! slot, a stuck job is killed at its deadline, pulls die with berth-init, and `berthctl image
//! pull` interrupted with Ctrl-C cancels its job. Every process a job starts must be gone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{alive, children_of, temp_dir, Host, DEADLINE};
use serde_json::Value;

/// A "registry" on loopback that answers every request with a manifest it never finishes:
/// one byte every 100 ms. Its threads stop when the client goes away or it is dropped.
struct Dripper {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Dripper {
    fn start() -> Dripper {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let stop = stop2.clone();
                std::thread::spawn(move || drip(stream, &stop));
            }
        });
        Dripper {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

fn drip(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                  Content-Length: 1000000\r\n\r\n{";
    if stream.write_all(answer.as_bytes()).is_err() {
        return;
    }
    // Bounded: ten minutes of dripping at most.
    for _ in 0..6000 {
        if stop.load(Ordering::SeqCst) || stream.write_all(b" ").is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Dripper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// berth-init in host mode whose machine config names `registry` as insecure, plus `limits`.
fn host_for(tag: &str, registry: &str, limits: &str) -> Host {
    host_with_units(tag, registry, limits, &[])
}

/// Like [`host_for`], with `units` installed.
fn host_with_units(tag: &str, registry: &str, limits: &str, units: &[(&str, &str)]) -> Host {
    common::runtime_bin();
    let dir = temp_dir(tag);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::create_dir_all(dir.join("units")).unwrap();
    std::fs::write(
        dir.join("state/machine.toml"),
        format!("[registries]\ninsecure = [\"{registry}\"]\n{limits}\n"),
    )
    .unwrap();
    Host::start_in(dir, units)
}

/// (status, JSON body) of `method path` with a body.
fn call(host: &Host, method: &str, path: &str, body: &str) -> (u16, Value) {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    host.request(&raw)
        .unwrap_or_else(|| panic!("{method} {path}: no answer\n{}", host.log()))
}

fn start_pull(host: &Host, registry: &str, name: &str) -> (u16, Value) {
    let body = serde_json::json!({ "reference": format!("{registry}/berth/{name}:1") });
    call(host, "POST", "/v1/images/pull", &body.to_string())
}

/// The berth-runtime processes berth-init runs (jobs), alive (not zombies).
fn job_processes(host: &Host) -> Vec<i32> {
    children_of(host.pid)
        .into_iter()
        .filter(|(pid, state, comm)| comm == "berth-runtime" && *state != 'Z' && alive(*pid))
        .map(|(pid, _, _)| pid)
        .collect()
}

fn job(host: &Host, id: u64) -> Value {
    call(host, "GET", &format!("/v1/images/jobs/{id}"), "").1
}

#[test]
fn cancelled_job_ends_cancelled_frees_its_slot_and_its_process() {
    let registry = Dripper::start();
    let host = host_for("jobs-cancel", &registry.addr, "min_rate = \"0\"");
    let mut ids = Vec::new();
    for i in 0..4 {
        let (status, job) = start_pull(&host, &registry.addr, &format!("drip{i}"));
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_u64().unwrap());
    }
    host.wait_for("four pull processes", || job_processes(&host).len() == 4);
    let (status, busy) = start_pull(&host, &registry.addr, "drip-extra");
    assert_eq!(status, 503, "{busy}");

    let (status, cancelled) = call(&host, "DELETE", &format!("/v1/images/jobs/{}", ids[0]), "");
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    host.wait_for("the cancelled pull's process to go", || {
        job_processes(&host).len() == 3
    });
    // Reaped, still cancelled, and its slot is free.
    host.wait_for("the cancelled job to be reaped", || {
        !job(&host, ids[0])["exit_code"].is_null()
    });
    assert_eq!(job(&host, ids[0])["state"], "cancelled");
    let (status, fifth) = start_pull(&host, &registry.addr, "drip-extra");
    assert_eq!(status, 202, "{fifth}");
    ids.push(fifth["id"].as_u64().unwrap());
    // A finished job cannot be cancelled; an unknown one is not found.
    let (status, _) = call(&host, "DELETE", &format!("/v1/images/jobs/{}", ids[0]), "");
    assert_eq!(status, 409);
    assert_eq!(call(&host, "DELETE", "/v1/images/jobs/999", "").0, 404);

    for id in &ids[1..] {
        let (status, _) = call(&host, "DELETE", &format!("/v1/images/jobs/{id}"), "");
        assert_eq!(status, 200);
    }
    host.wait_for("every pull process to go", || {
        job_processes(&host).is_empty()
    });
}

#[test]
fn stuck_job_is_killed_at_its_deadline() {
    let registry = Dripper::start();
    // pull_timeout 1s: the job may run 2 s in all. The pull itself cannot enforce it while it
    // waits for the store's lock, which the test holds.
    let host = host_for("jobs-deadline", &registry.addr, "pull_timeout = \"1s\"");
    let images = host.dir.join("state/images");
    std::fs::create_dir_all(&images).unwrap();
    let lock = std::fs::File::create(images.join("gc.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let (status, started) = start_pull(&host, &registry.addr, "stuck");
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_u64().unwrap();
    let mut last = Value::Null;
    host.wait_for("the stuck job to be killed", || {
        last = job(&host, id);
        last["state"] != "running"
    });
    assert_eq!(last["state"], "failed", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap_or_default()
            .contains("killed"),
        "{last}"
    );
    host.wait_for("the stuck pull's process to go", || {
        job_processes(&host).is_empty()
    });
    drop(lock);
}

#[test]
fn pull_processes_die_with_berth_init() {
    let registry = Dripper::start();
    let mut host = host_for("jobs-pdeathsig", &registry.addr, "min_rate = \"0\"");
    let (status, started) = start_pull(&host, &registry.addr, "orphan");
    assert_eq!(status, 202, "{started}");
    let mut pulls = Vec::new();
    host.wait_for("the pull process", || {
        pulls = job_processes(&host);
        pulls.len() == 1
    });
    host.signal(libc::SIGKILL);
    host.wait_exit();
    let start = Instant::now();
    while alive(pulls[0]) {
        assert!(
            start.elapsed() < DEADLINE,
            "pull {} outlived berth-init",
            pulls[0]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A container unit whose image is missing: its setup task pulls it. When berth-init dies,
/// the setup task and its pull go too.
#[test]
fn a_container_units_setup_and_pull_die_with_berth_init() {
    let registry = Dripper::start();
    let unit = format!(
        "[container]\nimage = \"{}/berth/unit-pull:1\"\ncommand = [\"true\"]\n",
        registry.addr
    );
    let mut host = host_with_units(
        "jobs-setup-pdeathsig",
        &registry.addr,
        "min_rate = \"0\"",
        &[("app", &unit)],
    );
    // The setup task (a forked berth-init) and the pull it runs (berth-runtime).
    let mut left = Vec::new();
    host.wait_for("the unit's pull process", || {
        left = children_of(host.pid)
            .into_iter()
            .filter(|(_, state, comm)| comm == "berth-init" && *state != 'Z')
            .flat_map(|(task, _, _)| {
                let pulls: Vec<i32> = children_of(task)
                    .into_iter()
                    .filter(|(_, state, comm)| comm == "berth-runtime" && *state != 'Z')
                    .map(|(pid, _, _)| pid)
                    .collect();
                if pulls.is_empty() {
                    Vec::new()
                } else {
                    [vec![task], pulls].concat()
                }
            })
            .collect();
        !left.is_empty()
    });
    host.signal(libc::SIGKILL);
    host.wait_exit();
    let start = Instant::now();
    while let Some(pid) = left.iter().copied().find(|p| alive(*p)) {
        assert!(
            start.elapsed() < DEADLINE,
            "process {pid} of the unit's setup outlived berth-init"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn berthctl_image_pull_interrupted_cancels_its_job() {
    let registry = Dripper::start();
    let host = host_for("jobs-berthctl", &registry.addr, "min_rate = \"0\"");
    let berthctl = common::berthctl_bin();
    let mut ctl = Command::new(berthctl)
        .arg("--socket")
        .arg(host.socket())
        .args(["--timeout", "600", "image", "pull"])
        .arg(format!("{}/berth/ctrl-c:1", registry.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = 0;
    host.wait_for("berthctl's job to run", || {
        let (_, jobs) = call(&host, "GET", "/v1/images/jobs", "");
        match jobs.as_array().and_then(|j| j.first()) {
            Some(j) if j["state"] == "running" => {
                id = j["id"].as_u64().unwrap();
                true
            }
            _ => false,
        }
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(ctl.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = ctl.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = ctl.kill();
            let _ = ctl.wait();
            panic!("berthctl did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    ctl.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(job(&host, id)["state"], "cancelled");
    host.wait_for("the pull process to go", || job_processes(&host).is_empty());
}
