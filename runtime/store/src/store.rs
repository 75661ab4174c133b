//! The image store: an OCI image layout plus unpacked layers, on the state partition.
//!
//! ```text
//! images/
//!   oci-layout              {"imageLayoutVersion":"1.0.0"}
//!   index.json              one manifest descriptor per reference, named by the
//!                           org.opencontainers.image.ref.name annotation (full reference)
//!   blobs/sha256/<hex>      manifests, configs, layer tarballs (content-addressed)
//!   layers/<diff-id hex>/   each layer unpacked once, shared by every image and container
//!   leases/<container-id>   manifest digest of an image a container uses (kept by GC)
//!   tmp/                    partial downloads and unpacks in progress (same filesystem,
//!                           so finished work is renamed into place atomically)
//!   gc.lock, index.lock     advisory locks
//! ```

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};
use crate::fsutil::{self, FileLock};
use crate::registry::reference::Reference;
use crate::spec::{
    media, Compression, Descriptor, ImageConfig, Index, Manifest, ANNOTATION_REF_NAME,
};
use crate::unpack::{self, UnpackStats};

/// Manifests and configs are small; refuse to load anything bigger as JSON.
const MAX_JSON_BLOB: u64 = 16 << 20;

/// An image store rooted at a directory (on Berth: `/var/lib/berth/images`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// An image in the store, resolved down to what a container needs.
#[derive(Debug, Clone)]
pub struct Image {
    /// The reference it was found under (normalised), e.g. `docker.io/library/nginx:latest`.
    pub reference: String,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    /// The config blob digest: the image ID.
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
}

impl Image {
    /// The image ID (digest of its config), as `docker images` shows it.
    pub fn id(&self) -> &Digest {
        &self.config_digest
    }

    /// The overlayfs `lowerdir=` value: layer directories top first, joined by `:`.
    pub fn lowerdir(&self) -> String {
        self.layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Mounts a container's root at `target`: an overlay of the image's layers (shared,
    /// never written) under `upper`, which takes the container's own changes; `work` is
    /// overlayfs' scratch directory on the same filesystem as `upper`. Missing directories
    /// are created.
    ///
    /// mount(2) copies at most one page of options, about 42 layers at Berth's layer paths;
    /// the new mount API adds the layers one at a time (`lowerdir+`, Linux 6.8), so images of
    /// any layer count the kernel takes (Docker allows 125) mount. Older kernels get mount(2)
    /// when the options fit.
    pub fn mount_root(&self, upper: &Path, work: &Path, target: &Path) -> Result<()> {
        for d in [upper, work, target] {
            fs::create_dir_all(d).map_err(Error::io(d, "create directory"))?;
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lowerdir(),
            upper.display(),
            work.display()
        );
        // mount(2) when the options fit its one page: a single call, on the path every boot's
        // first container takes.
        if data.len() < MOUNT_DATA_MAX {
            return nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(data.as_str()),
            )
            .map_err(|e| Error::io(target, "mount overlay")(e.into()));
        }
        // More layers than that page holds: the new mount API takes them one at a time.
        let lowers: Vec<&Path> = self.layers.iter().rev().map(PathBuf::as_path).collect();
        if mount_overlay_per_layer(&lowers, upper, work, target)? {
            return Ok(());
        }
        Err(Error::invalid(
            format!("image {}", self.reference),
            format!(
                "its {} layers need {} bytes of overlay options, more than the {} mount(2) \
                 takes, and this kernel's overlayfs lacks lowerdir+ (Linux 6.8)",
                self.layers.len(),
                data.len(),
                MOUNT_DATA_MAX - 1
            ),
        ))
    }

    /// Compressed size of the image's blobs (what a pull transfers).
    pub fn size(&self) -> u64 {
        self.manifest.config.size + self.manifest.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

/// One line of `image ls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageSummary {
    pub reference: String,
    pub id: Digest,
    pub manifest: Digest,
    pub size: u64,
    pub created: Option<String>,
}

impl Store {
    /// Opens the store at `root`, creating its layout if needed. The root is reachable by
    /// root only (created so; an existing one is tightened): layers keep the setuid bits and
    /// device nodes of their images, which no unprivileged host user may reach.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store { root: root.into() };
        fsutil::private_dir(&store.root)
            .map_err(Error::io(&store.root, "create store directory"))?;
        for dir in [
            store.root.clone(),
            store.blobs_dir(),
            store.layers_dir(),
            store.leases_dir(),
            store.tmp_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(Error::io(&dir, "create store directory"))?;
        }
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            fsutil::write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(Error::io(&layout, "write"))?;
        }
        let index = store.index_path();
        if !index.exists() {
            store.write_index(&Index::empty())?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub(crate) fn leases_dir(&self) -> PathBuf {
        self.root.join("leases")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex())
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).is_dir()
    }

