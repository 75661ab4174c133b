//! Writing update bundles: [`create`] digests the payloads, checks the root against its
//! verity parameters and signs the manifest. The format and its reading side (what berth-init
//! verifies) are `berth_formats::bundle`, re-exported here.

pub mod cli;
pub mod keys;

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use berth_formats::bundle::*;
use keys::{hex, SecretKey};
use tree::TreeCheck;

/// What goes into a new bundle.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub key: PathBuf,
    /// erofs + verity tree, as in the slot.
    pub root: PathBuf,
    pub kernel: PathBuf,
    pub os_version: String,
    pub build_id: String,
    pub min_from_version: String,
    pub kernel_release: String,
    pub verity: VerityInfo,
    pub boot_args: String,
    pub out: PathBuf,
}

fn file_digest(path: &Path, mut also: impl FnMut(&[u8])) -> Result<Payload, BundleError> {
    let io = |source| BundleError::Io {
        what: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        also(&buf[..n]);
        size += n as u64;
    }
    Ok(Payload {
        name: String::new(),
        size,
        sha256: hex(&hasher.finalize()),
    })
}

/// Writes a signed bundle (to a temporary file renamed over `out` when complete). The root
/// image is checked against its verity parameters first, so a bundle never carries a root
/// that its own manifest would reject.
pub fn create(o: &CreateOptions) -> Result<Manifest, BundleError> {
    let key = SecretKey::load(&o.key)?;
    let mut check = TreeCheck::new(o.verity.tree_params()?);
    let mut root = file_digest(&o.root, |b| check.update(b))?;
    check.finish()?;
    root.name = "root".into();
    let mut kernel = file_digest(&o.kernel, |_| {})?;
    kernel.name = "kernel".into();
    let manifest = Manifest {
        format: FORMAT,
        os_version: o.os_version.clone(),
        build_id: o.build_id.clone(),
        min_from_version: o.min_from_version.clone(),
        kernel_release: o.kernel_release.clone(),
        verity: o.verity.clone(),
        boot_args: o.boot_args.clone(),
        payloads: vec![root, kernel],
    };
    manifest.validate()?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(BundleError::ManifestSyntax)?;
    let header = sign(&key, &json)?;
    let tmp = o.out.with_extension("partial");
    let io = |source| BundleError::Io {
        what: tmp.display().to_string(),
        source,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    out.write_all(&header).map_err(io)?;
    out.write_all(&json).map_err(io)?;
    for src in [&o.root, &o.kernel] {
        let mut f = std::fs::File::open(src).map_err(|source| BundleError::Io {
            what: src.display().to_string(),
            source,
        })?;
        std::io::copy(&mut f, &mut out).map_err(io)?;
    }
    let f = out.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &o.out).map_err(io)?;
    Ok(manifest)
}

/// The header for `manifest` signed with `key`.
pub fn sign(key: &SecretKey, manifest: &[u8]) -> Result<[u8; HEADER_LEN], BundleError> {
    let len = u32::try_from(manifest.len())
        .ok()
        .filter(|&l| l <= MAX_MANIFEST)
        .ok_or(BundleError::ManifestTooLarge {
            len: manifest.len().min(u32::MAX as usize) as u32,
        })?;
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..10].copy_from_slice(&FORMAT.to_le_bytes());
    header[12..16].copy_from_slice(&len.to_le_bytes());
    header[16..24].copy_from_slice(&keys::key_id(&key.public()));
    let sig = key.sign(&signed_message(&header[..24], manifest));
    header[24..88].copy_from_slice(&sig.to_bytes());
    Ok(header)
}

/// Test support: a root image (random data + verity tree made by `veritysetup`) and its
/// parameters, or `None` when veritysetup is not installed.
#[doc(hidden)]
pub mod testing {
    use super::*;

    pub fn root_image(path: &Path, data_blocks: u64, seed: u64) -> Option<VerityInfo> {
        let mut x = seed | 1;
        let data: Vec<u8> = (0..data_blocks * tree::BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(path, &data).ok()?;
        let out = std::process::Command::new("veritysetup")
            .arg("format")
            .arg("--hash=blake2b-512")
            .arg(format!("--data-blocks={data_blocks}"))
            .arg(format!("--hash-offset={}", data_blocks * tree::BLOCK))
            .arg(path)
            .arg(path)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        Some(VerityInfo {
            hash: "blake2b-512".into(),
            data_blocks,
            hash_offset_blocks: data_blocks,
            root_hash: field("Root hash:")?,
            salt: field("Salt:")?,
        })
    }
}
