//! Garbage in: registries that are down, answer garbage, truncate or corrupt blobs, or serve
//! unknown media types. Each pull fails with a clear error and leaves no image behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_store::pull::{self, PullOptions};
use berth_store::registry::{self, Client, Reference, RegistriesConfig};
use berth_store::{Error, Store};
use support::http::{Request, Response, Server};
use support::{digest, gzip, TarBuilder, TempDir};

/// A one-layer image served by a fake registry, with knobs to make it misbehave.
#[derive(Clone)]
struct Fake {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
    /// Serve these bytes instead of the real layer.
    layer_override: Option<Vec<u8>>,
    cut_layer_after: Option<usize>,
    honour_ranges: bool,
    manifest_digest_header: Option<String>,
    /// Drip the manifest / the layer: (bytes, pause).
    manifest_drip: Option<(usize, Duration)>,
    layer_drip: Option<(usize, Duration)>,
}

impl Fake {
    fn new(layer_media_type: &str) -> Fake {
        let tar = TarBuilder::new()
            .file("hello", "hi\n")
            .file("big", &"x".repeat(200_000))
            .finish();
        let layer = gzip(&tar);
        Self::with(layer_media_type, layer, &digest(&tar))
    }

    fn with(layer_media_type: &str, layer: Vec<u8>, diff_id: &str) -> Fake {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest(&config), "size": config.len()},
            "layers": [{"mediaType": layer_media_type, "digest": digest(&layer), "size": layer.len()}],
        }))
        .unwrap();
        Fake {
            manifest,
            config,
            layer,
            layer_override: None,
            cut_layer_after: None,
            honour_ranges: true,
            manifest_digest_header: None,
            manifest_drip: None,
            layer_drip: None,
        }
    }

    fn serve(&self, r: &Request) -> Response {
        let blob = |data: &[u8]| {
            if let Some(start) = r
                .header("Range")
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.strip_suffix('-'))
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|_| self.honour_ranges)
            {
                return Response::new(206, data[start..].to_vec()).header(
                    "Content-Range",
                    &format!("bytes {start}-{}/{}", data.len() - 1, data.len()),
                );
            }
            Response::new(200, data.to_vec())
        };
        let path = r.path.as_str();
        if path.starts_with("/v2/test/app/manifests/") {
            let mut resp = Response::new(200, self.manifest.clone())
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json");
            if let Some(d) = &self.manifest_digest_header {
                resp = resp.header("Docker-Content-Digest", d);
            }
            resp.drip = self.manifest_drip;
            resp
        } else if path == format!("/v2/test/app/blobs/{}", digest(&self.config)) {
            blob(&self.config)
        } else if path == format!("/v2/test/app/blobs/{}", digest(&self.layer)) {
            let mut resp = blob(self.layer_override.as_ref().unwrap_or(&self.layer));
            resp.cut_after = self.cut_layer_after;
            resp.drip = self.layer_drip;
            resp
        } else {
            Response::new(
                404,
                r#"{"errors":[{"code":"NOT_FOUND","message":"no such thing"}]}"#,
            )
        }
    }

    fn start(self) -> Server {
        Server::start(move |r| self.serve(r))
    }
}

fn client(host: &str) -> Client {
    client_with(host, "")
}

/// A client with `limits` (keys of `[registries]`) in its config.
fn client_with(host: &str, limits: &str) -> Client {
    let mut config = RegistriesConfig::parse(&format!("[registries]\n{limits}\n")).unwrap();
    config.insecure = vec![host.to_string()];
    Client::new(config)
}

fn try_pull(store: &Store, host: &str) -> (berth_store::Result<berth_store::Image>, Vec<String>) {
    try_pull_with(store, host, &client(host))
}

fn try_pull_with(
    store: &Store,
    host: &str,
    client: &Client,
) -> (berth_store::Result<berth_store::Image>, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    let progress = move |l: &str| l2.lock().unwrap().push(l.to_string());
    let r = pull::pull(
        store,
        client,
        &Reference::parse(&format!("{host}/test/app:1")).unwrap(),
        &PullOptions::default(),
        &progress,
    );
    let lines = lines.lock().unwrap().clone();
    (r, lines)
}