    /// Held (shared) by every operation that adds content; GC takes it exclusive.
    pub fn write_lock(&self) -> Result<FileLock> {
        let p = self.root.join("gc.lock");
        FileLock::shared(&p).map_err(Error::io(&p, "lock"))
    }

    pub(crate) fn gc_lock(&self) -> Result<FileLock> {
        let p = self.root.join("gc.lock");
        FileLock::exclusive(&p).map_err(Error::io(&p, "lock"))
    }

    fn index_lock(&self) -> Result<FileLock> {
        let p = self.root.join("index.lock");
        FileLock::exclusive(&p).map_err(Error::io(&p, "lock"))
    }

    /// Stores `data` as a blob, checking it against `expected` when given.
    pub fn put_blob(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let (digest, _) = self.put_blob_reader(data, expected, None, "blob")?;
        Ok(digest)
    }

    /// Streams a blob into the store. Verified against `expected` (digest and size) before it
    /// becomes visible; on any error nothing is left behind.
    pub fn put_blob_reader(
        &self,
        reader: impl Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        if let Some(d) = expected {
            if self.has_blob(d) {
                return Ok((d.clone(), blob_len(&self.blob_path(d))?));
            }
        }
        let tmp = self.tmp_dir().join(fsutil::unique_name("blob"));
        let result = (|| {
            let mut file = File::create(&tmp).map_err(Error::io(&tmp, "create"))?;
            let mut hashing = HashingReader::new(reader);
            io::copy(&mut hashing, &mut file).map_err(Error::io(&tmp, "write"))?;
            let (digest, size) = hashing.finish().map_err(Error::io(&tmp, "write"))?;
            check_blob(what, expected, expected_size, &digest, size)?;
            file.sync_all().map_err(Error::io(&tmp, "fsync"))?;
            self.commit_blob_file(&tmp, &digest)?;
            Ok((digest, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Moves an already verified and synced file into the blob directory.
    pub(crate) fn commit_blob_file(&self, verified: &Path, digest: &Digest) -> Result<()> {
        let dest = self.blob_path(digest);
        fs::rename(verified, &dest).map_err(Error::io(&dest, "rename blob into place"))?;
        fsutil::fsync_dir(&self.blobs_dir()).map_err(Error::io(self.blobs_dir(), "fsync"))
    }

    /// Reads a small blob, verifying its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(digest.to_string()),
            _ => Error::Io {
                path: path.clone(),
                op: "open",
                source: e,
            },
        })?;
        let mut data = Vec::new();
        file.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut data)
            .map_err(Error::io(&path, "read"))?;
        if data.len() as u64 > MAX_JSON_BLOB {
            return Err(Error::invalid(
                digest,
                "blob too large to be a manifest or config",
            ));
        }
        let actual = Digest::of_bytes(&data);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("stored blob {}", path.display()),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Reads and parses a JSON blob, verifying its digest.
    pub fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        digest: &Digest,
        what: &str,
    ) -> Result<T> {
        let data = self.read_blob(digest)?;
        serde_json::from_slice(&data).map_err(|source| Error::Json {
            what: format!("{what} {digest}"),
            source,
        })
    }

    /// Unpacks the layer blob `blob` (already in the store) as `layers/<diff_id>/`, unless that
    /// layer is already there. The compressed digest and the diff id are both checked while
    /// the tarball streams; the layer directory appears (by rename) only once both match.
    /// When the layer is there already, the blob is still decoded and checked: an image must
    /// not name a blob that does not decode to its diff id (export would ship it).
    pub fn unpack_layer(&self, blob: &Descriptor, diff_id: &Digest) -> Result<Option<UnpackStats>> {
        self.unpack_layer_file(&self.blob_path(&blob.digest), blob, diff_id)
    }

    /// Verifies the downloaded layer blob `file` (digest, size, and that it decodes to
    /// `diff_id`), unpacks it unless the layer is there, and only then moves it into the blob
    /// directory. On any error the file is removed: a blob is accepted only once verified.
    pub(crate) fn accept_layer_blob(
        &self,
        file: &Path,
        blob: &Descriptor,
        diff_id: &Digest,
    ) -> Result<Option<UnpackStats>> {
        let result = self
            .unpack_layer_file(file, blob, diff_id)
            .and_then(|stats| self.commit_blob_file(file, &blob.digest).map(|()| stats));
        if result.is_err() {
            let _ = fs::remove_file(file);
        }
        result
    }

    fn unpack_layer_file(
        &self,
        file: &Path,
        blob: &Descriptor,
        diff_id: &Digest,
    ) -> Result<Option<UnpackStats>> {
        if Compression::of_layer(&blob.media_type).is_none() {
            return Err(Error::UnknownMediaType {
                what: format!("layer {}", blob.digest),
                media_type: blob.media_type.clone(),
            });
        }
        if self.has_layer(diff_id) {
            self.verify_layer(file, blob, diff_id, None)?;
            return Ok(None);
        }
        let tmp = self
            .tmp_dir()
            .join(fsutil::unique_name(&format!("layer-{}", diff_id.short())));
        fs::create_dir(&tmp).map_err(Error::io(&tmp, "create"))?;
        let result = self.verify_layer(file, blob, diff_id, Some(&tmp));
        let result = result.and_then(|stats| {
            let dest = self.layer_dir(diff_id);
            match fs::rename(&tmp, &dest) {
                Ok(()) => {}
                // Another pull unpacked the same layer meanwhile: keep theirs.
                Err(e) if dest.is_dir() && is_exists(&e) => {
                    let _ = fs::remove_dir_all(&tmp);
                }
                Err(e) => return Err(Error::io(&dest, "rename layer into place")(e)),
            }
            fsutil::fsync_dir(&self.layers_dir()).map_err(Error::io(self.layers_dir(), "fsync"))?;
            Ok(Some(stats))
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Streams the layer blob at `path` through its decompressor, unpacking it into `dest`
    /// when given, and checks both its digest and size and its diff id.
    fn verify_layer(
        &self,
        path: &Path,
        blob: &Descriptor,
        diff_id: &Digest,
        dest: Option<&Path>,
    ) -> Result<UnpackStats> {
        let file = File::open(path).map_err(Error::io(path, "open layer blob"))?;
        let mut compressed = BufReader::with_capacity(256 << 10, HashingReader::new(file));
        let stats = {
            let decompressed =
                unpack::decompress(&mut compressed).map_err(Error::io(path, "read layer"))?;
            let mut tar = HashingReader::new(decompressed);
            let stats = match dest {
                Some(dest) => unpack::unpack(&mut tar, dest)?,
                None => UnpackStats::default(),
            };
            let (actual, _) = tar.finish().map_err(|e| {
                Error::invalid(
                    format!("layer {}", blob.digest),
                    format!("does not decompress: {e}"),
                )
            })?;
            if &actual != diff_id {
                return Err(Error::DigestMismatch {
                    what: format!("layer {} uncompressed (diff id)", blob.digest),
                    expected: diff_id.clone(),
                    actual,
                });
            }
            stats
        };
        io::copy(&mut compressed, &mut io::sink()).map_err(Error::io(path, "read layer"))?;
        let (actual, size) = compressed
            .into_inner()
            .finish()
            .map_err(Error::io(path, "read layer"))?;
        check_blob(
            &format!("layer {}", blob.digest),
            Some(&blob.digest),
            Some(blob.size),
            &actual,
            size,
        )?;
        if let Some(dest) = dest {
            syncfs(dest)?;
        }
        Ok(stats)
    }

    /// The store's `index.json`.
    pub fn index(&self) -> Result<Index> {
        let path = self.index_path();
        let data = fs::read(&path).map_err(Error::io(&path, "read"))?;
        serde_json::from_slice(&data).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let path = self.index_path();
        let data = serde_json::to_vec_pretty(index).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })?;
        fsutil::write_atomic(&path, &data).map_err(Error::io(&path, "write"))
    }

    /// Points `reference` at `manifest` (replacing what it pointed at before).
    pub fn tag(&self, reference: &str, manifest: &Descriptor) -> Result<()> {
        let _lock = self.index_lock()?;
        let mut index = self.index()?;
        index.manifests.retain(|d| ref_name(d) != Some(reference));
        let mut entry = manifest.clone();
        entry
            .annotations
            .insert(ANNOTATION_REF_NAME.to_string(), reference.to_string());
        index.manifests.push(entry);
        self.write_index(&index)
    }

    /// Removes `reference`; false when it was not there.
    pub fn untag(&self, reference: &str) -> Result<bool> {
        let _lock = self.index_lock()?;
        let mut index = self.index()?;
        let before = index.manifests.len();
        index.manifests.retain(|d| ref_name(d) != Some(reference));
        if index.manifests.len() == before {
            return Ok(false);
        }
        self.write_index(&index)?;
        Ok(true)
    }

    /// Every tagged image.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let mut out = Vec::new();
        for d in self.index()?.manifests {
            let Some(name) = ref_name(&d) else { continue };
            let image = self.load(name, &d)?;
            out.push(ImageSummary {
                reference: name.to_string(),
                id: image.config_digest.clone(),
                manifest: d.digest.clone(),
                size: image.size(),
                created: image.config.created.clone(),
            });
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Finds an image by reference (normalised: `busybox` finds
    /// `docker.io/library/busybox:latest`), by `name@digest`, by manifest digest, or by an
    /// image ID (config digest) or a prefix of at least 6 hex digits of it.
    pub fn resolve(&self, name: &str) -> Result<Image> {
        let index = self.index()?;
        if let Ok(reference) = Reference::parse(name) {
            if let Some(d) = find_reference(&index, &reference) {
                return self.load(&reference.to_string(), d);
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found: Vec<(&str, &Descriptor)> = Vec::new();
            for d in &index.manifests {
                let Some(r) = ref_name(d) else { continue };
                let matches = d.digest.hex().starts_with(hex) || {
                    let manifest: Manifest = self.read_json(&d.digest, "manifest")?;
                    manifest.config.digest.hex().starts_with(hex)
                };
                if matches {
                    found.push((r, d));
                }
            }
            // Several names of one image are fine; a prefix of two images names neither.
            if let Some((r, d)) = found.first() {
                if let Some((other, _)) = found.iter().find(|(_, o)| o.digest != d.digest) {
                    return Err(Error::invalid(
                        format!("image ID {hex}"),
                        format!("ambiguous: matches {r} and {other}; give more digits"),
                    ));
                }
                return self.load(r, d);
            }
        }
        let shown = Reference::parse(name).map_or(name.to_string(), |r| r.to_string());
        Err(Error::NotFound(shown))
    }

    /// Finds the image a parsed reference names (`name:tag`, or `name@digest` under any tag
    /// of that repository): for callers that hold a typed [`Reference`] already.
    pub fn resolve_reference(&self, reference: &Reference) -> Result<Image> {
        let index = self.index()?;
        match find_reference(&index, reference) {
            Some(d) => self.load(&reference.to_string(), d),
            None => Err(Error::NotFound(reference.to_string())),
        }
    }

    /// Loads the image `manifest` points at; every layer must be unpacked.
    pub fn load(&self, reference: &str, manifest: &Descriptor) -> Result<Image> {
        let m: Manifest = self.read_json(&manifest.digest, "manifest")?;
        let config: ImageConfig = self.read_json(&m.config.digest, "image config")?;
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(Error::invalid(
                format!("image {reference}"),
                format!(
                    "config lists {} diff ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    m.layers.len()
                ),
            ));
        }
        let mut layers = Vec::with_capacity(m.layers.len());
        for diff_id in &config.rootfs.diff_ids {
            let dir = self.layer_dir(diff_id);
            if !dir.is_dir() {
                return Err(Error::invalid(
                    format!("image {reference}"),
                    format!("layer {diff_id} is not unpacked"),
                ));
            }
            layers.push(dir);
        }
        Ok(Image {
            reference: reference.to_string(),
            manifest_digest: manifest.digest.clone(),
            config_digest: m.config.digest.clone(),
            manifest: m,
            config,
            layers,
        })
    }

    /// Records that container `container_id` uses `image`: GC keeps its blobs and layers until
    /// [`Store::release`]. Survives reboots (a file under `leases/`).
    pub fn lease(&self, container_id: &str, image: &Image) -> Result<()> {
        let path = self.lease_path(container_id)?;
        let digest = image.manifest_digest.to_string();
        // Most starts find the lease of their last start (or the one an image build
        // recorded): no write, so a boot's first container start writes nothing to the disk.
        // Only a regular file of the digest's length is read (never a FIFO or a big file).
        let same = fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_file() && m.len() == digest.len() as u64)
            && fs::read(&path).is_ok_and(|held| held == digest.as_bytes());
        if same {
            return Ok(());
        }
        // Rewritten when it changes: no fsync. A lease lost in a crash is written again when
        // the container starts after the reboot.
        fsutil::write_replace(&path, digest.as_bytes()).map_err(Error::io(&path, "write lease"))
    }

    /// Drops the lease of `container_id` (no error if it had none).
    pub fn release(&self, container_id: &str) -> Result<()> {
        let path = self.lease_path(container_id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, "remove lease")(e)),
        }
    }

    /// `(container id, manifest digest)` of every lease. The digest is `None` for a lease
    /// that cannot be read as one: not a regular file, unreadable, or not a digest (leases
    /// are written without fsync, so a power loss can leave one empty). Such a lease holds an
    /// image nobody can name: [`crate::gc::prune`] then keeps every blob and layer, and image
    /// removal goes ahead. The container's next start writes its lease again.
    pub fn leases(&self) -> Result<Vec<(String, Option<Digest>)>> {
        let dir = self.leases_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(Error::io(&dir, "read"))? {
            let entry = entry.map_err(Error::io(&dir, "read"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let digest = read_lease(&path);
            if let Err(reason) = &digest {
                log::warn!(
                    "lease {}: {reason}; it counts as holding any image",
                    path.display()
                );
            }
            out.push((name, digest.ok()));
        }
        Ok(out)
    }

    fn lease_path(&self, container_id: &str) -> Result<PathBuf> {
        let ok = !container_id.is_empty()
            && container_id.len() <= 128
            && !container_id.starts_with('.')
            && container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            return Err(Error::invalid(
                format!("container id {container_id:?}"),
                "must be 1-128 of [A-Za-z0-9_.-], not starting with '.'",
            ));
        }
        Ok(self.leases_dir().join(container_id))
    }

    /// Writes `data` as a JSON blob of `media_type` and returns its descriptor.
    pub(crate) fn put_json_blob(&self, media_type: &str, data: &[u8]) -> Result<Descriptor> {
        let digest = self.put_blob(data, None)?;
        Ok(Descriptor::new(media_type, digest, data.len() as u64))
    }

    /// Checks that a manifest's config and layers have media types Berth handles.
    pub(crate) fn check_media_types(manifest: &Manifest, what: &str) -> Result<()> {
        if !matches!(
            manifest.config.media_type.as_str(),
            media::OCI_CONFIG | media::DOCKER_CONFIG
        ) {
            return Err(Error::UnknownMediaType {
                what: format!("{what}: config"),
                media_type: manifest.config.media_type.clone(),
            });
        }
        for layer in &manifest.layers {
            if Compression::of_layer(&layer.media_type).is_none() {
                return Err(Error::UnknownMediaType {
                    what: format!("{what}: layer {}", layer.digest),
                    media_type: layer.media_type.clone(),
                });
            }
        }
        Ok(())
    }
}

/// mount(2) copies one page of options, NUL included.
const MOUNT_DATA_MAX: usize = 4096;

/// Mounts an overlay of `lowers` (top first) at `target` with the new mount API, one lower
/// layer per `lowerdir+`, for more layers than mount(2)'s options hold. `Ok(false)`: this
/// kernel lacks the API or `lowerdir+` (nothing is mounted).
fn mount_overlay_per_layer(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<bool> {
    use nix::errno::Errno;
    let fs = match newmount::fsopen("overlay") {
        Ok(fd) => fd,
        Err(Errno::ENOSYS) => return Ok(false),
        Err(e) => return Err(Error::io(target, "fsopen overlay")(e.into())),
    };
    for (i, dir) in lowers.iter().enumerate() {
        match newmount::set_string(&fs, "lowerdir+", dir.as_os_str()) {
            Ok(()) => {}
            // An unknown key: overlayfs before Linux 6.8.
            Err(Errno::EINVAL) if i == 0 => return Ok(false),
            Err(e) => return Err(Error::io(*dir, "add overlay lower layer")(e.into())),
        }
    }
    newmount::set_string(&fs, "upperdir", upper.as_os_str())
        .map_err(|e| Error::io(upper, "set overlay upperdir")(e.into()))?;
    newmount::set_string(&fs, "workdir", work.as_os_str())
        .map_err(|e| Error::io(work, "set overlay workdir")(e.into()))?;
    newmount::create(&fs).map_err(|e| Error::io(target, "create overlay")(e.into()))?;
    let mnt = newmount::fsmount(&fs).map_err(|e| Error::io(target, "fsmount overlay")(e.into()))?;
    newmount::move_to(&mnt, target).map_err(|e| Error::io(target, "mount overlay")(e.into()))?;
    Ok(true)
}

/// The new mount API (Linux 5.2): nix has no wrappers and libc only the syscall numbers and
/// constants, so these are thin `syscall(2)` calls.
mod newmount {
    use std::ffi::OsStr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::path::Path;

    use nix::errno::Errno;
    use nix::NixPath;

    /// A descriptor returned by a syscall (or its errno).
    fn owned(rc: libc::c_long) -> nix::Result<OwnedFd> {
        let fd = Errno::result(rc)?;
        let fd = libc::c_int::try_from(fd).map_err(|_| Errno::EBADF)?;
        // SAFETY: the kernel just returned `fd`, an open descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn fsopen(fs_name: &str) -> nix::Result<OwnedFd> {
        let rc = OsStr::new(fs_name).with_nix_path(|name| {
            // SAFETY: `name` is a NUL-terminated string living across the call.
            unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), libc::FSOPEN_CLOEXEC) }
        })?;
        owned(rc)
    }

