//! Remote administration of a booted Berth: berthctl on the host reaches the guest's control
//! API through a forwarded port with mutual TLS (certificates made with `openssl` for the run,
//! delivered by the config drive), installs a unit, reads its logs and its metrics (cgroup
//! figures from the guest kernel), restarts it, and a client certificate from another CA is
//! refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth_qemu_tests::pki::{Pki, CA, CLIENT, SERVER};
use berth_qemu_tests::{disk, image_or_skip, Firmware, Fixture, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(300);
const DISK_SIZE: u64 = 1 << 30;
const API_PORT: u16 = 7443;

/// The berthctl built with the image (`$BERTHCTL` overrides).
fn berthctl() -> PathBuf {
    match std::env::var_os("BERTHCTL") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../out/bin/berthctl"),
    }
}

struct Remote {
    addr: String,
    pki: Pki,
}

impl Remote {
    fn ctl(&self, who: &str, args: &[&str]) -> Output {
        Command::new(berthctl())
            .args(["--host", &self.addr, "--timeout", "120"])
            .arg("--ca")
            .arg(self.pki.cert(CA))
            .arg("--cert")
            .arg(self.pki.cert(who))
            .arg("--key")
            .arg(self.pki.key(who))
            .args(args)
            .output()
            .unwrap()
    }

    /// berthctl as the authorised client; its stdout, failing the test on a non-zero exit.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(CLIENT, args);
        assert!(
            out.status.success(),
            "berthctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The value of the sample `name{unit="beat"}` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{unit=\"beat\"}} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn berthctl_administers_a_booted_berth_over_mutual_tls() {
    let Some(image) = image_or_skip("remote_api") else {
        return;
    };
    assert!(berthctl().exists(), "{} (make build)", berthctl().display());
    let fx = Fixture::new("remote_api").unwrap();
    let pki = Pki::create(&fx.path("pki")).unwrap();
    let pem = |f: &str| pki.pem(f).unwrap();
    let user_data = format!(
        "hostname = \"remote-api\"\n\n[machine.api]\nlisten = \"0.0.0.0:{API_PORT}\"\n\
         cert = \"\"\"\n{}\"\"\"\nkey = \"\"\"\n{}\"\"\"\nclient_ca = \"\"\"\n{}\"\"\"\n",
        pem(&format!("{SERVER}.crt")),
        pem(&format!("{SERVER}.key")),
        pem(&format!("{CA}.crt"))
    );
    let disk_path = fx.path("disk.img");
    disk::copy_raw(&image, &disk_path, Some(DISK_SIZE)).unwrap();
    let cidata = fx.config_drive(&user_data).unwrap();
    let mut cfg = VmConfig::new(Firmware::Bios, disk_path);
    cfg.extra_drives.push(cidata);
    cfg.forward.push(API_PORT);
    let mut vm = Vm::start(&cfg, &fx.dir).unwrap();
    vm.wait_for_shell(BOOT).unwrap();
    let remote = Remote {
        addr: format!("127.0.0.1:{}", vm.host_port(API_PORT).unwrap()),
        pki,
    };

    // The listener comes up with supervision; the first answers may take a moment under TCG.
    let start = Instant::now();
    let status = loop {
        let out = remote.ctl(CLIENT, &["--json", "status"]);
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        assert!(
            start.elapsed() < BOOT,
            "remote API never answered: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            vm.transcript()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(status["mode"], "pid1");
    assert_eq!(status["hostname"], "remote-api");
    assert_eq!(status["slot"], "A");
    assert_eq!(status["remote_api"], format!("0.0.0.0:{API_PORT}"));

    // Install a unit; berthctl waits until it runs.
    let unit = fx.path("beat.toml");
    std::fs::write(
        &unit,
        "[unit]\ndescription = \"heartbeat\"\n\n[container]\n\
         command = [\"sh\", \"-c\", \"i=0; while true; do i=$((i+1)); echo beat $i; sleep 1; done\"]\n\n\
         [resources]\nmemory_max = \"32M\"\npids_max = 16\n",
    )
    .unwrap();
    let applied = remote.ok(&["apply", unit.to_str().unwrap()]);
    assert!(
        applied.starts_with("unit beat: created\nbeat: running"),
        "{applied}"
    );
    let units = remote.ok(&["ps"]);
    assert!(units.lines().any(|l| l.starts_with("beat ")), "{units}");

    // Its logs.
    let start = Instant::now();
    while !remote.ok(&["logs", "beat"]).contains("beat 2\n") {
        assert!(start.elapsed() < BOOT, "no output from beat");
        std::thread::sleep(Duration::from_millis(500));
    }
    let tail = remote.ok(&["logs", "--tail", "1", "beat"]);
    assert!(
        tail.starts_with("beat ") && tail.lines().count() == 1,
        "{tail}"
    );

    // Its metrics, with figures from the unit's cgroup in the guest.
    let metrics = remote.ok(&["metrics", "beat"]);
    assert!(
        metrics.contains("berth_unit_state{unit=\"beat\",state=\"running\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "berth_unit_memory_max_bytes"),
        Some(32.0 * 1024.0 * 1024.0)
    );
    assert!(
        sample(&metrics, "berth_unit_memory_current_bytes").unwrap() > 0.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "berth_unit_cpu_usage_seconds_total").unwrap() > 0.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "berth_unit_pids").unwrap() >= 1.0,
        "{metrics}"
    );

    // Restart: a new process, whose output starts over.
    let before = remote.ok(&["--json", "show", "beat"]);
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    let restarted = remote.ok(&["--json", "restart", "beat"]);
    let after: serde_json::Value = serde_json::from_str(&restarted).unwrap();
    assert_eq!(after["state"], "running");
    assert_ne!(after["pid"], before["pid"]);
    let start = Instant::now();
    while remote.ok(&["logs", "beat"]).matches("beat 1\n").count() < 2 {
        assert!(start.elapsed() < BOOT, "no output after the restart");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Someone with a certificate from another CA gets nothing.
    let intruder = remote.ctl(berth_qemu_tests::pki::INTRUDER, &["status"]);
    assert_eq!(intruder.status.code(), Some(1));
    assert!(intruder.stdout.is_empty());

    remote.ok(&["poweroff"]);
    vm.wait_exit(BOOT).unwrap();
}
