//! Update bundles: one file holding a whole Berth system, signed. This is the reading side
//! (header, signature, manifest, payload digests, verity tree); berth-image writes and signs.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "BERTHUPD"
//! 8       2     format version (1), little-endian
//! 10      2     reserved, zero
//! 12      4     manifest length in bytes, little-endian (at most 64 KiB)
//! 16      8     key id: the first 8 bytes of the SHA-256 of the signing public key
//! 24      64    ed25519 signature of "berth-bundle\0" + bytes 0..24 + the manifest
//! 88      n     manifest (JSON, see [`Manifest`])
//! 88+n          payloads in manifest order, back to back: "root" (erofs + verity tree, as
//!               written to a root slot), "kernel" (the bzImage); nothing after them
//! ```
//!
//! A reader verifies the signature before it believes a byte of the manifest, and the
//! manifest's sizes and SHA-256 digests before it believes a payload.

pub mod keys;
pub mod tree;

use std::cmp::Ordering;
use std::io::Read;
use std::path::{Path, PathBuf};

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use keys::{hex, unhex, KeyError, TrustedKeys};
use tree::{TreeCheck, TreeHash, TreeParams};

pub const MAGIC: &[u8; 8] = b"BERTHUPD";
pub const FORMAT: u16 = 1;
pub const HEADER_LEN: usize = 88;
pub const MAX_MANIFEST: u32 = 64 * 1024;
/// The kernel payload's size limit (the ESP is 64 MiB and holds two kernels).
pub const MAX_KERNEL: u64 = 28 << 20;
const SIGNING_CONTEXT: &[u8] = b"berth-bundle\0";
/// Bytes read (and hashed) at a time.
pub const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle is truncated: the {part} needs {expected} bytes, the bundle ends after {got}")]
    Truncated {
        part: String,
        expected: u64,
        got: u64,
    },
    #[error("not a Berth update bundle (no BERTHUPD magic)")]
    BadMagic,
    #[error("bundle format {found} is not supported (this system reads format {FORMAT})")]
    UnsupportedFormat { found: u16 },
    #[error("bundle header: reserved field is not zero")]
    Reserved,
    #[error("bundle manifest is {len} bytes, more than the {MAX_MANIFEST} allowed")]
    ManifestTooLarge { len: u32 },
    #[error("bundle is signed by key {key_id}, which is not among the trusted keys in {dir}")]
    UnknownKey { key_id: String, dir: String },
    #[error("bundle signature does not verify with key {key_id} ({path}): the header or manifest was changed after signing")]
    BadSignature { key_id: String, path: String },
    #[error("bundle manifest is not valid JSON of the expected shape: {0}")]
    ManifestSyntax(#[source] serde_json::Error),
    #[error("bundle manifest field {field}: {problem}")]
    Manifest {
        field: &'static str,
        problem: String,
    },
    #[error("{payload} payload: SHA-256 is {actual}, the manifest says {expected}: the payload was changed or damaged")]
    PayloadHash {
        payload: String,
        expected: String,
        actual: String,
    },
    #[error("bundle has data after its last payload")]
    TrailingData,
    #[error("verity check of the root: {0}")]
    Verity(String),
    #[error("writing the {payload} payload: {source}")]
    Write {
        payload: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The verity parameters of the root payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityInfo {
    /// `blake2b-512` or `sha256`.
    pub hash: String,
    pub data_blocks: u64,
    /// Block (4 KiB) of the verity superblock; the tree follows it.
    pub hash_offset_blocks: u64,
    pub root_hash: String,
    pub salt: String,
}

impl VerityInfo {
    pub fn tree_params(&self) -> Result<TreeParams, BundleError> {
        let bad = |field, problem: &str| BundleError::Manifest {
            field,
            problem: problem.into(),
        };
        let hash = TreeHash::parse(&self.hash)
            .ok_or_else(|| bad("verity.hash", "is blake2b-512 or sha256"))?;
        let root_hash = unhex(&self.root_hash)
            .filter(|h| h.len() == hash.digest_size())
            .ok_or_else(|| {
                bad(
                    "verity.root_hash",
                    "is not a digest of the named hash in hex",
                )
            })?;
        let salt = unhex(&self.salt)
            .filter(|s| s.len() <= 256)
            .ok_or_else(|| bad("verity.salt", "is not at most 256 bytes in hex"))?;
        if self.data_blocks == 0 || self.hash_offset_blocks < self.data_blocks {
            return Err(bad(
                "verity.hash_offset_blocks",
                "the tree must follow at least one data block",
            ));
        }
        Ok(TreeParams {
            hash,
            data_blocks: self.data_blocks,
            hash_offset_blocks: self.hash_offset_blocks,
            root_hash,
            salt,
        })
    }
}

/// One payload's name, size and SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// What a bundle holds; signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Same as the header's format version.
    pub format: u16,
    pub os_version: String,
    pub build_id: String,
    /// The oldest running version this bundle may be applied to.
    pub min_from_version: String,
    pub kernel_release: String,
    pub verity: VerityInfo,
    /// Kernel arguments shared by every slot; the root device's arguments are added for the
    /// slot the bundle is written to.
    pub boot_args: String,
    /// `root`, then `kernel`.
    pub payloads: Vec<Payload>,
}

pub const PAYLOAD_NAMES: [&str; 2] = ["root", "kernel"];

/// What `root()` and `kernel()` give for a manifest that was not validated and lacks one.
static NO_PAYLOAD: Payload = Payload {
    name: String::new(),
    size: 0,
    sha256: String::new(),
};

impl Manifest {
    /// Checks everything a reader relies on, naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |field, problem: String| Err(BundleError::Manifest { field, problem });
        if self.format != FORMAT {
            return bad(
                "format",
                format!("is {}, the header says {FORMAT}", self.format),
            );
        }
        for (field, v) in [
            ("os_version", &self.os_version),
            ("min_from_version", &self.min_from_version),
        ] {
            if parse_version(v).is_none() {
                return bad(field, format!("{v:?} is not a version like 1.2.3"));
            }
        }
        for (field, v) in [
            ("build_id", &self.build_id),
            ("kernel_release", &self.kernel_release),
        ] {
            if v.is_empty() || v.len() > 128 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                return bad(field, format!("{v:?} is not 1-128 printable characters"));
            }
        }
        // The arguments go into the slot's GRUB script inside double quotes.
        if self.boot_args.len() > 4096 || self.boot_args.contains(['"', '$', '\\', '\n', '\r']) {
            return bad(
                "boot_args",
                "must be at most 4096 bytes without quotes, $, backslashes or newlines".into(),
            );
        }
        let params = self.verity.tree_params()?;
        let names: Vec<&str> = self.payloads.iter().map(|p| p.name.as_str()).collect();
        if names != PAYLOAD_NAMES {
            return bad(
                "payloads",
                format!("are {names:?}, expected {PAYLOAD_NAMES:?}"),
            );
        }
        for p in &self.payloads {
            if unhex(&p.sha256).is_none_or(|h| h.len() != 32) {
                return bad(
                    "payloads.sha256",
                    format!("of {} is not 64 hex digits", p.name),
                );
            }
        }
        if self.root().size != params.image_size() {
            return bad(
                "payloads.size",
                format!(
                    "root is {} bytes, its verity layout needs {}",
                    self.root().size,
                    params.image_size()
                ),
            );
        }
        let kernel = self.kernel().size;
        if kernel == 0 || kernel > MAX_KERNEL {
            return bad(
                "payloads.size",
                format!("kernel is {kernel} bytes, not 1 to {MAX_KERNEL}"),
            );
        }
        Ok(())
    }

    /// The root payload (validated manifests have it first; others may get an empty one).
    pub fn root(&self) -> &Payload {
        self.payloads.first().unwrap_or(&NO_PAYLOAD)
    }

    pub fn kernel(&self) -> &Payload {
        self.payloads.get(1).unwrap_or(&NO_PAYLOAD)
    }
}

