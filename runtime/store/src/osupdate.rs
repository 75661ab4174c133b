//! OS update bundles from the network: streamed from an HTTP(S) URL or from an OCI registry,
//! and published to a registry as an OCI artifact. berth-init's `update-apply` runs
//! `berth-runtime fetch SOURCE` and reads the bundle from its stdout, so the HTTP client
//! lives here, and the machine config's `[registries]` settings (CA bundle, insecure hosts,
//! mirrors, credentials, pull_timeout, min_rate) apply to updates as to images.
//!
//! Nothing is buffered beyond one chunk: the bundle goes to the output as it arrives. A
//! dropped connection is resumed with a ranged request from the first byte not yet written;
//! a server that does not answer with exactly that range fails the fetch, so no byte is ever
//! written twice. The consumer verifies the bundle's signature and hashes itself.
//!
//! The artifact: an OCI image manifest with `artifactType` [`ARTIFACT_TYPE`], the empty
//! config (`{}`), and one layer of media type [`BUNDLE_MEDIA_TYPE`], the bundle file as is.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::pull::verify_manifest;
use crate::registry::client::{Deadline, Payload};
use crate::registry::{self, Client, Reference};
use crate::spec::media;
use crate::spec::ManifestKind;

/// `artifactType` of a Berth update (also accepted as the config's media type).
pub const ARTIFACT_TYPE: &str = "application/vnd.berth.update.v1";
/// Media type of the one layer: the bundle file.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.berth.update.bundle.v1";
/// The OCI empty descriptor's media type and content.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_CONFIG: &[u8] = b"{}";
/// A bundle file starts with this.
const BUNDLE_MAGIC: &[u8] = b"BERTHUPD";
/// Resumes after a dropped connection that made no progress, in a row, before giving up.
pub const MAX_RESUMES: u32 = 5;
/// Bytes read and written at a time.
const CHUNK: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error(transparent)]
    Image(#[from] crate::Error),
    #[error(transparent)]
    Reference(#[from] registry::reference::ReferenceError),
    /// The source answered something Berth will not use.
    #[error("{source_name}: {reason}")]
    Refused { source_name: String, reason: String },
    #[error("{source_name}: writing the output: {error}")]
    Output {
        source_name: String,
        #[source]
        error: io::Error,
    },
    #[error("{}: {what}: {error}", path.display())]
    File {
        path: PathBuf,
        what: &'static str,
        #[source]
        error: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn refused(source_name: &str, reason: impl Into<String>) -> Error {
    Error::Refused {
        source_name: source_name.to_string(),
        reason: reason.into(),
    }
}

/// What a fetch source is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Url(String),
    Reference(Reference),
}

impl Source {
    /// `http://…` and `https://…` are URLs; anything else must be an image reference.
    pub fn parse(text: &str) -> Result<Source> {
        if text.starts_with("http://") || text.starts_with("https://") {
            Ok(Source::Url(text.to_string()))
        } else {
            Ok(Source::Reference(Reference::parse(text)?))
        }
    }
}

/// Streams the bundle at `source` to `out`; returns the bytes written.
pub fn fetch(client: &Client, source: &Source, out: &mut dyn Write) -> Result<u64> {
    match source {
        Source::Url(url) => fetch_url(client, url, out),
        Source::Reference(reference) => fetch_artifact(client, reference, out),
    }
}

/// One validator for `If-Range`: a strong ETag, else Last-Modified.
fn if_range(headers: &ureq::http::HeaderMap) -> Option<String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    // A weak ETag cannot validate a range (RFC 9110 13.1.5).
    get("etag")
        .filter(|e| !e.starts_with("W/"))
        .or_else(|| get("last-modified"))
}

/// `bytes START-END/TOTAL` → (START, TOTAL if given).
fn content_range(header: &str) -> Option<(u64, Option<u64>)> {
    let rest = header.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let start = range.split('-').next()?.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// `host[:port]` of a URL.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// GET `url` into `out`, resuming with `Range` + `If-Range` after a dropped connection.
fn fetch_url(client: &Client, url: &str, out: &mut dyn Write) -> Result<u64> {
    // Plain HTTP only for hosts the machine config lists as insecure, as for registries.
    if url.starts_with("http://") && !client.config().is_insecure(url_host(url)) {
        return Err(refused(
            url,
            format!(
                "plain HTTP is used only for hosts in registries.insecure (add {:?}, or use https)",
                url_host(url)
            ),
        ));
    }
    let deadline = client.pull_deadline();
    let response = client.get_url(url, &[], &deadline)?;
    let status = response.status().as_u16();
    if status != 200 {
        let reason = if status == 404 {
            "not found (HTTP 404)".to_string()
        } else {
            format!("HTTP {status}")
        };
        return Err(refused(url, reason));
    }
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let validator = if_range(response.headers());
    let first = client.body(response, url, &deadline);
    let reopen = |offset: u64| -> Result<Box<dyn Read>> {
        let mut headers = vec![("Range", format!("bytes={offset}-"))];
        if let Some(v) = &validator {
            headers.push(("If-Range", v.clone()));
        }
        let response = client.get_url(url, &headers, &deadline)?;
        let status = response.status().as_u16();
        let range = response
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(content_range);
        match (status, range) {
            (206, Some((start, size))) if start == offset && (total.is_none() || size == total) => {
                Ok(Box::new(client.body(response, url, &deadline)))
            }
            (206, _) => Err(refused(
                url,
                format!("resuming at byte {offset}: the answer is for another range"),
            )),
            (status, _) => Err(refused(
                url,
                format!(
                    "resuming at byte {offset}: HTTP {status} instead of 206 (no range support, \
                     or the file changed); bytes already written are not sent again"
                ),
            )),
        }
    };
    copy_resumable(url, Box::new(first), total, reopen, |_| {}, out)
}

/// Copies `body` to `out`; after a dropped connection (a read error, or the end before
/// `total`), `reopen(offset)` continues from `offset`. Fails when more than `total` comes.
fn copy_resumable(
    source_name: &str,
    mut body: Box<dyn Read>,
    total: Option<u64>,
    mut reopen: impl FnMut(u64) -> Result<Box<dyn Read>>,
    mut seen: impl FnMut(&[u8]),
    out: &mut dyn Write,
) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut failures = 0u32;
    let mut progressed = false;
    loop {
        let dropped = match body.read(&mut buf) {
            Ok(0) if total.is_none_or(|t| done >= t) => break,
            Ok(0) => format!("connection closed at byte {done} of {}", total.unwrap_or(0)),
            Ok(n) => {
                if total.is_some_and(|t| done + n as u64 > t) {
                    return Err(refused(
                        source_name,
                        format!("more data than the announced {} bytes", total.unwrap_or(0)),
                    ));
                }
                seen(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|error| Error::Output {
                    source_name: source_name.to_string(),
                    error,
                })?;
                done += n as u64;
                progressed = true;
                continue;
            }
            Err(e) => {
                let e = registry::Error::from_io(e, source_name);
                // Past the deadline or below the minimum rate: resuming would not help.
                if matches!(
                    e,
                    registry::Error::Deadline { .. } | registry::Error::TooSlow { .. }
                ) {
                    return Err(e.into());
                }
                match e {
                    registry::Error::BadResponse { reason, .. } => reason,
                    other => other.to_string(),
                }
            }
        };
        if progressed {
            failures = 0;
            progressed = false;
        }
        failures += 1;
        if failures > MAX_RESUMES {
            return Err(refused(
                source_name,
                format!("{dropped}; gave up after {MAX_RESUMES} attempts to resume"),
            ));
        }
        log::warn!("{source_name}: {dropped}; resuming at byte {done}");
        body = reopen(done)?;
    }
    out.flush().map_err(|error| Error::Output {
        source_name: source_name.to_string(),
        error,
    })?;
    Ok(done)
}

/// The parts of an OCI image manifest an update artifact is checked by.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactManifest {
    artifact_type: Option<String>,
    config: Option<ArtifactDescriptor>,
    #[serde(default)]
    layers: Vec<ArtifactDescriptor>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactDescriptor {
    media_type: String,
    digest: Digest,
    size: u64,
}

/// The bundle layer of a Berth update manifest, or why the manifest is not one.
fn bundle_layer(
    body: &[u8],
    kind: ManifestKind,
) -> std::result::Result<ArtifactDescriptor, String> {
    if kind != ManifestKind::Image {
        return Err("is an image index, not a Berth update artifact".into());
    }
    let m: ArtifactManifest = serde_json::from_slice(body).map_err(|e| format!("manifest: {e}"))?;
    let is_update = m.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
        || m.config.as_ref().map(|c| c.media_type.as_str()) == Some(ARTIFACT_TYPE);
    if !is_update {
        return Err(format!(
            "not a Berth update (artifactType {:?}, config mediaType {:?}; expected {ARTIFACT_TYPE})",
            m.artifact_type.as_deref().unwrap_or("none"),
            m.config.as_ref().map_or("none", |c| c.media_type.as_str()),
        ));
    }
    let mut layers = m.layers;
    match (layers.pop(), layers.is_empty()) {
        (Some(layer), true) if layer.media_type == BUNDLE_MEDIA_TYPE => Ok(layer),
        (Some(layer), true) => Err(format!(
            "its layer is {:?}, not {BUNDLE_MEDIA_TYPE}",
            layer.media_type
        )),
        _ => Err(format!(
            "a Berth update has exactly one layer ({BUNDLE_MEDIA_TYPE})"
        )),
    }
}

/// Streams the bundle layer of the update artifact `reference` to `out`, checking its digest.
fn fetch_artifact(client: &Client, reference: &Reference, out: &mut dyn Write) -> Result<u64> {
    let name = reference.to_string();
    let deadline = client.pull_deadline();
    let fetched = client.manifest(reference, &reference.manifest_ref(), &deadline)?;
    let (_, kind, _) = verify_manifest(&fetched, reference.digest.as_ref(), &name)?;
    let layer = bundle_layer(&fetched.body, kind).map_err(|reason| refused(&name, reason))?;
    let blob_name = format!("{}@{}", reference.name(), layer.digest);
    let open = |offset: u64| -> Result<Box<dyn Read>> {
        let response = client.blob(reference, &layer.digest, offset, &deadline)?;
        if response.offset != offset {
            return Err(refused(
                &blob_name,
                format!(
                    "resuming at byte {offset}: the registry sent the whole blob (no range \
                     support); bytes already written are not sent again"
                ),
            ));
        }
        Ok(response.body)
    };
    let first = open(0)?;
    let mut hasher = Hasher::new();
    let done = copy_resumable(
        &blob_name,
        first,
        Some(layer.size),
        open,
        |chunk| hasher.update(chunk),
        out,
    )?;
    let actual = hasher.finish();
    if actual != layer.digest {
        return Err(refused(
            &blob_name,
            format!("digest mismatch: the {done} bytes received hash to {actual}"),
        ));
    }
    Ok(done)
}

/// The digest and size of the file at `path`, read in chunks; checks the bundle magic.
fn hash_bundle(path: &Path) -> Result<(Digest, u64)> {
    let file_error = |what, error| Error::File {
        path: path.to_path_buf(),
        what,
        error,
    };
    let mut file = std::fs::File::open(path).map_err(|e| file_error("open", e))?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| file_error("read", e))?;
        if n == 0 {
            break;
        }
        if size == 0 && !buf[..n].starts_with(BUNDLE_MAGIC) {
            return Err(file_error(
                "not a Berth update bundle",
                io::Error::new(io::ErrorKind::InvalidData, "no BERTHUPD header"),
            ));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    if size == 0 {
        return Err(file_error(
            "not a Berth update bundle",
            io::Error::new(io::ErrorKind::InvalidData, "empty file"),
        ));
    }
    Ok((hasher.finish(), size))
}

/// The manifest of a Berth update artifact whose bundle is `digest`, `size` bytes.
fn artifact_manifest(digest: &Digest, size: u64) -> Vec<u8> {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": Digest::of_bytes(EMPTY_CONFIG).to_string(),
            "size": EMPTY_CONFIG.len(),
            "data": "e30=",
        },
        "layers": [{
            "mediaType": BUNDLE_MEDIA_TYPE,
            "digest": digest.to_string(),
            "size": size,
            "annotations": {"org.opencontainers.image.title": "update.bundle"},
        }],
    });
    manifest.to_string().into_bytes()
}