/// No reference, no unpacked layer, no unpack in progress.
fn assert_no_image(store: &Store) {
    assert!(store.list().unwrap().is_empty(), "an image was recorded");
    assert!(store.index().unwrap().manifests.is_empty());
    let layers: Vec<_> = std::fs::read_dir(store.root().join("layers"))
        .unwrap()
        .collect();
    assert!(layers.is_empty(), "layers left: {layers:?}");
    for e in std::fs::read_dir(store.root().join("tmp")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("layer") && !name.starts_with("blob"),
            "tmp leftover {name}"
        );
    }
}

#[test]
fn registry_down_is_a_clear_error() {
    let t = TempDir::new("err-down");
    let store = Store::open(t.join("images")).unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (r, _) = try_pull(&store, &addr);
    let err = r.unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::Transport { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains(&addr), "{err}");
    assert_no_image(&store);
}

#[test]
fn garbage_answers_are_clear_errors() {
    let t = TempDir::new("err-garbage");
    let store = Store::open(t.join("images")).unwrap();
    let raw = Server::start(|_| Response {
        raw: Some(b"SSH-2.0-nonsense\r\n\x00\x01\x02garbage".to_vec()),
        ..Default::default()
    });
    let err = try_pull(&store, &raw.host()).0.unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::Transport { .. })),
        "{err:?}"
    );

    let html = Server::start(|_| {
        Response::new(200, "<html>hello</html>").header("Content-Type", "text/html")
    });
    let err = try_pull(&store, &html.host()).0.unwrap_err();
    assert!(matches!(err, Error::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("malformed JSON"), "{err}");

    let broken = Server::start(|_| {
        Response::new(
            500,
            r#"{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}"#,
        )
    });
    let err = try_pull(&store, &broken.host()).0.unwrap_err();
    assert!(
        err.to_string().contains("HTTP 500: UNKNOWN disk on fire"),
        "{err}"
    );

    let empty = Server::start(|_| Response::new(404, ""));
    let err = try_pull(&store, &empty.host()).0.unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::NotFound { .. })),
        "{err:?}"
    );
    assert_no_image(&store);
}

#[test]
fn corrupt_layer_is_a_digest_mismatch_and_nothing_is_kept() {
    let t = TempDir::new("err-digest");
    let store = Store::open(t.join("images")).unwrap();
    let mut fake = Fake::new("application/vnd.oci.image.layer.v1.tar+gzip");
    let mut evil = fake.layer.clone();
    let n = evil.len();
    evil[n / 2] ^= 0xff;
    fake.layer_override = Some(evil);
    let server = fake.start();
    let err = try_pull(&store, &server.host()).0.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert_no_image(&store);
    let partials = std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")
        })
        .count();
    assert_eq!(partials, 0, "a corrupt download was kept for resuming");
}

#[test]
fn wrong_diff_id_is_rejected_after_unpack_and_leaves_no_layer() {
    let t = TempDir::new("err-diffid");
    let store = Store::open(t.join("images")).unwrap();
    let tar = TarBuilder::new().file("a", "a").finish();
    let fake = Fake::with(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip(&tar),
        &digest(b"not the tar"),
    );
    let server = fake.start();
    let err = try_pull(&store, &server.host()).0.unwrap_err();
    assert!(err.to_string().contains("diff id"), "{err}");
    assert_no_image(&store);
}

#[test]
fn truncated_blob_fails_then_resumes_with_a_range_request() {
    let t = TempDir::new("err-truncated");
    let store = Store::open(t.join("images")).unwrap();
    let mut fake = Fake::new("application/vnd.oci.image.layer.v1.tar+gzip");
    let half = fake.layer.len() / 2;
    fake.cut_layer_after = Some(half);
    let server = fake.clone().start();
    let err = try_pull(&store, &server.host()).0.unwrap_err();
    assert!(err.to_string().contains(&digest(&fake.layer)), "{err}");
    assert_no_image(&store);
    drop(server);

    // The same registry, healthy again: the pull continues where it stopped.
    fake.cut_layer_after = None;
    let server = fake.clone().start();
    let (image, lines) = try_pull(&store, &server.host());
    let image = image.unwrap();
    assert!(lines.iter().any(|l| l.contains("resuming at")), "{lines:?}");
    assert_eq!(
        std::fs::read_to_string(image.layers[0].join("hello")).unwrap(),
        "hi\n"
    );
}

