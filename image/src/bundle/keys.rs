//! ed25519 signing keys of update bundles: a key pair is two text files, `NAME.key` (the
//! 32-byte secret seed) and `NAME.pub` (the 32-byte public key), each as 64 hex digits. The
//! public side (trusted keys, key ids) is `berth_formats::bundle::keys`, re-exported here;
//! making and using secret keys is the builder's alone.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

pub use berth_formats::bundle::keys::*;

/// Why a new key pair was not made.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{path} exists; refusing to overwrite a key")]
    Exists { path: String },
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
pub fn generate(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), GenerateError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(GenerateError::Exists {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_sign() {
        let dir = std::env::temp_dir().join(format!("berth-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (secret, public) = generate(&dir, "k1").unwrap();
        assert!(matches!(
            generate(&dir, "k1"),
            Err(GenerateError::Exists { .. })
        ));
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