/// Dotted numeric versions (`1.2.3`), compared component by component.
pub fn parse_version(v: &str) -> Option<Vec<u64>> {
    let parts: Option<Vec<u64>> = v
        .split('.')
        .map(|p| {
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                p.parse().ok()
            }
        })
        .collect();
    parts.filter(|p| (1..=4).contains(&p.len()))
}

/// Compares two versions; `None` if either is not a version.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    let (mut a, mut b) = (parse_version(a)?, parse_version(b)?);
    let n = a.len().max(b.len());
    a.resize(n, 0);
    b.resize(n, 0);
    Some(a.cmp(&b))
}

/// A bundle's header and manifest, signature checked.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub key_id: String,
    pub key_path: PathBuf,
    /// Bytes of header and manifest: where the payloads start.
    pub payload_offset: u64,
}

/// Reads until `buf` is full or the input ends; the bytes read.
pub fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, std::io::Error> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn reading(source: std::io::Error) -> BundleError {
    BundleError::Io {
        what: "reading the bundle".into(),
        source,
    }
}

/// Reads the header and the manifest from `r` and verifies them against `keys`, leaving `r`
/// at the first payload.
pub fn read_verified<R: Read>(r: &mut R, keys: &TrustedKeys) -> Result<Verified, BundleError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header).map_err(reading)?;
    if got < 8 || &header[..8] != MAGIC {
        if got < 8 && MAGIC.starts_with(&header[..got]) {
            return Err(BundleError::Truncated {
                part: "header".into(),
                expected: HEADER_LEN as u64,
                got: got as u64,
            });
        }
        return Err(BundleError::BadMagic);
    }
    if got < HEADER_LEN {
        return Err(BundleError::Truncated {
            part: "header".into(),
            expected: HEADER_LEN as u64,
            got: got as u64,
        });
    }
    let format = u16::from_le_bytes([header[8], header[9]]);
    if format != FORMAT {
        return Err(BundleError::UnsupportedFormat { found: format });
    }
    if header[10..12] != [0, 0] {
        return Err(BundleError::Reserved);
    }
    let len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if len > MAX_MANIFEST {
        return Err(BundleError::ManifestTooLarge { len });
    }
    let mut manifest = vec![0u8; len as usize];
    let got = read_full(r, &mut manifest).map_err(reading)?;
    if got < manifest.len() {
        return Err(BundleError::Truncated {
            part: "manifest".into(),
            expected: len as u64,
            got: (HEADER_LEN + got) as u64,
        });
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&header[16..24]);
    let key_id = hex(&id);
    let key = keys.find(&id).ok_or_else(|| BundleError::UnknownKey {
        key_id: key_id.clone(),
        dir: keys.dir.display().to_string(),
    })?;
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&header[24..88]);
    let message = signed_message(&header[..24], &manifest);
    key.key
        .verify_strict(&message, &Signature::from_bytes(&sig))
        .map_err(|_| BundleError::BadSignature {
            key_id: key_id.clone(),
            path: key.path.display().to_string(),
        })?;
    let parsed: Manifest =
        serde_json::from_slice(&manifest).map_err(BundleError::ManifestSyntax)?;
    parsed.validate()?;
    Ok(Verified {
        manifest: parsed,
        key_id,
        key_path: key.path.clone(),
        payload_offset: (HEADER_LEN + manifest.len()) as u64,
    })
}