#[test]
fn registry_ignoring_ranges_restarts_the_download() {
    let t = TempDir::new("err-norange");
    let store = Store::open(t.join("images")).unwrap();
    let mut fake = Fake::new("application/vnd.oci.image.layer.v1.tar+gzip");
    fake.cut_layer_after = Some(fake.layer.len() / 3);
    let server = fake.clone().start();
    assert!(try_pull(&store, &server.host()).0.is_err());
    drop(server);
    fake.cut_layer_after = None;
    fake.honour_ranges = false;
    let server = fake.start();
    let (image, lines) = try_pull(&store, &server.host());
    image.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ignored the range, restarting")),
        "{lines:?}"
    );
}

#[test]
fn unknown_media_types_are_rejected_before_download() {
    let t = TempDir::new("err-media");
    let store = Store::open(t.join("images")).unwrap();
    let fake = Fake::new("application/vnd.example.weird+lz4");
    let layer_digest = digest(&fake.layer);
    let server = fake.start();
    let err = try_pull(&store, &server.host()).0.unwrap_err();
    assert!(matches!(err, Error::UnknownMediaType { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("application/vnd.example.weird+lz4"),
        "{err}"
    );
    assert!(!store.has_blob(&berth_store::Digest::parse(&layer_digest).unwrap()));
    assert_no_image(&store);
}

#[test]
fn manifest_not_matching_its_digest_header_is_rejected() {
    let t = TempDir::new("err-manifest");
    let store = Store::open(t.join("images")).unwrap();
    let mut fake = Fake::new("application/vnd.oci.image.layer.v1.tar+gzip");
    fake.manifest_digest_header = Some(digest(b"something else"));
    let server = fake.start();
    let err = try_pull(&store, &server.host()).0.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert_no_image(&store);
}

#[test]
fn complete_partial_download_is_committed_without_a_request() {
    let t = TempDir::new("err-complete-partial");
    let store = Store::open(t.join("images")).unwrap();
    let fake = Fake::new("application/vnd.oci.image.layer.v1.tar+gzip");
    let hex = digest(&fake.layer)[7..].to_string();
    std::fs::write(store.root().join(format!("tmp/{hex}.partial")), &fake.layer).unwrap();
    let layer_requests = Arc::new(Mutex::new(0));
    let counter = layer_requests.clone();
    let layer_path = format!("/blobs/sha256:{hex}");
    let server = Server::start(move |r| {
        if r.path.ends_with(&layer_path) {
            *counter.lock().unwrap() += 1;
        }
        fake.serve(r)
    });
    let (image, lines) = try_pull(&store, &server.host());
    image.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("completed from an earlier download")),
        "{lines:?}"
    );
    assert_eq!(
        *layer_requests.lock().unwrap(),
        0,
        "the layer was fetched again"
    );
}

/// Far below any deadline or rate these tests configure; only there to catch a hang.
const HANG: Duration = Duration::from_secs(60);

