//! Values that would otherwise be random (GUIDs, the verity salt, filesystem UUIDs and volume
//! IDs), derived from the build's inputs instead: the same inputs give the same image, byte for
//! byte, on any machine and at any time.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::guid::Guid;
use crate::host::{self, HostError};

/// A SHA-256 over everything the image is made of; every derived value hashes it together
/// with a purpose string, so no two values coincide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed([u8; 32]);

impl Seed {
    /// Hashes `parts` (each length-prefixed, so `["ab", "c"]` and `["a", "bc"]` differ).
    pub fn new<I, P>(parts: I) -> Seed
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let mut h = Sha256::new();
        for p in parts {
            let p = p.as_ref();
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Seed(h.finalize().into())
    }

    /// 32 bytes for `purpose`.
    pub fn bytes(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// A GUID for `purpose`, with the version-4 and variant bits set as a random one would
    /// have them (as systemd-repart does for its derived partition UUIDs).
    pub fn guid(&self, purpose: &str) -> Guid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.bytes(purpose)[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid::from_bytes(b)
    }

    /// `len` bytes (at most 32) for `purpose`, as lower-case hex.
    pub fn hex(&self, purpose: &str, len: usize) -> String {
        hex(&self.bytes(purpose)[..len.min(32)])
    }

    /// A 32-bit value for `purpose` (a FAT volume ID).
    pub fn u32(&self, purpose: &str) -> u32 {
        let b = self.bytes(purpose);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of a file, as `sha256sum` prints it. The coreutils tool rather than the crate: the
/// disk is hundreds of MiB and this stays fast in unoptimised test builds too.
pub fn sha256_file(path: &Path) -> Result<String, HostError> {
    let out = host::run(Command::new("sha256sum").arg("--binary").arg(path))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// SHA-256 of bytes in memory.
pub fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_values_depend_on_every_input_and_the_purpose() {
        let a = Seed::new(["ab", "c"]);
        assert_eq!(a, Seed::new(["ab", "c"]));
        assert_ne!(a, Seed::new(["a", "bc"]));
        assert_ne!(a.guid("disk"), a.guid("partition berth-boot"));
        let g = a.guid("disk").to_string();
        assert_eq!(g.chars().nth(14), Some('4'), "{g}");
        assert!(
            matches!(g.chars().nth(19), Some('8' | '9' | 'a' | 'b')),
            "{g}"
        );
        assert_eq!(a.hex("salt", 32).len(), 64);
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn file_hash_matches_the_in_memory_one() {
        let dir = std::env::temp_dir().join(format!("berth-derive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(sha256_file(&f).unwrap(), sha256(b"abc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
