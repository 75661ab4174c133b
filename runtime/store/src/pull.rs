//! Pulling an image from a registry into the store.
//!
//! Manifest (or index → the linux/amd64 manifest) → config → layers, each verified against its
//! digest before it is stored. Layers download on a few threads at once; each is unpacked as
//! soon as it is complete. A download interrupted half-way stays in `tmp/<hex>.partial` and the
//! next pull resumes it with a ranged request (or restarts it if the registry ignores ranges).
//! The reference is written to `index.json` last: a pull that fails leaves no image behind,
//! only verified blobs and layers for a later pull (or `prune`) to reuse or remove. A layer
//! blob enters the store only once it has been decoded and found to match its diff id, even
//! when a layer of that diff id is unpacked already.
//!
//! A pull has one deadline (`pull_timeout`) shared by all its requests, and every body must
//! keep up a minimum rate (`min_rate`): a registry that drips its answers cannot hold it.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::fsutil::FileLock;
use crate::registry::client::{Deadline, ManifestResponse};
use crate::registry::{Client, Reference};
use crate::spec::{media, Descriptor, ImageConfig, Index, Manifest, ManifestKind, Platform};
use crate::store::{check_blob, Image, Store};
use crate::unpack::UnpackStats;

/// Where progress lines go (a unit's log, the terminal).
pub trait Progress: Sync {
    fn line(&self, text: &str);
}

impl<F: Fn(&str) + Sync> Progress for F {
    fn line(&self, text: &str) {
        self(text)
    }
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Layers downloaded at once.
    pub jobs: usize,
    pub platform: Platform,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            jobs: 3,
            platform: Platform::host(),
        }
    }
}

