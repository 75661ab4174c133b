//! Layer unpacking: metadata kept faithfully, and crafted tarballs for every escape rejected
//! with nothing written outside the layer directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use berth_store::unpack::{unpack, UnpackError};
use support::{TarBuilder, TempDir};

fn getxattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let k = std::ffi::CString::new(key).unwrap();
    let mut buf = vec![0u8; 256];
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn keeps_modes_owners_mtimes_links_xattrs_devices() {
    let t = TempDir::new("unpack-meta");
    let dest = t.join("layer");
    fs::create_dir(&dest).unwrap();
    let tar = TarBuilder::new()
        .dir_with("./", 0o755, 0, 0)
        .dir_with("etc/", 0o700, 1000, 1001)
        .file_with("etc/secret", "s", 0o4750, 1234, 5678, 1_600_000_000)
        .dir_with("ro/", 0o555, 0, 0)
        .file("ro/inside", "written before the dir turned read-only")
        .symlink("etc/link", "/etc/secret")
        .symlink("etc/rel", "../ro/inside")
        .hardlink("etc/hard", "etc/secret")
        .file_with_xattr("cap", "x", "user.berth", "yes")
        .file_with_xattr("forged", "x", "trusted.overlay.redirect", "/etc")
        .fifo("run/fifo")
        .char_device("dev/null", 1, 3)
        .file("auto/created/parents", "p")
        .file("dup", "first")
        .file("dup", "second")
        .finish();
    let stats = unpack(&tar[..], &dest).unwrap();
    assert_eq!(stats.entries, 15);

    let secret = fs::symlink_metadata(dest.join("etc/secret")).unwrap();
    assert_eq!(secret.mode() & 0o7777, 0o4750, "setuid survives chown");
    assert_eq!((secret.uid(), secret.gid()), (1234, 5678));
    assert_eq!(secret.mtime(), 1_600_000_000);
    let etc = fs::symlink_metadata(dest.join("etc")).unwrap();
    assert_eq!(etc.mode() & 0o7777, 0o700);
    assert_eq!((etc.uid(), etc.gid()), (1000, 1001));
    assert_eq!(
        etc.mtime(),
        1_700_000_000,
        "dir mtime set after its content"
    );
    assert_eq!(
        fs::metadata(dest.join("ro")).unwrap().permissions().mode() & 0o777,
        0o555
    );
    assert_eq!(
        fs::read_to_string(dest.join("ro/inside")).unwrap(),
        "written before the dir turned read-only"
    );
    assert_eq!(
        fs::read_link(dest.join("etc/link")).unwrap(),
        Path::new("/etc/secret")
    );
    assert_eq!(
        fs::read_link(dest.join("etc/rel")).unwrap(),
        Path::new("../ro/inside")
    );
    assert_eq!(
        fs::metadata(dest.join("etc/hard")).unwrap().ino(),
        secret.ino()
    );
    assert_eq!(
        getxattr(&dest.join("cap"), "user.berth").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        getxattr(&dest.join("forged"), "trusted.overlay.redirect"),
        None
    );
    assert!(fs::symlink_metadata(dest.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let null = fs::symlink_metadata(dest.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(
        fs::read_to_string(dest.join("auto/created/parents")).unwrap(),
        "p"
    );
    assert_eq!(fs::read_to_string(dest.join("dup")).unwrap(), "second");
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let t = TempDir::new("unpack-wh");
    let dest = t.join("layer");
    fs::create_dir(&dest).unwrap();
    let tar = TarBuilder::new()
        .dir("a/")
        .file("a/.wh.gone", "")
        .file("a/.wh..wh..opq", "")
        .file("a/kept", "k")
        .file(".wh..wh.plnk", "")
        .finish();
    unpack(&tar[..], &dest).unwrap();
    let wh = fs::symlink_metadata(dest.join("a/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(
        getxattr(&dest.join("a"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dest.join("a/.wh..wh..opq").exists());
    assert!(!dest.join(".wh..wh.plnk").exists() && !dest.join(".wh.plnk").exists());
}

/// Unpacks `tar` into a fresh layer dir next to a sentinel tree, expects a rejection, and
/// checks that nothing outside the layer changed.
fn assert_rejected(name: &str, tar: Vec<u8>) {
    let t = TempDir::new("unpack-evil");
    // layout: t/outside/{sentinel,dir/} and t/deep/er/layer (so ../ escapes land in t/)
    let outside = t.join("outside");
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("sentinel"), "untouched").unwrap();
    let dest = t.join("deep/er/layer");
    fs::create_dir_all(&dest).unwrap();
    let before = snapshot(t.path(), &dest);

    match unpack(&tar[..], &dest) {
        Err(UnpackError::Rejected { .. }) => {}
        other => panic!("{name}: expected a rejection, got {other:?}"),
    }
    assert_eq!(
        fs::read_to_string(outside.join("sentinel")).unwrap(),
        "untouched",
        "{name}"
    );
    assert_eq!(
        snapshot(t.path(), &dest),
        before,
        "{name}: something changed outside the layer"
    );
    for p in ["/evil-berth-test", "/tmp/evil-berth-test"] {
        assert!(!Path::new(p).exists(), "{name}: wrote {p}");
    }
}

/// Every path below `root` except the layer dir's content, with size and mode.
fn snapshot(root: &Path, skip: &Path) -> Vec<(String, u64, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            out.push((p.display().to_string(), m.len(), m.mode()));
            if m.is_dir() && p != skip {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn rejects_dot_dot_paths() {
    assert_rejected(
        "../ file",
        TarBuilder::new()
            .file("../../../outside/sentinel", "pwned")
            .finish(),
    );
    assert_rejected(
        "nested ..",
        TarBuilder::new()
            .dir("a/")
            .file("a/../../evil", "x")
            .finish(),
    );
    assert_rejected(
        "../ dir",
        TarBuilder::new().dir("../../../outside/newdir/").finish(),
    );
    assert_rejected(
        ".. whiteout",
        TarBuilder::new()
            .file("../../../outside/.wh.sentinel", "")
            .finish(),
    );
}

#[test]
fn rejects_absolute_paths() {
    assert_rejected(
        "absolute",
        TarBuilder::new().file("/tmp/evil-berth-test", "x").finish(),
    );
    assert_rejected(
        "absolute dir",
        TarBuilder::new().dir("/evil-berth-test/").finish(),
    );
}

#[test]
fn rejects_writes_through_symlinks() {
    let t = TempDir::new("unpack-symlink-target");
    let target = t.path().display().to_string();
    // A symlink to an absolute directory outside, then a file below it.
    assert_rejected(
        "symlink dir absolute",
        TarBuilder::new()
            .symlink("esc", &target)
            .file("esc/evil", "x")
            .finish(),
    );
    assert!(
        fs::read_dir(t.path()).unwrap().next().is_none(),
        "wrote through symlink"
    );
    // A relative symlink climbing out, then a file below it.
    assert_rejected(
        "symlink dir relative",
        TarBuilder::new()
            .symlink("esc", "../../../outside")
            .file("esc/sentinel", "pwned")
            .finish(),
    );
    // A symlink to a directory inside the layer is no way around it either.
    assert_rejected(
        "symlink chain",
        TarBuilder::new()
            .dir("real/")
            .symlink("hop", "real")
            .symlink("real/up", "../../../../outside")
            .file("hop/up/evil", "x")
            .finish(),
    );
    // A symlink entry whose name climbs out.
    assert_rejected(
        "symlink named ..",
        TarBuilder::new()
            .symlink("../../../outside/link", "/etc")
            .finish(),
    );
}

#[test]
fn rejects_hard_links_leaving_the_layer() {
    assert_rejected(
        "hard link ..",
        TarBuilder::new()
            .hardlink("stolen", "../../../outside/sentinel")
            .finish(),
    );
    assert_rejected(
        "hard link absolute",
        TarBuilder::new().hardlink("passwd", "/etc/passwd").finish(),
    );
    // Through a symlink that points outside.
    assert_rejected(
        "hard link via symlink",
        TarBuilder::new()
            .symlink("out", "../../../outside")
            .hardlink("stolen", "out/sentinel")
            .finish(),
    );
    // To something that is simply not in the layer.
    assert_rejected(
        "hard link missing",
        TarBuilder::new().hardlink("x", "does/not/exist").finish(),
    );
}

#[test]
fn replacing_a_symlink_with_a_file_does_not_write_through_it() {
    // The later entry replaces the symlink itself; the target outside stays as it was.
    let t = TempDir::new("unpack-replace");
    fs::write(t.join("target"), "original").unwrap();
    let dest = t.join("layer");
    fs::create_dir(&dest).unwrap();
    let target = t.join("target").display().to_string();
    let tar = TarBuilder::new()
        .symlink("f", &target)
        .file("f", "new")
        .finish();
    unpack(&tar[..], &dest).unwrap();
    assert_eq!(fs::read_to_string(t.join("target")).unwrap(), "original");
    assert!(fs::symlink_metadata(dest.join("f")).unwrap().is_file());
}

/// Counts the bytes read from the stream it wraps.
struct Counting<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// A header claiming a 64 MiB body (the body follows, made on the fly as it is read).
fn long_header_stream(
    kind: tar::EntryType,
) -> (impl std::io::Read, std::rc::Rc<std::cell::Cell<u64>>) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_path("././@LongLink").unwrap();
    h.set_size(64 << 20);
    h.set_cksum();
    let body = std::io::Read::take(std::io::repeat(b'a'), 64 << 20);
    let read = std::rc::Rc::default();
    let stream = Counting {
        inner: std::io::Read::chain(std::io::Cursor::new(h.as_bytes().to_vec()), body),
        read: std::rc::Rc::clone(&read),
    };
    (stream, read)
}

#[test]
fn refuses_huge_long_name_and_pax_headers_before_reading_them() {
    for kind in [
        tar::EntryType::GNULongName,
        tar::EntryType::GNULongLink,
        tar::EntryType::XHeader,
        tar::EntryType::XGlobalHeader,
    ] {
        let t = TempDir::new("unpack-huge-header");
        let dest = t.join("layer");
        fs::create_dir(&dest).unwrap();
        let (stream, read) = long_header_stream(kind);
        match unpack(stream, &dest) {
            Err(UnpackError::Oversized(e)) => assert_eq!(e.size, 64 << 20, "{kind:?}"),
            other => panic!("{kind:?}: expected an oversized header error, got {other:?}"),
        }
        // Refused at its header: the body was never read, so never buffered.
        assert!(read.get() < 64 << 10, "{kind:?}: read {} bytes", read.get());
        assert!(fs::read_dir(&dest).unwrap().next().is_none());
    }
}

/// `h` with owner and mtime set (a header made by hand has them empty).
fn header(mut h: tar::Header) -> tar::Header {
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_mode(0o644);
    h
}

#[test]
fn long_names_pax_records_and_sparse_files_still_unpack() {
    let t = TempDir::new("unpack-extensions");
    let dest = t.join("layer");
    fs::create_dir(&dest).unwrap();
    let long_dir = "d".repeat(200);
    let long = format!("{long_dir}/{}", "f".repeat(200));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::Header::new_gnu());
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, &long_dir, &[][..]).unwrap();
    let mut h = header(tar::Header::new_gnu());
    h.set_mode(0o644);
    h.set_size(4);
    b.append_data(&mut h, &long, &b"long"[..]).unwrap();
    let mut h = header(tar::Header::new_gnu());
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "hard", &long).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.berth", &b"kept"[..])])
        .unwrap();
    let mut h = header(tar::Header::new_ustar());
    h.set_mode(0o644);
    h.set_size(3);
    b.append_data(&mut h, "xattr", &b"abc"[..]).unwrap();
    // A sparse file with more chunks than a GNU header holds (extension blocks follow it).
    let sparse = t.join("sparse-src");
    {
        use std::io::{Seek, Write};
        let mut f = fs::File::create(&sparse).unwrap();
        for i in 0..30u64 {
            f.seek(std::io::SeekFrom::Start(i << 16)).unwrap();
            f.write_all(&[i as u8 + 1; 4096]).unwrap();
        }
    }
    b.append_path_with_name(&sparse, "sparse").unwrap();
    let tar = b.into_inner().unwrap();

    let stats = unpack(&tar[..], &dest).unwrap();
    assert_eq!(stats.entries, 5);
    assert_eq!(fs::read(dest.join(&long)).unwrap(), b"long");
    assert_eq!(
        fs::metadata(dest.join("hard")).unwrap().ino(),
        fs::metadata(dest.join(&long)).unwrap().ino()
    );
    assert_eq!(
        getxattr(&dest.join("xattr"), "user.berth").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(
        fs::read(dest.join("sparse")).unwrap(),
        fs::read(&sparse).unwrap()
    );
}

#[test]
fn keeps_xattrs_of_the_layer_root() {
    // umoci, and `tar --xattrs` on SELinux hosts, write the root entry with xattrs.
    let t = TempDir::new("unpack-root-xattr");
    let dest = t.join("layer");
    fs::create_dir(&dest).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.user.berth", &b"root"[..])])
        .unwrap();
    let mut h = header(tar::Header::new_ustar());
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o751);
    h.set_size(0);
    b.append_data(&mut h, "./", &[][..]).unwrap();
    let mut h = header(tar::Header::new_ustar());
    h.set_size(1);
    b.append_data(&mut h, "./etc/hostname", &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();

    unpack(&tar[..], &dest).unwrap();
    assert_eq!(getxattr(&dest, "user.berth").as_deref(), Some(&b"root"[..]));
    assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o7777, 0o751);
    assert_eq!(fs::read(dest.join("etc/hostname")).unwrap(), b"x");
}

#[test]
fn a_directory_replaced_later_in_the_layer_is_not_an_error() {
    let t = TempDir::new("unpack-dir-replaced");
    for (name, tar, kind) in [
        (
            "symlink",
            TarBuilder::new()
                .dir("a/")
                .file("a/inner", "x")
                .symlink("a", "b")
                .finish(),
            "symlink",
        ),
        (
            "file",
            TarBuilder::new().dir("a/").file("a", "file").finish(),
            "file",
        ),
    ] {
        let dest = t.join(name);
        fs::create_dir(&dest).unwrap();
        unpack(&tar[..], &dest).unwrap_or_else(|e| panic!("{name}: {e}"));
        let meta = fs::symlink_metadata(dest.join("a")).unwrap();
        match kind {
            "symlink" => assert!(meta.file_type().is_symlink(), "{name}"),
            _ => assert!(meta.is_file(), "{name}"),
        }
    }
    // Listed twice: the last entry's mode holds.
    let dest = t.join("twice");
    fs::create_dir(&dest).unwrap();
    let tar = TarBuilder::new()
        .dir_with("d/", 0o700, 0, 0)
        .dir_with("d/", 0o750, 0, 0)
        .finish();
    unpack(&tar[..], &dest).unwrap();
    assert_eq!(fs::metadata(dest.join("d")).unwrap().mode() & 0o7777, 0o750);
}
