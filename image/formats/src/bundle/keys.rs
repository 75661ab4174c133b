//! The public side of update bundles' ed25519 keys: a public key is a text file `NAME.pub`
//! holding the 32-byte key as 64 hex digits (its secret `NAME.key` is berth-image's). A
//! machine trusts every `*.pub` in its keys directory (`/usr/share/berth/keys/`), so a new key
//! can be shipped before bundles are signed with it.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

/// Where a Berth root carries the public keys it trusts.
pub const TRUSTED_KEYS_DIR: &str = "/usr/share/berth/keys";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a key: expected 64 hex digits")]
    Format { path: String },
    #[error("{path}: not a valid ed25519 public key")]
    BadPublicKey { path: String },
    #[error("no trusted public keys (*.pub) in {dir}")]
    NoTrustedKeys { dir: String },
}

/// Maps an I/O error on `path` to a [`KeyError`].
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex digits (either case); `None` unless it is whole bytes of hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    text.chunks(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

/// The 32 bytes a key file holds as 64 hex digits.
pub fn read_32(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    unhex(text.trim())
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| KeyError::Format {
            path: path.display().to_string(),
        })
}

/// The short name of a public key that a bundle's header carries: the first 8 bytes of the
/// SHA-256 of the key.
pub fn key_id(key: &VerifyingKey) -> [u8; 8] {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

/// Reads one public key file.
pub fn load_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let bytes = read_32(path)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::BadPublicKey {
        path: path.display().to_string(),
    })
}

/// One trusted public key and the file it came from.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: VerifyingKey,
    pub id: [u8; 8],
    pub path: PathBuf,
}

/// The public keys a machine accepts bundles from.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    pub dir: PathBuf,
    pub keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    /// Every `*.pub` file of `dir`; a malformed one is an error (it would silently narrow
    /// what the machine accepts otherwise).
    pub fn load(dir: &Path) -> Result<TrustedKeys, KeyError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect();
        paths.sort();
        let mut keys = Vec::new();
        for path in paths {
            let key = load_public(&path)?;
            keys.push(TrustedKey {
                id: key_id(&key),
                key,
                path,
            });
        }
        if keys.is_empty() {
            return Err(KeyError::NoTrustedKeys {
                dir: dir.display().to_string(),
            });
        }
        Ok(TrustedKeys {
            dir: dir.to_path_buf(),
            keys,
        })
    }

    pub fn find(&self, id: &[u8; 8]) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| &k.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_keys_are_every_pub_file_and_a_bad_one_is_named() {
        let dir = std::env::temp_dir().join(format!("berth-trusted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            TrustedKeys::load(&dir),
            Err(KeyError::NoTrustedKeys { .. })
        ));
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        std::fs::write(dir.join("a.pub"), format!("{}\n", hex(key.as_bytes()))).unwrap();
        std::fs::write(dir.join("ignored.txt"), "not a key").unwrap();
        let trusted = TrustedKeys::load(&dir).unwrap();
        assert_eq!(trusted.keys.len(), 1);
        assert_eq!(trusted.find(&key_id(&key)).unwrap().path, dir.join("a.pub"));
        assert!(trusted.find(&[0u8; 8]).is_none());
        std::fs::write(dir.join("bad.pub"), "xyz\n").unwrap();
        let err = TrustedKeys::load(&dir).unwrap_err();
        assert!(err.to_string().contains("bad.pub"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(unhex("00ff"), Some(vec![0, 255]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