    /// `FSCONFIG_SET_STRING key=value`.
    pub fn set_string(fs: &OwnedFd, key: &str, value: &OsStr) -> nix::Result<()> {
        let rc = OsStr::new(key).with_nix_path(|k| {
            value.with_nix_path(|v| {
                // SAFETY: `k` and `v` are NUL-terminated strings living across the call;
                // `fs` is an open filesystem context.
                unsafe {
                    libc::syscall(
                        libc::SYS_fsconfig,
                        fs.as_raw_fd(),
                        libc::FSCONFIG_SET_STRING,
                        k.as_ptr(),
                        v.as_ptr(),
                        0,
                    )
                }
            })
        })??;
        Errno::result(rc).map(drop)
    }

    /// `FSCONFIG_CMD_CREATE`: the superblock, from the parameters set so far.
    pub fn create(fs: &OwnedFd) -> nix::Result<()> {
        // SAFETY: `fs` is an open filesystem context; key and value are unused (null).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                libc::FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        Errno::result(rc).map(drop)
    }

    /// A detached mount of the created filesystem.
    pub fn fsmount(fs: &OwnedFd) -> nix::Result<OwnedFd> {
        // SAFETY: `fs` is an open filesystem context; no flags besides close-on-exec.
        owned(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                fs.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                0 as libc::c_uint,
            )
        })
    }

    /// Attaches the detached mount `mnt` at `target`.
    pub fn move_to(mnt: &OwnedFd, target: &Path) -> nix::Result<()> {
        let rc = target.with_nix_path(|to| {
            // SAFETY: the empty string and `to` are NUL-terminated and live across the call;
            // `mnt` is an open mount descriptor.
            unsafe {
                libc::syscall(
                    libc::SYS_move_mount,
                    mnt.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                )
            }
        })?;
        Errno::result(rc).map(drop)
    }
}

