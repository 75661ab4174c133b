//! Import and export of image tarballs: `docker save` archives (a `manifest.json` naming
//! config and layer files) and OCI archives (an OCI image layout in a tar).
//!
//! Import streams the tarball once: every regular file is hashed into the blob store as it
//! is read (a file under `blobs/sha256/<hex>` must match its name), so archive paths are never
//! used as filesystem paths. The manifests are then read back from the store, layers are
//! unpacked and verified, and the references are written last.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::registry::Reference;
use crate::spec::{
    media, Descriptor, ImageConfig, Index, Manifest, ManifestKind, Platform, ANNOTATION_REF_NAME,
};
use crate::store::{check_blob, Image, Store};
use crate::targuard::TarGuard;
use crate::unpack;

/// containerd's (and Docker's) annotation with the full image name.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// Archive formats for export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout in a tar (`skopeo copy oci-archive:`).
    Oci,
    /// The `docker save` / `docker load` format.
    Docker,
}

/// One entry of a `docker save` `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default, deserialize_with = "null_vec")]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn null_vec<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    Option::<Vec<String>>::deserialize(d).map(Option::unwrap_or_default)
}

/// Imports every image of the archive read from `input`. `tag`, when given, names the image
/// (the archive must then hold exactly one).
pub fn import(store: &Store, input: impl Read, tag: Option<&Reference>) -> Result<Vec<Image>> {
    let _lock = store.write_lock()?;
    let files = stage_files(store, input)?;
    let found = if let Some(manifest_json) = files.get("manifest.json") {
        docker_images(store, &files, manifest_json)?
    } else if let Some(index_json) = files.get("index.json") {
        oci_images(store, index_json)?
    } else {
        return Err(Error::invalid(
            "archive",
            "neither manifest.json (docker save) nor index.json (OCI layout) found",
        ));
    };
    if tag.is_some() && found.len() != 1 {
        return Err(Error::invalid(
            "archive",
            format!(
                "--tag needs exactly one image, the archive has {}",
                found.len()
            ),
        ));
    }
    let mut named = Vec::new();
    for (names, desc, manifest) in found {
        let config: ImageConfig = store.read_json(&manifest.config.digest, "image config")?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::invalid(
                format!("image {}", desc.digest),
                "config diff ids do not match the layers",
            ));
        }
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            if !store.has_blob(&layer.digest) {
                return Err(Error::invalid(
                    "archive",
                    format!("layer blob {} is missing", layer.digest),
                ));
            }
            store.unpack_layer(layer, diff_id)?;
        }
        let names = match tag {
            Some(t) => vec![t.to_string()],
            None if names.is_empty() => {
                return Err(Error::invalid(
                    format!("image {} in archive", desc.digest),
                    "has no name; give one with --tag",
                ))
            }
            None => names,
        };
        named.push((names, desc));
    }
    let mut images = Vec::new();
    for (names, desc) in named {
        for name in names {
            store.tag(&name, &desc)?;
            images.push(store.load(&name, &desc)?);
        }
    }
    Ok(images)
}

/// Archive path → digest of every regular file, each stored as a blob.
fn stage_files(store: &Store, input: impl Read) -> Result<HashMap<String, Digest>> {
    let mut files = HashMap::new();
    // The guard refuses oversized long-name and PAX headers before `tar` buffers them.
    let mut archive = tar::Archive::new(TarGuard::new(input));
    let read_err = |e: io::Error| Error::invalid("archive", format!("reading tar: {e}"));
    for entry in archive.entries().map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&raw);
        let path = path.trim_start_matches("./").to_string();
        let expected = path
            .strip_prefix("blobs/sha256/")
            .map(|hex| {
                Digest::from_hex(hex).ok_or_else(|| {
                    let shown = unpack::shown_path(path.as_bytes());
                    Error::invalid("archive", format!("{shown}: not a sha256 blob name"))
                })
            })
            .transpose()?;
        let size = entry.size();
        let (digest, _) = store.put_blob_reader(
            entry,
            expected.as_ref(),
            Some(size),
            &format!("archive file {}", unpack::shown_path(path.as_bytes())),
        )?;
        files.insert(path, digest);
    }
    Ok(files)
}

type Found = Vec<(Vec<String>, Descriptor, Manifest)>;