/// Pulls `reference` into `store` and returns the stored image.
pub fn pull(
    store: &Store,
    client: &Client,
    reference: &Reference,
    options: &PullOptions,
    progress: &dyn Progress,
) -> Result<Image> {
    let deadline = client.pull_deadline();
    let _lock = store.write_lock()?;
    let name = reference.to_string();
    let say = |text: String| progress.line(&format!("pull {name}: {text}"));
    say("resolving".into());

    let fetched = client.manifest(reference, &reference.manifest_ref(), &deadline)?;
    let (digest, kind, media_type) = verify_manifest(&fetched, reference.digest.as_ref(), &name)?;
    let (manifest_desc, manifest) = match kind {
        ManifestKind::Image => {
            let desc = Descriptor::new(&media_type, digest, fetched.body.len() as u64);
            (desc, fetched.body)
        }
        ManifestKind::Index => {
            let index: Index = parse_json(&fetched.body, &format!("{name}: index"))?;
            store.put_blob(&fetched.body, Some(&digest))?;
            let chosen = index
                .select(&options.platform)
                .ok_or_else(|| Error::NoPlatform {
                    reference: name.clone(),
                    wanted: options.platform.to_string(),
                    available: index.platforms().join(", "),
                })?;
            say(format!("{} manifest {}", options.platform, chosen.digest));
            let inner = client.manifest(reference, &chosen.digest.to_string(), &deadline)?;
            let (_, inner_kind, _) = verify_manifest(&inner, Some(&chosen.digest), &name)?;
            if inner_kind != ManifestKind::Image {
                return Err(Error::invalid(
                    &name,
                    "an index entry points at another index",
                ));
            }
            let mut desc = chosen.clone();
            desc.annotations.clear();
            (desc, inner.body)
        }
    };
    let manifest_json = manifest;
    let manifest: Manifest = parse_json(&manifest_json, &format!("{name}: manifest"))?;
    Store::check_media_types(&manifest, &name)?;

    // The config: small, fetched into memory and verified.
    let config_desc = &manifest.config;
    let config_json = fetch_small_blob(client, reference, config_desc, &deadline)?;
    let config: ImageConfig = parse_json(&config_json, &format!("{name}: config"))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(
            &name,
            format!(
                "config has {} diff ids for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        ));
    }
    let total: u64 = manifest.layers.iter().map(|l| l.size).sum();
    say(format!(
        "manifest {}, {} layer(s), {}",
        manifest_desc.digest,
        manifest.layers.len(),
        human_size(total)
    ));

    let fetch = Fetch {
        store,
        client,
        reference,
        deadline,
        say: &say,
    };
    download_layers(&fetch, &manifest, &config, options.jobs)?;

    store.put_blob(&config_json, Some(&config_desc.digest))?;
    store.put_blob(&manifest_json, Some(&manifest_desc.digest))?;
    store.tag(&name, &manifest_desc)?;
    say(format!("done, image {}", config_desc.digest));
    store.load(&name, &manifest_desc)
}

/// Checks a fetched manifest against the digest it must have and tells what it is: its
/// digest, kind and media type. Public so that its handling of hostile input can be tested
/// from outside.
pub fn verify_manifest(
    fetched: &ManifestResponse,
    expected: Option<&Digest>,
    name: &str,
) -> Result<(Digest, ManifestKind, String)> {
    let actual = Digest::of_bytes(&fetched.body);
    if let Some(expected) = expected {
        if &actual != expected {
            return Err(Error::DigestMismatch {
                what: format!("{name}: manifest"),
                expected: expected.clone(),
                actual,
            });
        }
    }
    if let Some(header) = &fetched.digest {
        if let Ok(claimed) = Digest::parse(header) {
            if claimed != actual {
                return Err(Error::DigestMismatch {
                    what: format!("{name}: manifest (Docker-Content-Digest)"),
                    expected: claimed,
                    actual,
                });
            }
        }
    }
    // The body's own mediaType wins over a generic Content-Type (e.g. application/json).
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = parse_json(&fetched.body, &format!("{name}: manifest"))?;
    let media_type = probe
        .media_type
        .clone()
        .or_else(|| fetched.media_type.clone())
        .unwrap_or_default();
    if probe.schema_version == Some(1)
        || matches!(
            media_type.as_str(),
            media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED
        )
    {
        return Err(Error::UnknownMediaType {
            what: format!("{name}: manifest (Docker schema 1 is not supported)"),
            media_type,
        });
    }
    let (kind, media_type) = match ManifestKind::of(&media_type) {
        Some(kind) => (kind, media_type),
        // OCI allows omitting mediaType; the shape tells.
        None if probe.media_type.is_none() && probe.schema_version == Some(2) => {
            if probe.manifests.is_some() {
                (ManifestKind::Index, media::OCI_INDEX.to_string())
            } else {
                (ManifestKind::Image, media::OCI_MANIFEST.to_string())
            }
        }
        None => {
            return Err(Error::UnknownMediaType {
                what: format!("{name}: manifest"),
                media_type,
            })
        }
    };
    Ok((actual, kind, media_type))
}

fn parse_json<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(data).map_err(|source| Error::Json {
        what: what.to_string(),
        source,
    })
}

fn fetch_small_blob(
    client: &Client,
    reference: &Reference,
    desc: &Descriptor,
    deadline: &Deadline,
) -> Result<Vec<u8>> {
    const MAX: u64 = 16 << 20;
    if desc.size > MAX {
        return Err(Error::invalid(
            format!("config {}", desc.digest),
            "larger than 16 MiB",
        ));
    }
    let response = client.blob(reference, &desc.digest, 0, deadline)?;
    let mut data = Vec::new();
    response
        .body
        .take(desc.size + 1)
        .read_to_end(&mut data)
        .map_err(|source| read_error(reference, &desc.digest, source))?;
    check_blob(
        &format!("config {}", desc.digest),
        Some(&desc.digest),
        Some(desc.size),
        &Digest::of_bytes(&data),
        data.len() as u64,
    )?;
    Ok(data)
}

/// A body read failed: the limit that stopped it (deadline, rate), or what the transport said.
fn read_error(reference: &Reference, digest: &Digest, e: io::Error) -> Error {
    let url = format!("{}/blobs/{digest}", reference.name());
    Error::Registry(crate::registry::Error::from_io(e, &url))
}