/// The digest in the lease file at `path`, or why there is none.
fn read_lease(path: &Path) -> std::result::Result<Digest, String> {
    // A digest is 71 bytes; only a small regular file is read (never a FIFO, never a big one).
    const MAX_LEASE: u64 = 256;
    let meta = fs::symlink_metadata(path).map_err(|e| format!("stat: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_LEASE {
        return Err("not a small regular file".to_string());
    }
    let text = fs::read_to_string(path).map_err(|e| format!("read: {e}"))?;
    Digest::parse(text.trim()).map_err(|e| e.to_string())
}

/// The reference an `index.json` entry is stored under.
/// The index entry of `reference`: by its name, or for `name@digest` by the digest under any
/// name of the same repository.
fn find_reference<'a>(index: &'a Index, reference: &Reference) -> Option<&'a Descriptor> {
    let key = reference.to_string();
    if let Some(d) = index
        .manifests
        .iter()
        .find(|d| ref_name(d) == Some(key.as_str()))
    {
        return Some(d);
    }
    let digest = reference.digest.as_ref()?;
    index.manifests.iter().find(|d| {
        &d.digest == digest
            && ref_name(d)
                .and_then(|r| Reference::parse(r).ok())
                .is_some_and(|r| {
                    r.registry == reference.registry && r.repository == reference.repository
                })
    })
}