/// Publishes the bundle file at `path` as the update artifact `reference`; returns the
/// manifest's digest.
pub fn push_bundle(client: &Client, path: &Path, reference: &Reference) -> Result<Digest> {
    let (digest, size) = hash_bundle(path)?;
    let deadline: Deadline = client.pull_deadline();
    let empty = Digest::of_bytes(EMPTY_CONFIG);
    if !client.has_blob(reference, &empty, &deadline)? {
        client.upload_blob(reference, &empty, Payload::Bytes(EMPTY_CONFIG), &deadline)?;
    }
    if !client.has_blob(reference, &digest, &deadline)? {
        client.upload_blob(reference, &digest, Payload::File(path), &deadline)?;
    }
    let manifest = artifact_manifest(&digest, size);
    let manifest_digest = Digest::of_bytes(&manifest);
    // A digest names the manifest: it must be this one.
    if let Some(d) = &reference.digest {
        if *d != manifest_digest {
            return Err(refused(
                &reference.to_string(),
                format!("the artifact's manifest is {manifest_digest}, not the digest given"),
            ));
        }
    }
    let tag = reference
        .tag
        .clone()
        .unwrap_or_else(|| reference.manifest_ref());
    client.put_manifest(reference, &tag, media::OCI_MANIFEST, &manifest, &deadline)?;
    Ok(manifest_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range_and_hosts() {
        assert_eq!(content_range("bytes 5-9/10"), Some((5, Some(10))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("bytes */10"), None);
        assert_eq!(url_host("http://127.0.0.1:8080/a/b?c"), "127.0.0.1:8080");
        assert_eq!(url_host("https://u:p@example.com"), "example.com");
    }

    #[test]
    fn classifies_sources() {
        assert!(matches!(
            Source::parse("https://h/b").unwrap(),
            Source::Url(_)
        ));
        assert!(matches!(
            Source::parse("127.0.0.1:5000/os/update:1").unwrap(),
            Source::Reference(_)
        ));
        assert!(Source::parse("Not A Ref").is_err());
    }

    #[test]
    fn checks_the_artifact_manifest() {
        let d = Digest::of_bytes(b"x");
        let good = artifact_manifest(&d, 1);
        let layer = bundle_layer(&good, ManifestKind::Image).unwrap();
        assert_eq!((layer.digest, layer.size), (d.clone(), 1));
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["artifactType"] = "application/vnd.example".into();
        let e = bundle_layer(v.to_string().as_bytes(), ManifestKind::Image)
            .err()
            .unwrap();
        assert!(e.contains("not a Berth update"), "{e}");
        // The config's media type is accepted instead of artifactType.
        v["config"]["mediaType"] = ARTIFACT_TYPE.into();
        assert!(bundle_layer(v.to_string().as_bytes(), ManifestKind::Image).is_ok());
        let two = v["layers"][0].clone();
        v["layers"].as_array_mut().unwrap().push(two);
        let e = bundle_layer(v.to_string().as_bytes(), ManifestKind::Image)
            .err()
            .unwrap();
        assert!(e.contains("exactly one layer"), "{e}");
        assert!(bundle_layer(&good, ManifestKind::Index).is_err());
    }
}
