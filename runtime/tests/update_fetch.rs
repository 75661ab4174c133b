//! `berth-runtime fetch` and `image push-bundle`: OS update bundles streamed from HTTP servers
//! on loopback (one that drops the connection mid-body and supports ranges, one that does
//! not), published to and fetched from Debian's docker-registry, and refused when a registry
//! serves something else than a Berth update or a blob that does not match its digest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use support::http::{Request, Response, Server};
use support::{berth_runtime, digest, make_certs, write_file, Registry, TempDir};

const ETAG: &str = "\"berth-bundle-1\"";

/// Bundle-like content: the magic, then bytes that differ at every offset.
fn bundle_bytes(len: usize) -> Vec<u8> {
    let mut b = b"BERTHUPD".to_vec();
    let mut x: u32 = 0x1234_5678;
    while b.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b.push((x >> 24) as u8);
    }
    b
}

/// A machine config that allows plain HTTP to `host`.
fn config(dir: &TempDir, host: &str) -> std::path::PathBuf {
    write_file(
        dir,
        "machine.toml",
        &format!("hostname = \"m\"\n[registries]\ninsecure = [\"{host}\"]\n"),
    )
}

fn fetch(config: &std::path::Path, source: &str) -> Output {
    berth_runtime()
        .arg("fetch")
        .arg("--config")
        .arg(config)
        .arg(source)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `206` for `Range: bytes=N-` of `data`.
fn partial(data: &[u8], range: &str) -> Response {
    let start: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    Response::new(206, data[start..].to_vec()).header(
        "Content-Range",
        &format!("bytes {start}-{}/{}", data.len() - 1, data.len()),
    )
}

#[test]
fn a_dropped_download_resumes_with_a_range_and_yields_the_file() {
    let data = Arc::new(bundle_bytes(3 << 20));
    let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
    let (d, seen) = (data.clone(), requests.clone());
    let server = Server::start(move |r| {
        seen.lock().unwrap().push(r.clone());
        let n = seen.lock().unwrap().len();
        match r.header("Range") {
            // Only a resume that names the same file gets the rest.
            Some(range) if r.header("If-Range") == Some(ETAG) => partial(&d, range),
            Some(_) => Response::new(412, "wrong validator"),
            None => Response {
                // Each full answer stops at a different point.
                cut_after: Some(d.len() / 3 + n),
                ..Response::new(200, d.to_vec()).header("ETag", ETAG)
            },
        }
    });
    let dir = TempDir::new("fetch-resume");
    let cfg = config(&dir, &server.host());
    let url = format!("http://{}/os/update.bundle", server.host());
    let out = fetch(&cfg, &url);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == *data, "output differs from the file");
    let requests = requests.lock().unwrap();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].header("Range"),
        Some(format!("bytes={}-", data.len() / 3 + 1).as_str())
    );
}

#[test]
fn a_server_without_range_support_fails_cleanly_without_repeating_bytes() {
    let data = Arc::new(bundle_bytes(1 << 20));
    let d = data.clone();
    // Every answer is the whole file, cut at the same point.
    let server = Server::start(move |_| Response {
        cut_after: Some(d.len() / 2),
        ..Response::new(200, d.to_vec()).header("Last-Modified", "Mon, 02 Nov 2026 10:00:00 GMT")
    });
    let dir = TempDir::new("fetch-norange");
    let cfg = config(&dir, &server.host());
    let url = format!("http://{}/update.bundle", server.host());
    let out = fetch(&cfg, &url);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&url) && err.contains("HTTP 200 instead of 206"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(out.stdout.len() <= data.len());
    assert!(
        data.starts_with(&out.stdout),
        "output is not a prefix of the file"
    );
}

#[test]
fn plain_http_needs_the_host_in_registries_insecure_and_usage_errors_exit_2() {
    let server = Server::start(|_| Response::new(200, bundle_bytes(100)));
    let dir = TempDir::new("fetch-insecure");
    let cfg = config(&dir, "127.0.0.1:1");
    let url = format!("http://{}/update.bundle", server.host());
    let out = fetch(&cfg, &url);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("registries.insecure"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());

    let out = berth_runtime().arg("fetch").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = fetch(&cfg, "Not A Reference");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_pushed_bundle_is_fetched_back_from_a_registry() {
    let reg = Registry::start();
    let dir = TempDir::new("fetch-registry");
    let cfg = config(&dir, &reg.addr);
    let data = bundle_bytes((2 << 20) + 77);
    let file = dir.join("update.bundle");
    std::fs::write(&file, &data).unwrap();
    let reference = format!("{}/berth/os:0.2.0", reg.addr);
    let push = berth_runtime()
        .arg("image")
        .arg("--config")
        .arg(&cfg)
        .arg("push-bundle")
        .arg(&file)
        .arg(&reference)
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", stderr(&push));
    let said = String::from_utf8_lossy(&push.stdout).into_owned();
    assert!(
        said.contains("pushed") && said.contains("sha256:"),
        "{said}"
    );

    let out = fetch(&cfg, &reference);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data, "fetched bundle differs");

    // By digest too, as printed by the push.
    let manifest_digest = said
        .split(['(', ')'])
        .find(|s| s.starts_with("sha256:"))
        .unwrap();
    let pinned = format!("{}/berth/os@{manifest_digest}", reg.addr);
    let out = fetch(&cfg, &pinned);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data, "fetched bundle differs");

    // A file that is not a bundle is not published.
    let junk = write_file(&dir, "junk", "not a bundle");
    let push = berth_runtime()
        .arg("image")
        .arg("--config")
        .arg(&cfg)
        .args(["push-bundle"])
        .arg(&junk)
        .arg(&reference)
        .output()
        .unwrap();
    assert_eq!(push.status.code(), Some(1));
    assert!(
        stderr(&push).contains("not a Berth update bundle"),
        "{}",
        stderr(&push)
    );
}

