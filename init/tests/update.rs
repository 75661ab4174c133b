//! Applying update bundles to files standing in for a slot's partition and the ESP: a good
//! bundle lands in the inactive slot and boots next; every refused one names its reason and
//! leaves grubenv and the boot files as they were.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use berth_formats::grubenv::{BootState, Slot, SlotState, DEFAULT_TRIES, ENV_FILES};
use berth_image::bundle::keys;
use berth_image::bundle::{self, testing, BundleError, CreateOptions};
use berth_init::update::source::{apply_from, Fetcher, Source};
use berth_init::update::{apply, Phase, Policy, Progress, Target, UpdateError};

const CAPACITY: u64 = 1 << 20;
const PARTUUID: &str = "0b3a9c2e-55aa-4c1d-8e7f-123456789abc";

struct Rig {
    dir: PathBuf,
    target: Target,
    policy: Policy,
    opts: CreateOptions,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A machine running slot A (0.1.0, fresh boot state) with an empty slot B, and the options
/// of a 0.2.0 bundle signed with a trusted key. `None` without veritysetup.
fn rig(name: &str) -> Option<Rig> {
    let dir = std::env::temp_dir().join(format!("berth-update-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("esp/grub")).unwrap();
    std::fs::create_dir_all(dir.join("esp/A")).unwrap();
    std::fs::create_dir_all(dir.join("esp/B")).unwrap();
    for (name, block) in ENV_FILES
        .iter()
        .zip(BootState::fresh().initial_blocks().unwrap())
    {
        std::fs::write(dir.join("esp/grub").join(name), block).unwrap();
    }
    std::fs::write(dir.join("esp/A/vmlinuz"), b"old kernel").unwrap();
    std::fs::write(dir.join("esp/A/boot.cfg"), b"set berth_dm=\"old\"\n").unwrap();
    std::fs::write(dir.join("slot-b"), vec![0u8; CAPACITY as usize]).unwrap();
    let root = dir.join("root.img");
    let verity = testing::root_image(&root, 70, 11)?;
    std::fs::write(dir.join("vmlinuz"), b"new kernel ".repeat(3000)).unwrap();
    keys::generate(&dir.join("trusted"), "test").unwrap();
    Some(Rig {
        target: Target {
            slot: Slot::B,
            root_device: dir.join("slot-b"),
            root_capacity: CAPACITY,
            root_partuuid: PARTUUID.into(),
            esp: dir.join("esp"),
        },
        policy: Policy {
            trusted_keys: dir.join("trusted"),
            running_version: "0.1.0".into(),
            allow_downgrade: false,
            tries: DEFAULT_TRIES,
            stop_at: None,
        },
        opts: CreateOptions {
            key: dir.join("trusted/test.key"),
            root,
            kernel: dir.join("vmlinuz"),
            os_version: "0.2.0".into(),
            build_id: "b2".into(),
            min_from_version: "0.1.0".into(),
            kernel_release: "6.12.0-berth".into(),
            verity,
            boot_args: "console=ttyS0,115200 panic=5".into(),
            out: dir.join("update.bundle"),
        },
        dir,
    })
}

impl Rig {
    fn bundle(&self, change: impl FnOnce(&mut CreateOptions)) -> PathBuf {
        let mut o = self.opts.clone();
        change(&mut o);
        bundle::create(&o).unwrap();
        o.out
    }

    fn apply(&self, bundle: &Path) -> Result<Vec<Progress>, UpdateError> {
        let mut seen = Vec::new();
        let f = std::fs::File::open(bundle).unwrap();
        apply(f, &self.target, &self.policy, &mut |p| seen.push(p))?;
        Ok(seen)
    }

    /// Everything a refused bundle must leave alone.
    fn snapshot(&self) -> (Vec<Vec<u8>>, Vec<String>, Vec<u8>) {
        let env = ENV_FILES
            .iter()
            .map(|n| std::fs::read(self.target.esp.join("grub").join(n)).unwrap())
            .collect();
        let mut files: Vec<String> = ["A", "B"]
            .iter()
            .flat_map(|d| std::fs::read_dir(self.target.esp.join(d)).unwrap())
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        files.sort();
        (env, files, std::fs::read(&self.target.root_device).unwrap())
    }

    fn state(&self) -> BootState {
        BootState::load(&self.target.esp.join("grub")).unwrap()
    }
}

fn changed_copy(path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    let out = path.with_extension("changed");
    std::fs::write(&out, b).unwrap();
    out
}

/// Offsets of the root and kernel payloads in a bundle.
fn payload_offsets(path: &Path) -> (usize, usize) {
    let b = std::fs::read(path).unwrap();
    let mlen = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let root_at = bundle::HEADER_LEN + mlen;
    let m: bundle::Manifest = serde_json::from_slice(&b[bundle::HEADER_LEN..root_at]).unwrap();
    (root_at, root_at + m.root().size as usize)
}

#[test]
fn a_good_bundle_lands_in_the_other_slot_and_boots_next() {
    let Some(rig) = rig("good") else {
        eprintln!("veritysetup not installed; skipping");
        return;
    };
    let path = rig.bundle(|_| {});
    let progress = rig.apply(&path).unwrap();

    let root = std::fs::read(&rig.opts.root).unwrap();
    let slot = std::fs::read(&rig.target.root_device).unwrap();
    assert_eq!(&slot[..root.len()], &root[..]);
    let esp = &rig.target.esp;
    assert_eq!(
        std::fs::read(esp.join("B/vmlinuz")).unwrap(),
        std::fs::read(&rig.opts.kernel).unwrap()
    );
    let cfg = std::fs::read_to_string(esp.join("B/boot.cfg")).unwrap();
    assert!(cfg.contains(&rig.opts.verity.root_hash), "{cfg}");
    assert!(
        cfg.contains(&format!("dm-mod.waitfor=PARTUUID={PARTUUID}")),
        "{cfg}"
    );
    assert!(cfg.contains("verity 1 PARTUUID="), "{cfg}");
    assert!(cfg.contains("console=ttyS0,115200 panic=5"), "{cfg}");
    assert!(!esp.join("B/vmlinuz.new").exists() && !esp.join("B/boot.cfg.new").exists());
    // The release record the update status shows for the slot.
    let release = berth_init::update::status::read_release(&esp.join("B")).unwrap();
    assert_eq!(release.version, rig.opts.os_version);
    assert_eq!(release.build_id, rig.opts.build_id);
    // Slot A untouched.
    assert_eq!(std::fs::read(esp.join("A/vmlinuz")).unwrap(), b"old kernel");

    let state = rig.state();
    assert_eq!(state.order(), [Slot::B, Slot::A]);
    assert_eq!(
        state.state(Slot::B),
        SlotState::New {
            tries_left: DEFAULT_TRIES
        }
    );
    assert_eq!(state.state(Slot::A), SlotState::Good);
    assert_eq!(state.next_boot(), Some(Slot::B));

    // Progress: bytes per payload, rising, ending at each payload's size.
    for (phase, total) in [(Phase::Root, root.len() as u64), (Phase::Kernel, 33_000)] {
        let done: Vec<u64> = progress
            .iter()
            .filter(|p| p.phase == phase)
            .map(|p| p.done)
            .collect();
        assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
        assert_eq!(done.last(), Some(&total));
        assert!(progress
            .iter()
            .filter(|p| p.phase == phase)
            .all(|p| p.total == total));
    }
}

/// Applies `bundle` expecting a refusal; checks nothing the machine boots from changed.
fn refused(rig: &Rig, bundle: &Path, reason: &str) -> UpdateError {
    let before = rig.snapshot();
    let err = rig.apply(bundle).unwrap_err();
    assert!(
        err.to_string().contains(reason),
        "expected {reason:?} in: {err}"
    );
    let after = rig.snapshot();
    assert_eq!(before.0, after.0, "grubenv changed: {err}");
    assert_eq!(before.1, after.1, "ESP slot files changed: {err}");
    assert_eq!(rig.state().state(Slot::B), SlotState::Empty);
    assert_eq!(rig.state().next_boot(), Some(Slot::A));
    err
}

/// Refusals found before any write also leave the slot's partition as it was.
fn refused_before_writing(rig: &Rig, bundle: &Path, reason: &str) -> UpdateError {
    let before = std::fs::read(&rig.target.root_device).unwrap();
    let err = refused(rig, bundle, reason);
    assert_eq!(before, std::fs::read(&rig.target.root_device).unwrap());
    err
}

#[test]
fn a_bundle_signed_by_an_unknown_key_is_refused() {
    let Some(rig) = rig("unknown-key") else {
        return;
    };
    keys::generate(&rig.dir.join("elsewhere"), "other").unwrap();
    let path = rig.bundle(|o| o.key = rig.dir.join("elsewhere/other.key"));
    let err = refused_before_writing(&rig, &path, "not among the trusted keys");
    assert!(matches!(
        err,
        UpdateError::Bundle(BundleError::UnknownKey { .. })
    ));
}

#[test]
fn a_manifest_changed_after_signing_is_refused() {
    let Some(rig) = rig("changed-manifest") else {
        return;
    };
    let path = rig.bundle(|_| {});
    let (root_at, _) = payload_offsets(&path);
    let changed = changed_copy(&path, |b| {
        let text = String::from_utf8_lossy(&b[..root_at]).into_owned();
        // Pretend the root is allowed in a larger slot: change one digit of a size.
        let i = text.find("\"size\": ").unwrap() + 8;
        b[i] = if b[i] == b'9' { b'8' } else { b'9' };
    });
    let err = refused_before_writing(&rig, &changed, "changed after signing");
    assert!(matches!(
        err,
        UpdateError::Bundle(BundleError::BadSignature { .. })
    ));
}

#[test]
fn a_truncated_bundle_is_refused() {
    let Some(rig) = rig("truncated") else {
        return;
    };
    let path = rig.bundle(|_| {});
    let (root_at, kernel_at) = payload_offsets(&path);
    for cut in [40, root_at - 3, root_at + 100_000, kernel_at + 5] {
        let short = changed_copy(&path, |b| b.truncate(cut));
        let err = refused(&rig, &short, "truncated");
        assert!(matches!(
            err,
            UpdateError::Bundle(BundleError::Truncated { .. })
        ));
    }
}

#[test]
fn a_flipped_byte_in_the_root_or_the_kernel_is_refused() {
    let Some(rig) = rig("flipped") else {
        return;
    };
    let path = rig.bundle(|_| {});
    let (root_at, kernel_at) = payload_offsets(&path);
    let root_flip = changed_copy(&path, |b| b[root_at + 4096 * 3 + 17] ^= 1);
    refused(&rig, &root_flip, "root payload: SHA-256");
    let kernel_flip = changed_copy(&path, |b| b[kernel_at + 1000] ^= 1);
    refused(&rig, &kernel_flip, "kernel payload: SHA-256");
    // After the refusals a good bundle still applies.
    rig.apply(&path).unwrap();
    assert_eq!(rig.state().next_boot(), Some(Slot::B));
}

#[test]
fn a_downgrade_is_refused_unless_allowed() {
    let Some(mut rig) = rig("downgrade") else {
        return;
    };
    let path = rig.bundle(|o| o.os_version = "0.0.9".into());
    let err = refused_before_writing(&rig, &path, "refusing a downgrade");
    assert!(matches!(err, UpdateError::Downgrade { .. }));
    let path = rig.bundle(|o| o.min_from_version = "0.1.5".into());
    let err = refused_before_writing(&rig, &path, "updates only from Berth 0.1.5");
    assert!(matches!(err, UpdateError::TooOld { .. }));
    rig.policy.allow_downgrade = true;
    let path = rig.bundle(|o| o.os_version = "0.0.9".into());
    rig.apply(&path).unwrap();
    assert_eq!(rig.state().next_boot(), Some(Slot::B));
}

#[test]
fn a_root_larger_than_the_slot_is_refused() {
    let Some(mut rig) = rig("too-large") else {
        return;
    };
    rig.target.root_capacity = 256 * 1024;
    let path = rig.bundle(|_| {});
    let err = refused_before_writing(&rig, &path, "slot B holds only 262144");
    assert!(matches!(err, UpdateError::TooLarge { .. }));
}

/// Overwriting a slot that held a good system first takes it out of the boot order, so a
/// failed write never leaves GRUB a damaged slot to fall back to.
#[test]
fn a_good_slot_is_disabled_before_it_is_overwritten() {
    let Some(rig) = rig("was-good") else {
        return;
    };
    let mut s = rig.state();
    s.mark_good(Slot::B);
    s.store(&rig.target.esp.join("grub")).unwrap();
    let path = rig.bundle(|_| {});
    let (root_at, _) = payload_offsets(&path);
    let flipped = changed_copy(&path, |b| b[root_at + 5] ^= 1);
    let err = rig.apply(&flipped).unwrap_err();
    assert!(err.to_string().contains("root payload"), "{err}");
    let s = rig.state();
    assert_eq!(s.state(Slot::B), SlotState::Empty);
    assert_eq!(s.state(Slot::A), SlotState::Good);
    assert_eq!(s.next_boot(), Some(Slot::A));
}

#[test]
fn no_update_overwrites_the_good_slot_while_the_running_one_is_on_trial() {
    let Some(rig) = rig("on-trial") else {
        return;
    };
    // What an update that just booted leaves: B running on trial, A the good fallback. The
    // rig's target is the slot that is not running; here that is A.
    let mut s = rig.state();
    s.install(Slot::A, DEFAULT_TRIES);
    s.mark_good(Slot::A);
    s.install(Slot::B, DEFAULT_TRIES);
    s.store(&rig.target.esp.join("grub")).unwrap();
    let on_trial = Rig {
        target: Target {
            slot: Slot::A,
            ..rig.target.clone()
        },
        policy: rig.policy.clone(),
        opts: rig.opts.clone(),
        dir: rig.dir.join("unused"),
    };
    let before = on_trial.snapshot();
    let err = on_trial.apply(&rig.bundle(|_| {})).unwrap_err();
    assert!(matches!(err, UpdateError::RunningOnTrial { .. }), "{err}");
    assert!(err.to_string().contains("only good system"), "{err}");
    assert_eq!(
        before,
        on_trial.snapshot(),
        "a refused update changed something"
    );
    assert_eq!(on_trial.state().state(Slot::A), SlotState::Good);
    // Once the running slot is marked good, the update goes ahead.
    let mut s = on_trial.state();
    s.mark_good(Slot::B);
    s.store(&rig.target.esp.join("grub")).unwrap();
    on_trial.apply(&rig.bundle(|_| {})).unwrap();
    assert_eq!(
        on_trial.state().state(Slot::A),
        SlotState::New {
            tries_left: DEFAULT_TRIES
        }
    );
}

/// A correctly signed bundle whose root does not match its own verity root hash (a build
/// mistake, or a signer fooled into signing it) is refused before grubenv changes.
#[test]
fn a_root_that_does_not_match_its_verity_hash_is_refused() {
    let Some(rig) = rig("verity") else {
        return;
    };
    let path = rig.bundle(|_| {});
    let bytes = std::fs::read(&path).unwrap();
    let (root_at, _) = payload_offsets(&path);
    let mut m: bundle::Manifest =
        serde_json::from_slice(&bytes[bundle::HEADER_LEN..root_at]).unwrap();
    m.verity.root_hash = "ab".repeat(64);
    let json = serde_json::to_vec(&m).unwrap();
    let key = keys::SecretKey::load(&rig.opts.key).unwrap();
    let mut forged = bundle::sign(&key, &json).unwrap().to_vec();
    forged.extend_from_slice(&json);
    forged.extend_from_slice(&bytes[root_at..]);
    let forged_path = rig.dir.join("forged.bundle");
    std::fs::write(&forged_path, forged).unwrap();
    let err = refused(&rig, &forged_path, "verity check of the root: root hash");
    assert!(
        matches!(err, UpdateError::Bundle(BundleError::Verity(_))),
        "{err}"
    );
}

/// An HTTP/1.1 server on 127.0.0.1: `answer(n)` is the raw answer to the n-th request
/// (0-based). Stops when dropped.
struct HttpServer {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    fn start(answer: impl Fn(usize) -> Vec<u8> + Send + 'static) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let served = AtomicUsize::new(0);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                // The request head, up to its blank line.
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let n = served.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(&answer(n));
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        });
        HttpServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/update.bundle", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `200 OK` announcing `length` bytes and sending `body`.
fn ok_answer(body: &[u8], length: usize) -> Vec<u8> {
    let mut a = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n")
        .into_bytes();
    a.extend_from_slice(body);
    a
}

impl Rig {
    /// berth-runtime fetch with a machine config that allows plain HTTP to `server`.
    fn fetcher(&self, server: &HttpServer) -> Fetcher {
        let config = self.dir.join("machine.toml");
        std::fs::write(
            &config,
            format!("[registries]\ninsecure = [\"{}\"]\n", server.addr),
        )
        .unwrap();
        Fetcher {
            runtime_bin: common::runtime_bin(),
            machine_config: config,
        }
    }

    fn apply_from(&self, source: &str, fetcher: &Fetcher) -> Result<(), UpdateError> {
        let source = Source::classify(source).unwrap();
        assert!(matches!(source, Source::Remote(_)), "{source:?}");
        apply_from(&source, fetcher, &self.target, &self.policy, &mut |_| {}).map(|_| ())
    }
}

#[test]
fn a_bundle_from_an_http_url_is_applied_through_berth_runtime_fetch() {
    let Some(rig) = rig("http") else {
        eprintln!("veritysetup not installed; skipping");
        return;
    };
    let bundle = std::fs::read(rig.bundle(|_| {})).unwrap();
    let server = HttpServer::start(move |_| ok_answer(&bundle, bundle.len()));
    rig.apply_from(&server.url(), &rig.fetcher(&server))
        .unwrap();
    let esp = &rig.target.esp;
    assert_eq!(
        std::fs::read(esp.join("B/vmlinuz")).unwrap(),
        std::fs::read(&rig.opts.kernel).unwrap()
    );
    assert_eq!(rig.state().next_boot(), Some(Slot::B));
}

#[test]
fn a_failed_fetch_is_reported_with_its_reason_and_changes_nothing() {
    let Some(rig) = rig("http-404") else {
        eprintln!("veritysetup not installed; skipping");
        return;
    };
    let server = HttpServer::start(|_| {
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
    });
    let before = rig.snapshot();
    let err = rig
        .apply_from(&server.url(), &rig.fetcher(&server))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&server.url()) && text.contains("not found (HTTP 404)"),
        "{text}"
    );
    assert_eq!(before, rig.snapshot(), "{text}");
}

#[test]
fn a_fetch_that_fails_after_the_last_byte_fails_the_apply_before_the_slot_boots() {
    let Some(rig) = rig("http-late") else {
        eprintln!("veritysetup not installed; skipping");
        return;
    };
    // The whole bundle, but announced 10 bytes longer; the resume gets the whole file again
    // (no range support), so the fetch fails once every bundle byte has been read.
    let bundle = std::fs::read(rig.bundle(|_| {})).unwrap();
    let server = HttpServer::start(move |_| ok_answer(&bundle, bundle.len() + 10));
    let before = rig.snapshot();
    let err = rig
        .apply_from(&server.url(), &rig.fetcher(&server))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("berth-runtime fetch failed") && text.contains("instead of 206"),
        "{text}"
    );
    assert_eq!(before.0, rig.snapshot().0, "grubenv changed: {text}");
    assert_eq!(before.1, rig.snapshot().1, "ESP slot files changed: {text}");
    assert_eq!(rig.state().next_boot(), Some(Slot::A));
}

#[test]
fn a_fetched_bundle_refused_by_apply_reports_only_apply_s_reason() {
    let Some(rig) = rig("http-unknown-key") else {
        eprintln!("veritysetup not installed; skipping");
        return;
    };
    keys::generate(&rig.dir.join("elsewhere"), "other").unwrap();
    let bundle =
        std::fs::read(rig.bundle(|o| o.key = rig.dir.join("elsewhere/other.key"))).unwrap();
    let server = HttpServer::start(move |_| ok_answer(&bundle, bundle.len()));
    let before = rig.snapshot();
    // Refused at the header, while the fetch may still be streaming: it is stopped, and its
    // end is no reason of its own.
    let err = rig
        .apply_from(&server.url(), &rig.fetcher(&server))
        .unwrap_err();
    assert!(
        matches!(err, UpdateError::Bundle(BundleError::UnknownKey { .. })),
        "{err}"
    );
    assert_eq!(before, rig.snapshot());
}