fn docker_images(
    store: &Store,
    files: &HashMap<String, Digest>,
    manifest_json: &Digest,
) -> Result<Found> {
    let entries: Vec<DockerSaveEntry> = store.read_json(manifest_json, "archive manifest.json")?;
    let lookup = |path: &str| {
        files
            .get(path.trim_start_matches("./"))
            .cloned()
            .ok_or_else(|| {
                Error::invalid(
                    "archive",
                    format!(
                        "manifest.json names missing file {}",
                        unpack::shown_path(path.as_bytes())
                    ),
                )
            })
    };
    let mut found = Vec::new();
    for entry in entries {
        let config_digest = lookup(&entry.config)?;
        let config_size = blob_size(store, &config_digest)?;
        let mut layers = Vec::new();
        for path in &entry.layers {
            let digest = lookup(path)?;
            let media_type = layer_media_type(store, &digest)?;
            layers.push(Descriptor::new(
                media_type,
                digest.clone(),
                blob_size(store, &digest)?,
            ));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_string()),
            config: Descriptor::new(media::OCI_CONFIG, config_digest, config_size),
            layers,
            annotations: Default::default(),
        };
        let json = to_json(&manifest)?;
        let desc = store.put_json_blob(media::OCI_MANIFEST, &json)?;
        let names = entry
            .repo_tags
            .iter()
            .map(|t| Reference::parse(t).map(|r| r.to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        found.push((names, desc, manifest));
    }
    Ok(found)
}

fn oci_images(store: &Store, index_json: &Digest) -> Result<Found> {
    let index: Index = store.read_json(index_json, "archive index.json")?;
    let mut found = Vec::new();
    for entry in &index.manifests {
        let name = entry
            .annotations
            .get(ANNOTATION_IMAGE_NAME)
            .or_else(|| entry.annotations.get(ANNOTATION_REF_NAME))
            .filter(|n| n.contains('/'))
            .map(|n| Reference::parse(n).map(|r| r.to_string()))
            .transpose()?;
        let desc = match ManifestKind::of(&entry.media_type) {
            Some(ManifestKind::Image) => entry.clone(),
            Some(ManifestKind::Index) => {
                let inner: Index = store.read_json(&entry.digest, "archive image index")?;
                inner
                    .select(&Platform::host())
                    .cloned()
                    .ok_or_else(|| Error::NoPlatform {
                        reference: name.clone().unwrap_or_else(|| entry.digest.to_string()),
                        wanted: Platform::host().to_string(),
                        available: inner.platforms().join(", "),
                    })?
            }
            None => {
                return Err(Error::UnknownMediaType {
                    what: format!("archive index.json entry {}", entry.digest),
                    media_type: entry.media_type.clone(),
                })
            }
        };
        let manifest: Manifest = store.read_json(&desc.digest, "archive manifest")?;
        Store::check_media_types(&manifest, &format!("archive manifest {}", desc.digest))?;
        let mut clean = Descriptor::new(&desc.media_type, desc.digest.clone(), desc.size);
        clean.platform = desc.platform.clone();
        found.push((name.into_iter().collect(), clean, manifest));
    }
    Ok(found)
}

fn blob_size(store: &Store, digest: &Digest) -> Result<u64> {
    let p = store.blob_path(digest);
    Ok(fs::metadata(&p).map_err(Error::io(&p, "stat"))?.len())
}

/// A `docker save` layer file may be plain or compressed; its first bytes tell.
fn layer_media_type(store: &Store, digest: &Digest) -> Result<&'static str> {
    let p = store.blob_path(digest);
    let mut head = [0u8; 4];
    let mut f = File::open(&p).map_err(Error::io(&p, "open"))?;
    let n = f.read(&mut head).map_err(Error::io(&p, "read"))?;
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => media::OCI_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => media::OCI_LAYER_ZSTD,
        _ => media::OCI_LAYER,
    })
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| Error::Json {
        what: "generated document".into(),
        source,
    })
}