/// A registry on loopback serving one manifest and one blob; the blob's first answer can be
/// cut short, and ranges are honoured.
fn fake_registry(manifest: serde_json::Value, blob: Vec<u8>, cut_first: bool) -> Server {
    let manifest = manifest.to_string();
    let blob = Arc::new(blob);
    let blob_requests = AtomicUsize::new(0);
    Server::start(move |r| {
        if r.path.contains("/manifests/") {
            Response::new(200, manifest.clone())
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        } else if r.path.contains("/blobs/") {
            let n = blob_requests.fetch_add(1, Ordering::SeqCst);
            match r.header("Range") {
                Some(range) => partial(&blob, range),
                None => Response {
                    cut_after: (cut_first && n == 0).then_some(blob.len() / 2),
                    ..Response::new(200, blob.to_vec())
                },
            }
        } else {
            Response::new(404, "")
        }
    })
}

fn artifact_manifest(blob_digest: &str, size: usize, artifact_type: &str) -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": artifact_type,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": digest(b"{}"),
            "size": 2,
        },
        "layers": [{
            "mediaType": "application/vnd.berth.update.bundle.v1",
            "digest": blob_digest,
            "size": size,
        }],
    })
}

#[test]
fn a_registry_blob_cut_short_is_resumed_with_a_range() {
    let data = bundle_bytes(1 << 20);
    let m = artifact_manifest(
        &digest(&data),
        data.len(),
        "application/vnd.berth.update.v1",
    );
    let server = fake_registry(m, data.clone(), true);
    let dir = TempDir::new("fetch-blob-resume");
    let cfg = config(&dir, &server.host());
    let out = fetch(&cfg, &format!("{}/berth/os:1", server.host()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data, "fetched bundle differs");
}

#[test]
fn a_manifest_that_is_not_a_berth_update_is_refused() {
    let data = bundle_bytes(4096);
    let m = artifact_manifest(&digest(&data), data.len(), "application/vnd.example.other");
    let server = fake_registry(m, data, false);
    let dir = TempDir::new("fetch-not-update");
    let cfg = config(&dir, &server.host());
    let reference = format!("{}/berth/os:1", server.host());
    let out = fetch(&cfg, &reference);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&reference) && err.contains("not a Berth update"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_blob_that_does_not_match_its_digest_fails() {
    let data = bundle_bytes(256 << 10);
    let mut tampered = data.clone();
    tampered[1000] ^= 1;
    let m = artifact_manifest(
        &digest(&data),
        data.len(),
        "application/vnd.berth.update.v1",
    );
    let server = fake_registry(m, tampered, false);
    let dir = TempDir::new("fetch-tampered");
    let cfg = config(&dir, &server.host());
    let out = fetch(&cfg, &format!("{}/berth/os:1", server.host()));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("digest mismatch"), "{}", stderr(&out));
}

#[test]
fn over_https_the_configured_ca_bundle_is_trusted_for_pushes_references_and_urls() {
    let dir = TempDir::new("fetch-tls");
    let (ca, cert, key) = make_certs(&dir);
    let reg = Registry::start_with_tls(Some((&cert, &key)));
    let cfg = write_file(
        &dir,
        "machine.toml",
        &format!("[registries]\nca_bundle = \"{}\"\n", ca.display()),
    );
    let data = bundle_bytes(300_000);
    let file = dir.join("update.bundle");
    std::fs::write(&file, &data).unwrap();
    let reference = format!("{}/berth/os:1", reg.addr);
    let push = berth_runtime()
        .arg("image")
        .arg("--config")
        .arg(&cfg)
        .arg("push-bundle")
        .arg(&file)
        .arg(&reference)
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", stderr(&push));
    let out = fetch(&cfg, &reference);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data, "fetched bundle differs");
    // The blob as a plain URL: the same CA bundle applies.
    let url = format!("https://{}/v2/berth/os/blobs/{}", reg.addr, digest(&data));
    let out = fetch(&cfg, &url);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data, "fetched bundle differs");
    // Without the test CA the server is not trusted.
    let other = TempDir::new("fetch-tls-other");
    let (other_ca, _, _) = make_certs(&other);
    let untrusting = write_file(
        &dir,
        "other.toml",
        &format!("[registries]\nca_bundle = \"{}\"\n", other_ca.display()),
    );
    let out = fetch(&untrusting, &url);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
}
