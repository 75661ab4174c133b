//! Garbage collection: removes blobs and unpacked layers no tagged image and no lease needs,
//! and leftovers of interrupted pulls.
//!
//! Mark and sweep under the store's lock held exclusive: pulls and imports hold it shared for
//! their whole run, so the sweep never sees half-written content that is about to be tagged.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::spec::{ImageConfig, Index, Manifest, ManifestKind};
use crate::store::Store;

/// What a prune removed.
#[derive(Debug, Default, Clone, serde::Serialize, PartialEq, Eq)]
pub struct PruneReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub temp_removed: usize,
    pub bytes_freed: u64,
    /// Containers whose lease could not be read: while there is one, no blob or layer is
    /// removed (it could be the image that container runs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_leases: Vec<String>,
}

/// Removes everything unreferenced from `store`.
pub fn prune(store: &Store) -> Result<PruneReport> {
    let _lock = store.gc_lock()?;
    let mut keep_blobs = HashSet::new();
    let mut keep_layers = HashSet::new();
    let mut roots: Vec<Digest> = store
        .index()?
        .manifests
        .into_iter()
        .map(|d| d.digest)
        .collect();
    let mut report = PruneReport::default();
    for (container, digest) in store.leases()? {
        match digest {
            Some(d) => roots.push(d),
            None => report.unreadable_leases.push(container),
        }
    }
    // A lease that cannot be read holds an image nobody can name: deleting anything could
    // pull the layers from under a running container. Everything stays until the lease is
    // written again (its container's next start) or released.
    if report.unreadable_leases.is_empty() {
        for root in roots {
            mark(store, &root, &mut keep_blobs, &mut keep_layers, 0)?;
        }
        let kept = |set: &HashSet<Digest>, name: &str| {
            Digest::from_hex(name).is_some_and(|d| set.contains(&d))
        };
        let (n, bytes) = sweep(&store.blobs_dir(), |name| kept(&keep_blobs, name))?;
        report.blobs_removed = n;
        report.bytes_freed += bytes;
        report.layers_removed = sweep(&store.layers_dir(), |name| kept(&keep_layers, name))?.0;
    } else {
        log::warn!(
            "prune: no blob or layer removed while the lease(s) of {} cannot be read",
            report.unreadable_leases.join(", ")
        );
    }
    // Nothing writes while the lock is held exclusive: everything in tmp/ is a leftover.
    let (n, bytes) = sweep(&store.tmp_dir(), |_| false)?;
    report.temp_removed = n;
    report.bytes_freed += bytes;
    Ok(report)
}

/// Removes every entry of `dir` whose name `keep` rejects; returns how many and the bytes of
/// the plain files among them.
fn sweep(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<(usize, u64)> {
    let (mut removed, mut bytes) = (0, 0);
    for entry in fs::read_dir(dir).map_err(Error::io(dir, "read"))? {
        let entry = entry.map_err(Error::io(dir, "read"))?;
        if keep(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(Error::io(&path, "stat"))?;
        if meta.is_dir() {
            fs::remove_dir_all(&path).map_err(Error::io(&path, "remove"))?;
        } else {
            fs::remove_file(&path).map_err(Error::io(&path, "remove"))?;
            bytes += meta.len();
        }
        removed += 1;
    }
    Ok((removed, bytes))
}

/// Marks a manifest (or index) and everything it references.
fn mark(
    store: &Store,
    digest: &Digest,
    blobs: &mut HashSet<Digest>,
    layers: &mut HashSet<Digest>,
    depth: u32,
) -> Result<()> {
    if depth > 4 || !blobs.insert(digest.clone()) || !store.has_blob(digest) {
        return Ok(());
    }
    let data = store.read_blob(digest)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(&data).map_err(|source| Error::Json {
        what: format!("manifest {digest}"),
        source,
    })?;
    let is_index = match probe.media_type.as_deref().and_then(ManifestKind::of) {
        Some(kind) => kind == ManifestKind::Index,
        None => probe.manifests.is_some(),
    };
    let json_err = |source| Error::Json {
        what: format!("manifest {digest}"),
        source,
    };
    if is_index {
        let index: Index = serde_json::from_slice(&data).map_err(json_err)?;
        for child in &index.manifests {
            mark(store, &child.digest, blobs, layers, depth + 1)?;
        }
        return Ok(());
    }
    let manifest: Manifest = serde_json::from_slice(&data).map_err(json_err)?;
    blobs.insert(manifest.config.digest.clone());
    blobs.extend(manifest.layers.iter().map(|l| l.digest.clone()));
    if store.has_blob(&manifest.config.digest) {
        let config: ImageConfig = store.read_json(&manifest.config.digest, "image config")?;
        layers.extend(config.rootfs.diff_ids);
    }
    Ok(())
}
