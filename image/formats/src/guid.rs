//! GUIDs as GPT stores them: the first three fields little-endian, the rest as bytes.

use std::fmt;
use std::io::Read;

#[derive(Debug, thiserror::Error)]
pub enum GuidError {
    #[error("invalid GUID {0:?}: expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")]
    Syntax(String),
    #[error("cannot read random bytes from /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
}

/// A GUID in its textual byte order (`00112233-4455-...` → `[0x00, 0x11, ...]`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid([u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);

    /// Parses the canonical textual form (case-insensitive).
    pub fn parse(text: &str) -> Result<Guid, GuidError> {
        let bad = || GuidError::Syntax(text.to_string());
        let groups: Vec<&str> = text.split('-').collect();
        let lengths = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lengths).any(|(g, n)| g.len() != n) {
            return Err(bad());
        }
        let hex: String = groups.concat();
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Guid(bytes))
    }

    /// The GUID whose textual byte order is `bytes`.
    pub fn from_bytes(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }

    /// A random (version 4) GUID.
    pub fn random() -> Result<Guid, GuidError> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(GuidError::Random)?;
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Ok(Guid(bytes))
    }

    /// The 16 bytes as GPT writes them on disk (mixed endian).
    pub fn to_disk(self) -> [u8; 16] {
        let b = self.0;
        let mut d = b;
        d[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
        d[4..6].copy_from_slice(&[b[5], b[4]]);
        d[6..8].copy_from_slice(&[b[7], b[6]]);
        d
    }

    /// Inverse of [`Guid::to_disk`].
    pub fn from_disk(d: [u8; 16]) -> Guid {
        // The byte swaps are their own inverse.
        Guid(Guid(d).to_disk())
    }

    pub fn is_zero(self) -> bool {
        self == Guid::ZERO
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_disk_order() {
        let esp = Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap();
        assert_eq!(esp.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        // The on-disk form of the ESP type GUID, as every GPT tool writes it.
        assert_eq!(
            esp.to_disk(),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert_eq!(Guid::from_disk(esp.to_disk()), esp);
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "c12a7328f81f11d2ba4b00a0c93ec93b",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93",
            "g12a7328-f81f-11d2-ba4b-00a0c93ec93b",
        ] {
            assert!(Guid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_is_version_4() {
        let g = Guid::random().unwrap();
        assert_eq!(g.to_string().chars().nth(14), Some('4'));
        assert_ne!(g, Guid::random().unwrap());
    }
}