/// Writes `image` as an archive of `format` to `out`.
pub fn export(store: &Store, image: &Image, format: ArchiveFormat, out: impl Write) -> Result<()> {
    let _lock = store.write_lock()?;
    let mut tar = tar::Builder::new(out);
    let mut add = |path: &str, size: u64, data: &mut dyn Read| -> Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data)
            .map_err(|e| Error::invalid("export", format!("writing {path}: {e}")))
    };
    // Blobs are verified as they stream out: a blob damaged on disk fails the export.
    let add_blob = |add: &mut dyn FnMut(&str, u64, &mut dyn Read) -> Result<()>, d: &Digest| {
        let p = store.blob_path(d);
        let f = File::open(&p).map_err(Error::io(&p, "open"))?;
        let size = f.metadata().map_err(Error::io(&p, "stat"))?.len();
        let mut hashing = HashingReader::new(f);
        add(&format!("blobs/sha256/{}", d.hex()), size, &mut hashing)?;
        let (actual, _) = hashing.finish().map_err(Error::io(&p, "read"))?;
        check_blob(
            &format!("stored blob {}", p.display()),
            Some(d),
            None,
            &actual,
            size,
        )
    };
    match format {
        ArchiveFormat::Oci => {
            let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
            add("oci-layout", layout.len() as u64, &mut &layout[..])?;
            let size = blob_size(store, &image.manifest_digest)?;
            let mut desc =
                Descriptor::new(media::OCI_MANIFEST, image.manifest_digest.clone(), size);
            if let Some(m) = &image.manifest.media_type {
                desc.media_type = m.clone();
            }
            if let Ok(r) = Reference::parse(&image.reference) {
                if let Some(tag) = &r.tag {
                    desc.annotations
                        .insert(ANNOTATION_REF_NAME.into(), tag.clone());
                }
            }
            desc.annotations
                .insert(ANNOTATION_IMAGE_NAME.into(), image.reference.clone());
            let index = Index {
                manifests: vec![desc],
                ..Index::empty()
            };
            let json = to_json(&index)?;
            add("index.json", json.len() as u64, &mut &json[..])?;
            add_blob(&mut add, &image.manifest_digest)?;
            add_blob(&mut add, &image.config_digest)?;
            for layer in &image.manifest.layers {
                add_blob(&mut add, &layer.digest)?;
            }
        }
        ArchiveFormat::Docker => {
            add_blob(&mut add, &image.config_digest)?;
            let mut layer_paths = Vec::new();
            for (layer, diff_id) in image
                .manifest
                .layers
                .iter()
                .zip(&image.config.rootfs.diff_ids)
            {
                // docker load wants each layer as a plain tar whose digest is its diff id.
                let plain = decompressed_layer(store, &layer.digest, diff_id)?;
                let result = (|| {
                    let mut f = File::open(&plain).map_err(Error::io(&plain, "open"))?;
                    let size = f.metadata().map_err(Error::io(&plain, "stat"))?.len();
                    add(&format!("blobs/sha256/{}", diff_id.hex()), size, &mut f)
                })();
                if plain != store.blob_path(&layer.digest) {
                    let _ = fs::remove_file(&plain);
                }
                result?;
                layer_paths.push(format!("blobs/sha256/{}", diff_id.hex()));
            }
            let repo_tags = match Reference::parse(&image.reference) {
                Ok(r) if r.tag.is_some() && r.digest.is_none() => vec![r.to_string()],
                _ => Vec::new(),
            };
            let manifest = vec![DockerSaveEntry {
                config: format!("blobs/sha256/{}", image.config_digest.hex()),
                repo_tags,
                layers: layer_paths,
            }];
            let json = to_json(&manifest)?;
            add("manifest.json", json.len() as u64, &mut &json[..])?;
        }
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| Error::invalid("export", format!("finishing archive: {e}")))
}

/// The layer as a plain tar file: the blob itself when uncompressed, else a verified
/// decompressed copy in `tmp/` (the caller removes it).
fn decompressed_layer(
    store: &Store,
    blob: &Digest,
    diff_id: &Digest,
) -> Result<std::path::PathBuf> {
    if blob == diff_id {
        return Ok(store.blob_path(blob));
    }
    let src = store.blob_path(blob);
    let tmp = store.tmp_dir().join(fsutil::unique_name("export"));
    let result = (|| {
        let f = File::open(&src).map_err(Error::io(&src, "open"))?;
        let mut reader = BufReader::new(f);
        let decompressed = unpack::decompress(&mut reader).map_err(Error::io(&src, "read"))?;
        let mut hashing = HashingReader::new(decompressed);
        let mut out = File::create(&tmp).map_err(Error::io(&tmp, "create"))?;
        io::copy(&mut hashing, &mut out).map_err(Error::io(&tmp, "decompress"))?;
        let (actual, _) = hashing.finish().map_err(Error::io(&src, "read"))?;
        if &actual != diff_id {
            return Err(Error::DigestMismatch {
                what: format!("layer {blob} uncompressed"),
                expected: diff_id.clone(),
                actual,
            });
        }
        Ok(tmp.clone())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