/// What a bundle's signature covers: a context string, header bytes 0..24, the manifest.
pub fn signed_message(header: &[u8], manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + header.len() + manifest.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(header);
    m.extend_from_slice(manifest);
    m
}

/// Streams one payload from `r` to `sink` in chunks of at most 1 MiB, checking its size and
/// SHA-256; `progress` gets the bytes done so far after each chunk. `offset` is where the
/// payload starts in the bundle (for the truncation message).
pub fn copy_payload<R: Read>(
    r: &mut R,
    payload: &Payload,
    offset: u64,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    mut progress: impl FnMut(u64),
) -> Result<(), BundleError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < payload.size {
        let want = (payload.size - done).min(CHUNK as u64) as usize;
        let got = read_full(r, &mut buf[..want]).map_err(reading)?;
        if got > 0 {
            hasher.update(&buf[..got]);
            sink(&buf[..got]).map_err(|source| BundleError::Write {
                payload: payload.name.clone(),
                source,
            })?;
            done += got as u64;
            progress(done);
        }
        if got < want {
            return Err(BundleError::Truncated {
                part: format!("{} payload", payload.name),
                expected: payload.size,
                got: offset + done,
            });
        }
    }
    let actual = hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(&payload.sha256) {
        return Err(BundleError::PayloadHash {
            payload: payload.name.clone(),
            expected: payload.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// Fails unless `r` is at its end.
pub fn expect_end<R: Read>(r: &mut R) -> Result<(), BundleError> {
    let mut b = [0u8; 1];
    match read_full(r, &mut b).map_err(reading)? {
        0 => Ok(()),
        _ => Err(BundleError::TrailingData),
    }
}

/// Verifies a whole bundle file without writing anything: header, manifest, signature,
/// payload sizes and digests, the root's verity tree.
pub fn verify_file(path: &Path, keys: &TrustedKeys) -> Result<Manifest, BundleError> {
    let mut f =
        std::io::BufReader::new(std::fs::File::open(path).map_err(|source| BundleError::Io {
            what: "opening the bundle".into(),
            source,
        })?);
    let v = read_verified(&mut f, keys)?;
    let mut check = TreeCheck::new(v.manifest.verity.tree_params()?);
    let root = v.manifest.root().clone();
    copy_payload(
        &mut f,
        &root,
        v.payload_offset,
        |b| {
            check.update(b);
            Ok(())
        },
        |_| {},
    )?;
    check.finish()?;
    let kernel = v.manifest.kernel().clone();
    copy_payload(
        &mut f,
        &kernel,
        v.payload_offset + root.size,
        |_| Ok(()),
        |_| {},
    )?;
    expect_end(&mut f)?;
    Ok(v.manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            os_version: "1.2.0".into(),
            build_id: "b1".into(),
            min_from_version: "1.0".into(),
            kernel_release: "6.12.57-berth".into(),
            // One data block: a superblock after it and no tree levels.
            verity: VerityInfo {
                hash: "sha256".into(),
                data_blocks: 1,
                hash_offset_blocks: 1,
                root_hash: "ab".repeat(32),
                salt: "01".into(),
            },
            boot_args: "ro quiet".into(),
            payloads: vec![
                Payload {
                    name: "root".into(),
                    size: 2 * tree::BLOCK,
                    sha256: "00".repeat(32),
                },
                Payload {
                    name: "kernel".into(),
                    size: 3,
                    sha256: hex(&Sha256::digest(b"bzI")),
                },
            ],
        }
    }

    /// A bundle signed the way berth-image signs, without the payloads.
    fn signed(key: &SigningKey, json: &[u8]) -> Vec<u8> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..10].copy_from_slice(&FORMAT.to_le_bytes());
        header[12..16].copy_from_slice(&(json.len() as u32).to_le_bytes());
        header[16..24].copy_from_slice(&keys::key_id(&key.verifying_key()));
        let sig = key.sign(&signed_message(&header[..24], json));
        header[24..88].copy_from_slice(&sig.to_bytes());
        let mut bundle = header.to_vec();
        bundle.extend_from_slice(json);
        bundle
    }

    #[test]
    fn reads_a_signed_header_and_refuses_changes_and_strangers() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let trusted = TrustedKeys {
            dir: PathBuf::from("/keys"),
            keys: vec![keys::TrustedKey {
                key: key.verifying_key(),
                id: keys::key_id(&key.verifying_key()),
                path: PathBuf::from("/keys/k.pub"),
            }],
        };
        let json = serde_json::to_vec(&manifest()).unwrap();
        let bundle = signed(&key, &json);
        let mut r = &bundle[..];
        let v = read_verified(&mut r, &trusted).unwrap();
        assert_eq!(v.manifest, manifest());
        assert_eq!(v.payload_offset, bundle.len() as u64);
        assert!(r.is_empty());

        let mut changed = bundle.clone();
        let last = changed.len() - 2;
        changed[last] ^= 1;
        assert!(matches!(
            read_verified(&mut &changed[..], &trusted),
            Err(BundleError::BadSignature { .. })
        ));
        let stranger = signed(&SigningKey::from_bytes(&[4u8; 32]), &json);
        assert!(matches!(
            read_verified(&mut &stranger[..], &trusted),
            Err(BundleError::UnknownKey { .. })
        ));
        assert!(matches!(
            read_verified(&mut &bundle[..40], &trusted),
            Err(BundleError::Truncated { .. })
        ));
        assert!(matches!(
            read_verified(&mut &b"NOTABUNDLE"[..], &trusted),
            Err(BundleError::BadMagic)
        ));
    }

    #[test]
    fn payloads_are_checked_against_size_and_digest() {
        let m = manifest();
        let kernel = m.kernel().clone();
        let mut out = Vec::new();
        copy_payload(
            &mut &b"bzI"[..],
            &kernel,
            0,
            |b| {
                out.extend_from_slice(b);
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(out, b"bzI");
        assert!(matches!(
            copy_payload(&mut &b"bzX"[..], &kernel, 0, |_| Ok(()), |_| {}),
            Err(BundleError::PayloadHash { .. })
        ));
        assert!(matches!(
            copy_payload(&mut &b"bz"[..], &kernel, 0, |_| Ok(()), |_| {}),
            Err(BundleError::Truncated { .. })
        ));
        assert!(expect_end(&mut &b""[..]).is_ok());
        assert!(matches!(
            expect_end(&mut &b"x"[..]),
            Err(BundleError::TrailingData)
        ));
        assert_eq!(compare_versions("1.2", "1.2.0"), Some(Ordering::Equal));
        assert_eq!(compare_versions("1.10", "1.9"), Some(Ordering::Greater));
        assert_eq!(compare_versions("1.x", "1"), None);
    }
}
