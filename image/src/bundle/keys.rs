//! ed25519 signing keys of update bundles: a key pair is two text files, `NAME.key` (the
//! 32-byte secret seed) and `NAME.pub` (the 32-byte public key), each as 64 hex digits. A
//! machine trusts every `*.pub` in its keys directory (`/usr/share/berth/keys/`), so a new key
//! can be shipped before bundles are signed with it.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
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
    #[error("{path} exists; refusing to overwrite a key")]
    Exists { path: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    text.chunks(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

fn read_32(path: &Path) -> Result<[u8; 32], KeyError> {
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

/// A secret key read from a `.key` file.
pub struct SecretKey {
    key: SigningKey,
}

impl SecretKey {
    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        Ok(SecretKey {
            key: SigningKey::from_bytes(&read_32(path)?),
        })
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }
}

/// Makes a new key pair `DIR/NAME.key` (mode 0600) and `DIR/NAME.pub` from the kernel's
/// random numbers; never overwrites a key.
pub fn generate(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), KeyError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(KeyError::Exists {
                path: p.display().to_string(),
            });
        }
    }
    let mut seed = [0u8; 32];
    let random = Path::new("/dev/urandom");
    std::fs::File::open(random)
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(io(random))?;
    let key = SigningKey::from_bytes(&seed);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .map_err(io(&secret_path))?;
    writeln!(f, "{}", hex(&seed)).map_err(io(&secret_path))?;
    std::fs::write(
        &public_path,
        format!("{}\n", hex(key.verifying_key().as_bytes())),
    )
    .map_err(io(&public_path))?;
    Ok((secret_path, public_path))
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
    fn generated_keys_load_and_sign() {
        let dir = std::env::temp_dir().join(format!("berth-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (secret, public) = generate(&dir, "k1").unwrap();
        assert!(matches!(generate(&dir, "k1"), Err(KeyError::Exists { .. })));
        generate(&dir, "k2").unwrap();
        let sk = SecretKey::load(&secret).unwrap();
        let trusted = TrustedKeys::load(&dir).unwrap();
        assert_eq!(trusted.keys.len(), 2);
        let k = trusted.find(&key_id(&sk.public())).unwrap();
        assert_eq!(k.path, public);
        let sig = sk.sign(b"m");
        assert!(k.key.verify_strict(b"m", &sig).is_ok());
        std::fs::write(dir.join("bad.pub"), "xyz\n").unwrap();
        let err = TrustedKeys::load(&dir).unwrap_err();
        assert!(err.to_string().contains("bad.pub"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let empty = std::env::temp_dir().join(format!("berth-keys-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(
            TrustedKeys::load(&empty),
            Err(KeyError::NoTrustedKeys { .. })
        ));
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