/// What every layer download of one pull shares.
struct Fetch<'a> {
    store: &'a Store,
    client: &'a Client,
    reference: &'a Reference,
    deadline: Deadline,
    say: &'a (dyn Fn(String) + Sync),
}

/// Downloads and unpacks every layer, `jobs` at a time. The first error stops the others.
fn download_layers(
    fetch: &Fetch<'_>,
    manifest: &Manifest,
    config: &ImageConfig,
    jobs: usize,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let work = || loop {
        if failed.load(Ordering::SeqCst) {
            return;
        }
        let i = next.fetch_add(1, Ordering::SeqCst);
        let (Some(layer), Some(diff_id)) = (manifest.layers.get(i), config.rootfs.diff_ids.get(i))
        else {
            return;
        };
        let result = fetch_layer(fetch, layer, diff_id).map(|unpacked| {
            if let Some(stats) = unpacked {
                (fetch.say)(format!(
                    "layer {} unpacked ({} entries)",
                    layer.digest.short(),
                    stats.entries
                ));
            }
        });
        if let Err(e) = result {
            failed.store(true, Ordering::SeqCst);
            if let Ok(mut slot) = first_error.lock() {
                slot.get_or_insert(e);
            }
            return;
        }
    };
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, 8).min(manifest.layers.len().max(1)) {
            s.spawn(work);
        }
    });
    match first_error.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(()),
        Err(_) => Err(Error::invalid("pull", "a download thread failed")),
    }
}