pub(crate) fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str)
}

pub(crate) fn check_blob(
    what: &str,
    expected: Option<&Digest>,
    expected_size: Option<u64>,
    actual: &Digest,
    size: u64,
) -> Result<()> {
    if let Some(expected_size) = expected_size {
        if expected_size != size {
            return Err(Error::SizeMismatch {
                what: what.to_string(),
                expected: expected_size,
                actual: size,
            });
        }
    }
    if let Some(expected) = expected {
        if expected != actual {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
    }
    Ok(())
}

fn blob_len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path).map_err(Error::io(path, "stat"))?.len())
}

fn is_exists(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY))
}

/// Flushes a freshly unpacked layer with one `syncfs` instead of an fsync per file.
fn syncfs(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(Error::io(dir, "open"))?;
    // SAFETY: plain syscall on an open descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(Error::io(dir, "syncfs")(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_an_id_prefix_of_two_images() {
        let dir = std::env::temp_dir().join(format!("berth-store-prefix-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let digest =
            |last: char| Digest::from_hex(&format!("abcdef{}{last}", "0".repeat(57))).unwrap();
        let one = Descriptor::new(media::OCI_MANIFEST, digest('1'), 2);
        store.tag("localhost/a:1", &one).unwrap();
        store.tag("localhost/a:2", &one).unwrap();
        store
            .tag(
                "localhost/b:1",
                &Descriptor::new(media::OCI_MANIFEST, digest('2'), 2),
            )
            .unwrap();
        let err = store.resolve("abcdef").unwrap_err();
        let text = err.to_string();
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(err, Error::Invalid { .. }) && text.contains("ambiguous"),
            "{text}"
        );
        assert!(
            text.contains("localhost/a:1") && text.contains("localhost/b:1"),
            "{text}"
        );
    }
}
