//! Update bundles: a bundle made by `create` verifies; every kind of damage is refused with
//! an error naming it, before any payload byte is believed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use berth_image::bundle::keys::{self, TrustedKeys};
use berth_image::bundle::{self, testing, BundleError, CreateOptions, HEADER_LEN};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("berth-bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bundle of a 70-block root and a small kernel, signed by `trusted/test.key`.
fn make(s: &Scratch) -> Option<(PathBuf, TrustedKeys, CreateOptions)> {
    let root = s.path("root.img");
    let verity = testing::root_image(&root, 70, 7)?;
    std::fs::write(s.path("vmlinuz"), b"kernel bytes ".repeat(1000)).unwrap();
    keys::generate(&s.path("trusted"), "test").unwrap();
    let o = CreateOptions {
        key: s.path("trusted/test.key"),
        root,
        kernel: s.path("vmlinuz"),
        os_version: "0.2.0".into(),
        build_id: "abc123".into(),
        min_from_version: "0.1.0".into(),
        kernel_release: "6.12.0-berth".into(),
        verity,
        boot_args: "console=ttyS0,115200 panic=5".into(),
        out: s.path("b.bundle"),
    };
    bundle::create(&o).unwrap();
    let trusted = TrustedKeys::load(&s.path("trusted")).unwrap();
    Some((o.out.clone(), trusted, o))
}

fn verify(path: &Path, keys: &TrustedKeys) -> Result<bundle::Manifest, BundleError> {
    bundle::verify_file(path, keys)
}

fn with_bytes(path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    let out = path.with_extension("changed");
    std::fs::write(&out, b).unwrap();
    out
}

#[test]
fn a_created_bundle_verifies_and_describes_its_payloads() {
    let s = Scratch::new("ok");
    let Some((path, trusted, o)) = make(&s) else {
        eprintln!("veritysetup not installed; skipping");
        return;
    };
    let m = verify(&path, &trusted).unwrap();
    assert_eq!(m.os_version, "0.2.0");
    assert_eq!(m.root().size, std::fs::metadata(&o.root).unwrap().len());
    assert_eq!(m.kernel().size, 13_000);
    let total = std::fs::metadata(&path).unwrap().len();
    let json_len = total - HEADER_LEN as u64 - m.root().size - m.kernel().size;
    assert!(json_len < 4096, "{json_len}");
    // A second key in the directory (rotation) changes nothing.
    keys::generate(&s.path("trusted"), "next").unwrap();
    let two = TrustedKeys::load(&s.path("trusted")).unwrap();
    assert_eq!(two.keys.len(), 2);
    verify(&path, &two).unwrap();
}

#[test]
fn damaged_bundles_are_refused_naming_the_reason() {
    let s = Scratch::new("bad");
    let Some((path, trusted, o)) = make(&s) else {
        eprintln!("veritysetup not installed; skipping");
        return;
    };
    let m = verify(&path, &trusted).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let manifest_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let root_at = HEADER_LEN + manifest_len;
    let kernel_at = root_at + m.root().size as usize;

    // Unknown key: the directory trusts another one.
    keys::generate(&s.path("other"), "other").unwrap();
    let other = TrustedKeys::load(&s.path("other")).unwrap();
    let e = verify(&path, &other).unwrap_err();
    assert!(matches!(e, BundleError::UnknownKey { .. }), "{e}");
    assert!(e.to_string().contains("not among the trusted keys"), "{e}");

    // The manifest changed after signing (a version bumped).
    let changed = with_bytes(&path, |b| {
        let text = String::from_utf8_lossy(&b[HEADER_LEN..root_at]).into_owned();
        let i = text.find("0.2.0").unwrap();
        b[HEADER_LEN + i + 2] = b'9';
    });
    let e = verify(&changed, &trusted).unwrap_err();
    assert!(matches!(e, BundleError::BadSignature { .. }), "{e}");
    assert!(e.to_string().contains("changed after signing"), "{e}");

    // One flipped byte in each payload.
    for (at, name) in [(root_at + 5000, "root"), (kernel_at + 10, "kernel")] {
        let flipped = with_bytes(&path, |b| b[at] ^= 0x40);
        let e = verify(&flipped, &trusted).unwrap_err();
        match &e {
            BundleError::PayloadHash { payload, .. } => assert_eq!(payload, name),
            other => panic!("{name}: {other}"),
        }
        assert!(
            e.to_string()
                .starts_with(&format!("{name} payload: SHA-256")),
            "{e}"
        );
    }

    // Truncated anywhere: in the header, the manifest, the root, the kernel.
    for cut in [
        4,
        50,
        HEADER_LEN + 10,
        root_at + 4096,
        kernel_at + 1,
        bytes.len() - 1,
    ] {
        let short = with_bytes(&path, |b| b.truncate(cut));
        let e = verify(&short, &trusted).unwrap_err();
        assert!(matches!(e, BundleError::Truncated { .. }), "cut {cut}: {e}");
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    // Data after the kernel; not a bundle; a manifest length beyond the cap.
    let long = with_bytes(&path, |b| b.push(0));
    assert!(matches!(
        verify(&long, &trusted),
        Err(BundleError::TrailingData)
    ));
    let junk = with_bytes(&path, |b| b[0] = b'X');
    assert!(matches!(
        verify(&junk, &trusted),
        Err(BundleError::BadMagic)
    ));
    let huge = with_bytes(&path, |b| {
        b[12..16].copy_from_slice(&(1u32 << 20).to_le_bytes())
    });
    assert!(matches!(
        verify(&huge, &trusted),
        Err(BundleError::ManifestTooLarge { .. })
    ));
    let future = with_bytes(&path, |b| b[8] = 2);
    assert!(matches!(
        verify(&future, &trusted),
        Err(BundleError::UnsupportedFormat { found: 2 })
    ));

    // A signed manifest whose root hash does not match the root: create refuses to make it.
    let mut wrong = o.clone();
    wrong.verity.root_hash = "00".repeat(64);
    wrong.out = s.path("wrong.bundle");
    let e = bundle::create(&wrong).unwrap_err();
    assert!(matches!(e, BundleError::Verity(_)), "{e}");
    assert!(!wrong.out.exists());
}

#[test]
fn manifests_are_checked_field_by_field() {
    let s = Scratch::new("fields");
    let Some((path, trusted, _)) = make(&s) else {
        eprintln!("veritysetup not installed; skipping");
        return;
    };
    let good = verify(&path, &trusted).unwrap();
    type Change = Box<dyn Fn(&mut bundle::Manifest)>;
    let cases: Vec<(&str, Change)> = vec![
        ("os_version", Box::new(|m| m.os_version = "1.x".into())),
        ("build_id", Box::new(|m| m.build_id = String::new())),
        ("boot_args", Box::new(|m| m.boot_args = "a\"b".into())),
        ("verity.hash", Box::new(|m| m.verity.hash = "md5".into())),
        (
            "verity.root_hash",
            Box::new(|m| m.verity.root_hash = "abc".into()),
        ),
        ("payloads", Box::new(|m| m.payloads.reverse())),
        ("payloads", Box::new(|m| m.payloads.clear())),
        ("payloads.size", Box::new(|m| m.payloads[0].size += 4096)),
        ("format", Box::new(|m| m.format = 9)),
    ];
    for (field, change) in cases {
        let mut m = good.clone();
        change(&mut m);
        let e = m.validate().unwrap_err();
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    // An unvalidated manifest without payloads does not panic its readers.
    let mut empty = good.clone();
    empty.payloads.clear();
    assert_eq!((empty.root().size, empty.kernel().size), (0, 0));
    // Unknown fields are refused too (strict JSON).
    let mut v = serde_json::to_value(&good).unwrap();
    v["surprise"] = serde_json::json!(1);
    let e = serde_json::from_value::<bundle::Manifest>(v).unwrap_err();
    assert!(e.to_string().contains("surprise"), "{e}");
}

#[test]
fn versions_compare_numerically() {
    use std::cmp::Ordering::*;
    assert_eq!(bundle::compare_versions("0.10.0", "0.9.9"), Some(Greater));
    assert_eq!(bundle::compare_versions("1.0", "1.0.0"), Some(Equal));
    assert_eq!(bundle::compare_versions("1.0.0", "1.0.1"), Some(Less));
    assert_eq!(bundle::compare_versions("1.0-rc1", "1.0"), None);
    assert_eq!(bundle::compare_versions("", "1"), None);
}