#[test]
fn dripping_layer_fails_at_the_pull_deadline() {
    let t = TempDir::new("err-drip-deadline");
    let store = Store::open(t.join("images")).unwrap();
    let mut fake = Fake::new("application/vnd.oci.image.layer.v1.tar+gzip");
    // Ten bytes a second: minutes for this layer, hours for a real one; no read ever waits
    // long enough for a per-read timeout.
    fake.layer_drip = Some((1, Duration::from_millis(100)));
    let server = fake.start();
    let client = client_with(&server.host(), "pull_timeout = \"2s\"\nmin_rate = \"0\"");
    let started = Instant::now();
    let err = try_pull_with(&store, &server.host(), &client)
        .0
        .unwrap_err();
    assert!(started.elapsed() < HANG, "took {:?}", started.elapsed());
    assert!(
        matches!(err, Error::Registry(registry::Error::Deadline { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("registries.pull_timeout"), "{err}");
    assert_no_image(&store);
}

#[test]
fn dripping_manifest_fails_below_the_minimum_rate() {
    let t = TempDir::new("err-drip-rate");
    let store = Store::open(t.join("images")).unwrap();
    let mut fake = Fake::new("application/vnd.oci.image.layer.v1.tar+gzip");
    fake.manifest_drip = Some((2, Duration::from_millis(50)));
    let server = fake.start();
    let client = client_with(
        &server.host(),
        "min_rate = \"1K\"\nmin_rate_window = \"1s\"",
    );
    let started = Instant::now();
    let err = try_pull_with(&store, &server.host(), &client)
        .0
        .unwrap_err();
    assert!(started.elapsed() < HANG, "took {:?}", started.elapsed());
    assert!(
        matches!(err, Error::Registry(registry::Error::TooSlow { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("below the minimum"), "{err}");
    assert_no_image(&store);
}

#[test]
fn silent_registry_fails_below_the_minimum_rate() {
    let t = TempDir::new("err-silent");
    let store = Store::open(t.join("images")).unwrap();
    let mut fake = Fake::new("application/vnd.oci.image.layer.v1.tar+gzip");
    // One byte, then silence far longer than the window.
    fake.layer_drip = Some((1, Duration::from_secs(10)));
    let server = fake.start();
    let client = client_with(
        &server.host(),
        "min_rate = \"1K\"\nmin_rate_window = \"1s\"",
    );
    let started = Instant::now();
    let err = try_pull_with(&store, &server.host(), &client)
        .0
        .unwrap_err();
    assert!(started.elapsed() < HANG, "took {:?}", started.elapsed());
    assert!(
        matches!(err, Error::Registry(registry::Error::TooSlow { .. })),
        "{err:?}"
    );
    assert_no_image(&store);
}

#[test]
fn oversized_manifest_is_refused() {
    let t = TempDir::new("err-huge-manifest");
    let store = Store::open(t.join("images")).unwrap();
    let server = Server::start(|_| {
        // Valid JSON start, then far more than any manifest.
        let mut body = b"{\"schemaVersion\":2,\"x\":\"".to_vec();
        body.resize(5 << 20, b'a');
        Response::new(200, body)
    });
    let err = try_pull(&store, &server.host()).0.unwrap_err();
    assert!(
        matches!(err, Error::Registry(registry::Error::TooLarge { .. })),
        "{err:?}"
    );
    assert_no_image(&store);
}

#[test]
fn layer_blob_not_decoding_to_an_unpacked_diff_id_is_refused() {
    let t = TempDir::new("err-known-diffid");
    let store = Store::open(t.join("images")).unwrap();
    // Image 1: layer L with diff id D, pulled and unpacked.
    let good = Fake::new("application/vnd.oci.image.layer.v1.tar+gzip");
    let diff_id = digest(&{
        TarBuilder::new()
            .file("hello", "hi\n")
            .file("big", &"x".repeat(200_000))
            .finish()
    });
    let server = good.clone().start();
    let image1 = try_pull(&store, &server.host()).0.unwrap();
    drop(server);

    // Image 2 claims D for a blob that is something else: correctly listed in its manifest
    // (digest and size match what is served), but it does not decode to D.
    let mut broken = good.layer.clone();
    let n = broken.len();
    broken[n / 2] ^= 0xff;
    let other = gzip(&TarBuilder::new().file("evil", "not D\n").finish());
    for blob in [broken, other] {
        let fake = Fake::with(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            blob,
            &diff_id,
        );
        let blob_digest = berth_store::Digest::parse(&digest(&fake.layer)).unwrap();
        let server = fake.start();
        let (result, _) = try_pull(&store, &server.host());
        let err = result.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("diff id") || text.contains("does not decompress"),
            "{err:?}"
        );
        assert!(text.contains(&blob_digest.to_string()), "{text}");
        assert!(!store.has_blob(&blob_digest), "an unverified blob was kept");
        let names: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|i| i.reference)
            .collect();
        assert_eq!(names, vec![image1.reference.clone()]);
    }

    // Image 1 still exports into an archive a fresh store accepts.
    let mut archive = Vec::new();
    berth_store::archive::export(
        &store,
        &store.resolve(&image1.reference).unwrap(),
        berth_store::archive::ArchiveFormat::Oci,
        &mut archive,
    )
    .unwrap();
    let fresh = Store::open(t.join("fresh")).unwrap();
    let imported = berth_store::archive::import(&fresh, &archive[..], None).unwrap();
    assert_eq!(imported.len(), 1);
}