/// Downloads one layer blob unless the store has it, resuming a partial download, and
/// unpacks it (or, when the layer is there already, checks that the blob decodes to it).
fn fetch_layer(
    fetch: &Fetch<'_>,
    desc: &Descriptor,
    diff_id: &Digest,
) -> Result<Option<UnpackStats>> {
    let Fetch {
        store,
        client,
        reference,
        deadline,
        say,
    } = fetch;
    let short = desc.digest.short();
    if store.has_blob(&desc.digest) {
        say(format!("layer {short} already present"));
        return store.unpack_layer(desc, diff_id);
    }
    let partial = store
        .tmp_dir()
        .join(format!("{}.partial", desc.digest.hex()));
    let lock_path = store.tmp_dir().join(format!("{}.lock", desc.digest.hex()));
    // Two pulls of images sharing a layer: the second waits here, then finds the blob.
    let _lock = FileLock::exclusive(&lock_path).map_err(Error::io(&lock_path, "lock"))?;
    if store.has_blob(&desc.digest) {
        let _ = fs::remove_file(&lock_path);
        say(format!("layer {short} already present"));
        return store.unpack_layer(desc, diff_id);
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)
        .map_err(Error::io(&partial, "open"))?;
    let mut have = file.metadata().map_err(Error::io(&partial, "stat"))?.len();
    if have > desc.size {
        have = 0;
    }
    let mut hasher = Hasher::new();
    if have > 0 {
        // Re-hash what is already there: the final digest covers the whole blob.
        let mut prefix = (&mut file).take(have);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = prefix.read(&mut buf).map_err(Error::io(&partial, "read"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    if have == desc.size {
        // Complete but never committed (interrupted right before the rename).
        if hasher.clone().finish() == desc.digest {
            file.sync_all().map_err(Error::io(&partial, "fsync"))?;
            drop(file);
            say(format!("layer {short}: completed from an earlier download"));
            let unpacked = store.accept_layer_blob(&partial, desc, diff_id);
            let _ = fs::remove_file(&lock_path);
            return unpacked;
        }
        hasher = Hasher::new();
        have = 0;
    }
    let response = client.blob(reference, &desc.digest, have, deadline)?;
    if response.offset == 0 && have > 0 {
        say(format!(
            "layer {short}: registry ignored the range, restarting"
        ));
        hasher = Hasher::new();
        have = 0;
    } else if have > 0 {
        say(format!("layer {short}: resuming at {}", human_size(have)));
    } else {
        say(format!(
            "layer {short}: downloading {}",
            human_size(desc.size)
        ));
    }
    file.set_len(have)
        .map_err(Error::io(&partial, "truncate"))?;
    file.seek(SeekFrom::Start(have))
        .map_err(Error::io(&partial, "seek"))?;

    // Never read more than the descriptor promises (plus one byte to notice a longer blob).
    let mut body = response.body.take(desc.size - have + 1);
    let mut buf = vec![0u8; 128 << 10];
    let mut done = have;
    let mut next_report = desc.size / 4;
    loop {
        let n = match body.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                // Keep what arrived: the next pull resumes from here.
                let _ = file.sync_data();
                return Err(read_error(reference, &desc.digest, e));
            }
        };
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .map_err(Error::io(&partial, "write"))?;
        hasher.update(&buf[..n]);
        done += n as u64;
        if done >= next_report && done < desc.size {
            say(format!(
                "layer {short}: {}% of {}",
                done * 100 / desc.size.max(1),
                human_size(desc.size)
            ));
            next_report = done + desc.size / 4;
        }
    }
    let what = format!("layer {}", desc.digest);
    if done < desc.size {
        let _ = file.sync_data();
        return Err(Error::SizeMismatch {
            what: format!("{what} (truncated download, will resume)"),
            expected: desc.size,
            actual: done,
        });
    }
    let digest = hasher.finish();
    if let Err(e) = check_blob(&what, Some(&desc.digest), Some(desc.size), &digest, done) {
        drop(file);
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    file.sync_all().map_err(Error::io(&partial, "fsync"))?;
    drop(file);
    say(format!("layer {short}: downloaded"));
    let unpacked = store.accept_layer_blob(&partial, desc, diff_id);
    // Still holding the lock: a pull waiting on it will find the blob (or its absence, after
    // a failed check) and go on from there.
    let _ = fs::remove_file(&lock_path);
    unpacked
}

/// `1.5 MiB`, for progress lines.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: &str, media_type: Option<&str>) -> ManifestResponse {
        ManifestResponse {
            body: body.as_bytes().to_vec(),
            media_type: media_type.map(String::from),
            digest: None,
        }
    }

    #[test]
    fn classifies_manifests() {
        let oci = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert_eq!(
            verify_manifest(&response(oci, None), None, "x").unwrap().1,
            ManifestKind::Index
        );
        let bare = r#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            verify_manifest(&response(bare, Some("application/json")), None, "x")
                .unwrap()
                .1,
            ManifestKind::Image
        );
        let docker = r#"{"schemaVersion":2}"#;
        assert_eq!(
            verify_manifest(&response(docker, Some(media::DOCKER_MANIFEST)), None, "x")
                .unwrap()
                .1,
            ManifestKind::Image
        );
    }

    #[test]
    fn rejects_schema1_unknown_types_and_bad_digests() {
        let v1 = r#"{"schemaVersion":1,"name":"x"}"#;
        assert!(matches!(
            verify_manifest(&response(v1, None), None, "x"),
            Err(Error::UnknownMediaType { .. })
        ));
        let odd = r#"{"schemaVersion":2,"mediaType":"application/x-odd"}"#;
        assert!(matches!(
            verify_manifest(&response(odd, None), None, "x"),
            Err(Error::UnknownMediaType { .. })
        ));
        let ok = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
        let wrong = Digest::of_bytes(b"other");
        assert!(matches!(
            verify_manifest(&response(ok, None), Some(&wrong), "x"),
            Err(Error::DigestMismatch { .. })
        ));
        let mut with_header = response(ok, None);
        with_header.digest = Some(wrong.to_string());
        assert!(matches!(
            verify_manifest(&with_header, None, "x"),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(matches!(
            verify_manifest(&response("<html>", None), None, "x"),
            Err(Error::Json { .. })
        ));
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }
}
