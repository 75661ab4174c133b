//! Property tests of the layer unpacker: arbitrary and malformed tar streams, plain or gzip,
//! never panic, never write outside the layer directory, and never make the unpacker
//! allocate what a header claims instead of what the stream holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use berth_store::unpack::{decompress, unpack};
use proptest::prelude::*;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A sandbox: `dest` (the layer directory) and a sentinel file beside it.
struct Sandbox {
    base: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let base = std::env::temp_dir().join(format!(
            "berth-unpack-fuzz-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(base.join("dest")).unwrap();
        std::fs::write(base.join("outside"), b"sentinel").unwrap();
        Sandbox { base }
    }

    fn dest(&self) -> PathBuf {
        self.base.join("dest")
    }

    /// Nothing beside `dest` was added, removed or changed.
    fn untouched_outside(&self) -> Result<(), String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        if names != ["dest", "outside"] {
            return Err(format!("entries beside the layer: {names:?}"));
        }
        let meta = std::fs::symlink_metadata(self.base.join("outside")).unwrap();
        if !meta.is_file() || std::fs::read(self.base.join("outside")).unwrap() != b"sentinel" {
            return Err("the file beside the layer changed".into());
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn run(stream: &[u8], dest: &Path) {
    // Errors are fine; panics and escapes are not.
    if let Ok(reader) = decompress(BufReader::new(stream)) {
        let _ = unpack(reader, dest);
    }
}

/// One tar entry from raw parts: any name and link name bytes (`..`, absolute, NUL, ...).
fn entry(name: &[u8], kind: u8, link: &[u8], data: &[u8], claimed_size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        let n = name.len().min(99);
        old.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(99);
        old.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_mode(0o4777);
    h.set_size(claimed_size);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    let part = prop_oneof![
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(b"".to_vec()),
        Just(b"a".to_vec()),
        Just(b"link".to_vec()),
        Just(b"dir".to_vec()),
        Just(b".wh.a".to_vec()),
        Just(b".wh..wh..opq".to_vec()),
        prop::collection::vec(any::<u8>(), 0..6),
    ];
    (any::<bool>(), prop::collection::vec(part, 1..4)).prop_map(|(abs, parts)| {
        let mut v = if abs { b"/".to_vec() } else { Vec::new() };
        v.extend(parts.join(&b'/'));
        v
    })
}

fn entries() -> impl Strategy<Value = Vec<u8>> {
    let kind = prop_oneof![
        Just(b'0'),
        Just(b'1'),
        Just(b'2'),
        Just(b'3'),
        Just(b'5'),
        Just(b'6'),
        Just(b'x'),
        Just(b'L'),
        any::<u8>()
    ];
    let one = (
        name(),
        kind,
        name(),
        prop::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(n, k, l, d)| entry(&n, k, &l, &d, d.len() as u64));
    prop::collection::vec(one, 1..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_or_escape(bytes in prop::collection::vec(any::<u8>(), 0..4096), gz in any::<bool>()) {
        let s = Sandbox::new();
        let stream = if gz { gzip(&bytes) } else { bytes };
        run(&stream, &s.dest());
        prop_assert_eq!(s.untouched_outside(), Ok(()));
    }

    #[test]
    fn hostile_entries_never_escape(
        tar in entries(),
        gz in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let s = Sandbox::new();
        // Links that point out of the layer, then entries that would write through them.
        let mut stream = entry(b"link", b'2', b"../", &[], 0);
        stream.extend(entry(b"abs", b'2', b"/", &[], 0));
        stream.extend(tar);
        stream.extend(entry(b"link/outside", b'0', b"", b"pwned", 5));
        stream.extend(entry(b"abs/tmp/pwned", b'0', b"", b"pwned", 5));
        stream.extend(entry(b"hard", b'1', b"../outside", &[], 0));
        let mut stream = if gz { gzip(&stream) } else { stream };
        for (at, byte) in flips {
            let i = at.index(stream.len());
            stream[i] ^= byte;
        }
        if truncate {
            stream.truncate(cut.index(stream.len() + 1));
        }
        run(&stream, &s.dest());
        prop_assert_eq!(s.untouched_outside(), Ok(()));
        prop_assert!(!Path::new("/tmp/pwned").exists());
    }
}

/// A header that claims a terabyte of content, in front of a few bytes: the unpacker reads
/// what is there and fails, without reserving what the header claims.
#[test]
fn a_huge_claimed_size_is_not_allocated() {
    for kind in [b'0', b'L', b'x', b'g', b'K'] {
        let s = Sandbox::new();
        let stream = entry(b"big", kind, b"", b"tiny", 1 << 40);
        run(&stream, &s.dest());
        run(&gzip(&stream), &s.dest());
        assert_eq!(s.untouched_outside(), Ok(()));
    }
}
