//! Unpacking one layer tarball into a directory, in the form overlayfs reads as a lower layer.
//!
//! - OCI whiteouts become overlay whiteouts: `.wh.NAME` → a 0/0 character device `NAME`;
//!   `.wh..wh..opq` → the parent directory gets `trusted.overlay.opaque=y`.
//! - Regular files, directories, symlinks, hard links, devices and fifos keep their mode,
//!   ownership, mtime and xattrs (`SCHILY.xattr.*` PAX records; `trusted.*` ones are dropped so a
//!   layer cannot forge overlay metadata).
//! - Every path is resolved component by component from a descriptor of the layer root with
//!   `O_NOFOLLOW | O_DIRECTORY`, never as a string: an absolute path, a `..` component, an entry
//!   below a symlink, and a hard link whose target is not inside the layer are rejected, and
//!   nothing is ever created outside the layer directory. Symlink targets are stored verbatim
//!   (they are resolved later inside the container's root, not here).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use nix::NixPath;
use ruzstd::decoding::{FrameDecoder, StreamingDecoder};
use tar::EntryType;

use crate::targuard::{OversizedHeader, TarGuard};

const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} rejected: {reason}")]
    Rejected { path: String, reason: String },
    #[error("layer entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("reading layer tar stream: {0}")]
    Read(#[source] io::Error),
    #[error("layer tar stream: {0}")]
    Oversized(#[from] OversizedHeader),
}

impl UnpackError {
    /// A failed read of the tar stream; an oversized header keeps its own variant.
    fn read(e: io::Error) -> UnpackError {
        if !e
            .get_ref()
            .is_some_and(|inner| inner.is::<OversizedHeader>())
        {
            return UnpackError::Read(e);
        }
        let kind = e.kind();
        match e
            .into_inner()
            .map(|inner| inner.downcast::<OversizedHeader>())
        {
            Some(Ok(oversized)) => UnpackError::Oversized(*oversized),
            Some(Err(inner)) => UnpackError::Read(io::Error::new(kind, inner)),
            None => UnpackError::Read(kind.into()),
        }
    }
}

/// Longest entry path quoted in an error: a hostile path can be a megabyte long.
const MAX_SHOWN_PATH: usize = 256;

/// `raw` for a message: lossy UTF-8, cut at [`MAX_SHOWN_PATH`] bytes.
pub fn shown_path(raw: &[u8]) -> String {
    if raw.len() <= MAX_SHOWN_PATH {
        return String::from_utf8_lossy(raw).into_owned();
    }
    format!(
        "{}... ({} bytes)",
        String::from_utf8_lossy(&raw[..MAX_SHOWN_PATH]),
        raw.len()
    )
}

/// What an unpack wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Wraps `input` in the decompressor its first bytes call for: gzip, zstd, or none (plain tar).
/// Detection by magic number, as Docker does, so a mislabelled layer still unpacks; the
/// digests checked around it keep that safe.
pub fn decompress<'a, R: BufRead + Send + 'a>(
    mut input: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let head = input.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(input)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(ZstdFrames::new(input)?))
    } else {
        Ok(Box::new(input))
    }
}

/// A zstd stream of one or more frames (skippable frames are skipped).
struct ZstdFrames<R: BufRead> {
    decoder: Option<StreamingDecoder<R, FrameDecoder>>,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(input: R) -> io::Result<Self> {
        let decoder = StreamingDecoder::new(input).map_err(zstd_error)?;
        Ok(ZstdFrames {
            decoder: Some(decoder),
        })
    }
}

fn zstd_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let n = decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // End of a frame: another one may follow.
            if decoder.get_mut().fill_buf()?.is_empty() {
                self.decoder = None;
                return Ok(0);
            }
            let Some(done) = self.decoder.take() else {
                return Ok(0);
            };
            let (input, frame) = done.into_parts();
            self.decoder =
                Some(StreamingDecoder::new_with_decoder(input, frame).map_err(zstd_error)?);
        }
    }
}

/// Unpacks the tar stream `tar` into `dest`, an existing, empty directory.
pub fn unpack<R: Read>(tar: R, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let root = open_dir_path(dest).map_err(|e| UnpackError::Io {
        path: dest.display().to_string(),
        op: "open layer directory",
        source: e.into(),
    })?;
    let mut unpacker = Unpacker {
        root,
        deferred_dirs: Vec::new(),
        stats: UnpackStats::default(),
    };
    // The guard refuses oversized long-name and PAX headers before `tar` buffers them.
    let mut archive = tar::Archive::new(TarGuard::new(tar));
    for entry in archive.entries().map_err(UnpackError::read)? {
        let entry = entry.map_err(UnpackError::read)?;
        unpacker.entry(entry)?;
    }
    unpacker.finish_dirs()?;
    Ok(unpacker.stats)
}

/// Splits a tar path into safe components: no absolute path, no `..`, no NUL.
/// An empty result names the layer root itself.
pub fn clean_path(raw: &[u8]) -> Result<Vec<&OsStr>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut components = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path has a '..' component"),
            c if c.contains(&0) => return Err("path has a NUL byte"),
            c => components.push(OsStr::from_bytes(c)),
        }
    }
    Ok(components)
}

/// Metadata a tar header carries for one entry.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker {
    root: OwnedFd,
    /// Directories whose mode and mtime are set at the end, once nothing more is written in
    /// them (a read-only directory must stay writable while its content is unpacked).
    deferred_dirs: Vec<(Vec<OsString>, u32, i64)>,
    stats: UnpackStats,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = shown_path(&raw_path);
        let reject = |reason: &str| UnpackError::Rejected {
            path: shown.clone(),
            reason: reason.to_string(),
        };
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let components = clean_path(&raw_path).map_err(reject)?;
        let meta = read_meta(&mut entry).map_err(UnpackError::read)?;
        self.stats.entries += 1;

        let Some((name, parents)) = components.split_last() else {
            // The layer root itself: only its metadata can be set.
            if !kind.is_dir() {
                return Err(reject("the layer root must be a directory"));
            }
            self.deferred_dirs.push((Vec::new(), meta.mode, meta.mtime));
            // The root descriptor is O_PATH, which fsetxattr refuses (EBADF).
            let root = reopen_dir(&self.root).map_err(io_err(&shown, "open layer root"))?;
            return self.apply_owner_xattrs(&root, None, &meta, &shown);
        };
        let name: &OsStr = name;
        let name_bytes = name.as_bytes();
        let parent = self.dir(parents, true, &shown)?;

        if name_bytes == OPAQUE_MARKER {
            let dir = reopen_dir(&parent).map_err(io_err(&shown, "open opaque directory"))?;
            return set_xattr_fd(&dir, OPAQUE_XATTR, b"y").map_err(io_err(&shown, "mark opaque"));
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) {
                return Ok(()); // AUFS bookkeeping (.wh..wh.plnk etc.): not content
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(reject("whiteout of an invalid name"));
            }
            let hidden = OsStr::from_bytes(hidden);
            remove_existing(&parent, hidden).map_err(io_err(&shown, "replace existing entry"))?;
            return mknodat(&parent, hidden, SFlag::S_IFCHR, NEW_NODE_MODE, 0)
                .map_err(io_err(&shown, "create whiteout"));
        }

        match kind {
            EntryType::Directory => {
                match stat_at(&parent, name).map_err(io_err(&shown, "stat"))? {
                    Some(st) if is_type(&st, SFlag::S_IFDIR) => {}
                    Some(_) => {
                        remove_existing(&parent, name)
                            .map_err(io_err(&shown, "replace existing entry"))?;
                        mkdirat(&parent, name, NEW_DIR_MODE).map_err(io_err(&shown, "mkdir"))?;
                    }
                    None => {
                        mkdirat(&parent, name, NEW_DIR_MODE).map_err(io_err(&shown, "mkdir"))?
                    }
                }
                let dir =
                    open_child_dir(&parent, name).map_err(io_err(&shown, "open directory"))?;
                self.apply_owner_xattrs(&dir, None, &meta, &shown)?;
                let mut path: Vec<OsString> = parents.iter().map(|c| c.to_os_string()).collect();
                path.push(name.to_os_string());
                self.deferred_dirs.push((path, meta.mode, meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_existing(&parent, name).map_err(io_err(&shown, "replace existing entry"))?;
                let mut file = create_file(&parent, name).map_err(io_err(&shown, "create"))?;
                let n = io::copy(&mut entry, &mut file).map_err(io_err(&shown, "write"))?;
                self.stats.bytes += n;
                let fd = OwnedFd::from(file);
                self.apply_owner_xattrs(&fd, None, &meta, &shown)?;
                fchmod(&fd, mode(meta.mode)).map_err(io_err(&shown, "chmod"))?;
                let t = mtime_spec(meta.mtime);
                futimens(&fd, &t, &t).map_err(io_err(&shown, "set mtime"))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| reject("symlink without a target"))?
                    .into_owned();
                if target.is_empty() || target.contains(&0) {
                    return Err(reject("symlink target empty or has a NUL byte"));
                }
                remove_existing(&parent, name).map_err(io_err(&shown, "replace existing entry"))?;
                symlinkat(OsStr::from_bytes(&target), &parent, name)
                    .map_err(io_err(&shown, "symlink"))?;
                self.apply_owner_xattrs(&parent, Some(name), &meta, &shown)?;
                let t = mtime_spec(meta.mtime);
                utimensat(&parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(io_err(&shown, "set mtime"))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| reject("hard link without a target"))?
                    .into_owned();
                let target_components =
                    clean_path(&target).map_err(|r| reject(&format!("hard link target: {r}")))?;
                let Some((target_name, target_parents)) = target_components.split_last() else {
                    return Err(reject("hard link to the layer root"));
                };
                let target_name: &OsStr = target_name;
                let target_parent = self.dir(target_parents, false, &shown)?;
                match stat_at(&target_parent, target_name)
                    .map_err(io_err(&shown, "stat link target"))?
                {
                    Some(st) if !is_type(&st, SFlag::S_IFDIR) => {}
                    Some(_) => return Err(reject("hard link to a directory")),
                    None => return Err(reject("hard link target is not in this layer")),
                }
                if target_components == components {
                    return Ok(()); // a link to itself: already there
                }
                remove_existing(&parent, name).map_err(io_err(&shown, "replace existing entry"))?;
                // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
                linkat(&target_parent, target_name, &parent, name, AtFlags::empty())
                    .map_err(io_err(&shown, "link"))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                remove_existing(&parent, name).map_err(io_err(&shown, "replace existing entry"))?;
                let dev = makedev(major.into(), minor.into());
                mknodat(&parent, name, file_type, NEW_NODE_MODE, dev)
                    .map_err(io_err(&shown, "mknod"))?;
                self.apply_owner_xattrs(&parent, Some(name), &meta, &shown)?;
                // `name` was just created as a node, not a symlink.
                fchmodat(&parent, name, mode(meta.mode), FchmodatFlags::FollowSymlink)
                    .map_err(io_err(&shown, "chmod"))?;
                let t = mtime_spec(meta.mtime);
                utimensat(&parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(io_err(&shown, "set mtime"))?;
            }
            other => return Err(reject(&format!("unsupported entry type {other:?}"))),
        }
        Ok(())
    }

    /// Opens the directory `components` below the root, creating missing ones when `create`.
    /// Fails on anything that is not a real directory (a symlink included).
    fn dir(
        &self,
        components: &[&OsStr],
        create: bool,
        shown: &str,
    ) -> Result<OwnedFd, UnpackError> {
        let mut current = reopen_path(&self.root).map_err(io_err(shown, "open layer root"))?;
        for c in components {
            let next = match open_path_dir(&current, c) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => mkdirat(&current, *c, NEW_DIR_MODE)
                    .and_then(|()| open_path_dir(&current, c))
                    .map_err(io_err(shown, "create parent directory"))?,
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    return Err(UnpackError::Rejected {
                        path: shown.to_string(),
                        reason: format!(
                            "{:?} on its path is a symlink or not a directory",
                            shown_path(c.as_bytes())
                        ),
                    })
                }
                Err(Errno::ENOENT) => {
                    return Err(UnpackError::Rejected {
                        path: shown.to_string(),
                        reason: "hard link target is not in this layer".to_string(),
                    })
                }
                Err(e) => return Err(io_err(shown, "open parent directory")(e)),
            };
            current = next;
        }
        Ok(current)
    }

    /// Ownership and xattrs of `fd` itself (name `None`) or of `name` in directory `fd`.
    fn apply_owner_xattrs(
        &self,
        fd: &OwnedFd,
        name: Option<&OsStr>,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        chown_at(fd, name, meta.uid, meta.gid).map_err(io_err(shown, "chown"))?;
        for (key, value) in &meta.xattrs {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            if key.starts_with("trusted.") {
                log::debug!("{shown}: dropping xattr {key}");
                continue;
            }
            let result = match name {
                None => set_xattr_fd(fd, key, value),
                Some(name) => set_xattr_link(fd, name, key, value),
            };
            match result {
                Ok(()) => {}
                // Filesystems without the namespace (e.g. security.selinux): not fatal.
                Err(Errno::EOPNOTSUPP) => {
                    log::debug!("{shown}: xattr {key} not supported here");
                }
                Err(e) => return Err(io_err(shown, "set xattr")(e)),
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.deferred_dirs);
        let mut done = std::collections::HashSet::new();
        for (path, dir_mode, mtime) in dirs.iter().rev() {
            // A directory listed twice takes its last entry's metadata.
            if !done.insert(path) {
                continue;
            }
            let shown = shown_path(
                path.iter()
                    .map(|c| c.as_bytes())
                    .collect::<Vec<_>>()
                    .join(&b'/')
                    .as_slice(),
            );
            let components: Vec<&OsStr> = path.iter().map(|c| c.as_os_str()).collect();
            let fd = match self.dir(&components, false, &shown) {
                Ok(fd) => fd,
                // A later entry replaced it (or a directory above it) with a symlink, a file
                // or a whiteout: nothing left to set. The walk never follows a symlink.
                Err(UnpackError::Rejected { .. }) => continue,
                Err(e) => return Err(e),
            };
            let dir = reopen_dir(&fd).map_err(io_err(&shown, "open directory"))?;
            let t = mtime_spec(*mtime);
            fchmod(&dir, mode(*dir_mode))
                .and_then(|()| futimens(&dir, &t, &t))
                .map_err(io_err(&shown, "set directory mode and mtime"))?;
        }
        Ok(())
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            if let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((key.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    let h = entry.header();
    let to_u32 = |v: u64| u32::try_from(v).map_err(|_| io::Error::other("id out of range"));
    Ok(Meta {
        mode: h.mode()? & 0o7777,
        uid: to_u32(h.uid()?)?,
        gid: to_u32(h.gid()?)?,
        mtime: i64::try_from(h.mtime()?).unwrap_or(0),
        xattrs,
    })
}

// --- descriptor-relative helpers: every path is resolved from a directory descriptor ---

/// Mode of a directory created for the layer; its real mode is set once its content is in.
const NEW_DIR_MODE: Mode = Mode::from_bits_retain(0o755);
/// Mode of a file or node while it is written; its real mode is set right after.
const NEW_NODE_MODE: Mode = Mode::from_bits_retain(0o600);

/// Maps a failed call on one entry (an `Errno` or an `io::Error`) to the entry's error.
fn io_err<'a, E: Into<io::Error>>(
    path: &'a str,
    op: &'static str,
) -> impl FnOnce(E) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        path: path.to_string(),
        op,
        source: e.into(),
    }
}

fn open_dir_path(path: &Path) -> nix::Result<OwnedFd> {
    openat(
        AT_FDCWD,
        path.as_os_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// An `O_PATH` descriptor of the directory `name` in `dir`; a symlink there fails (`ELOOP`
/// or `ENOTDIR`), so a walk made of these never leaves the layer.
fn open_path_dir(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        dir.as_fd(),
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn open_child_dir(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        dir.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn reopen_path(dir: &OwnedFd) -> nix::Result<OwnedFd> {
    open_path_dir(dir, OsStr::new("."))
}

/// A readable descriptor of the directory `dir` (an `O_PATH` one cannot take xattrs or chmod).
fn reopen_dir(dir: &OwnedFd) -> nix::Result<OwnedFd> {
    open_child_dir(dir, OsStr::new("."))
}

/// A new regular file `name` in `dir`: `O_EXCL | O_NOFOLLOW`, so nothing existing (a symlink
/// planted by an earlier entry included) is ever opened.
fn create_file(dir: &OwnedFd, name: &OsStr) -> nix::Result<File> {
    let fd = openat(
        dir.as_fd(),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        NEW_NODE_MODE,
    )?;
    Ok(File::from(fd))
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_type(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == kind
}

/// Removes `name` in `dir` if present, directories recursively (symlinks are never followed).
fn remove_existing(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let Some(st) = stat_at(dir, name)? else {
        return Ok(());
    };
    if is_type(&st, SFlag::S_IFDIR) {
        // std's remove_dir_all works with openat/unlinkat and never follows symlinks; the
        // /proc path pins the already resolved parent directory.
        let path = proc_path(dir, name);
        return std::fs::remove_dir_all(path);
    }
    Ok(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?)
}

fn proc_path(dir: &OwnedFd, name: &OsStr) -> std::path::PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

/// Ownership of `dir` itself (name `None`, also through an `O_PATH` descriptor) or of `name`
/// in `dir`, never following a symlink.
fn chown_at(dir: &OwnedFd, name: Option<&OsStr>, uid: u32, gid: u32) -> nix::Result<()> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    match name {
        Some(name) => fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW),
        None => fchownat(dir, OsStr::new(""), uid, gid, AtFlags::AT_EMPTY_PATH),
    }
}

fn mode(bits: u32) -> Mode {
    Mode::from_bits_retain(bits)
}

fn mtime_spec(mtime: i64) -> TimeSpec {
    TimeSpec::new(mtime, 0)
}

// nix has no xattr calls: these two stay thin libc wrappers.

fn set_xattr_fd(fd: &OwnedFd, key: &str, value: &[u8]) -> nix::Result<()> {
    let rc = OsStr::new(key).with_nix_path(|k| {
        // SAFETY: `k` is a NUL-terminated string living across the call; value pointer and
        // length describe a live slice; `fd` is an open descriptor.
        unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                k.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        }
    })?;
    Errno::result(rc).map(drop)
}

/// xattr of `name` in `dir` without following it (symlinks, device nodes).
fn set_xattr_link(dir: &OwnedFd, name: &OsStr, key: &str, value: &[u8]) -> nix::Result<()> {
    let rc = proc_path(dir, name).as_os_str().with_nix_path(|path| {
        OsStr::new(key).with_nix_path(|k| {
            // SAFETY: `path` and `k` are NUL-terminated strings living across the call; value
            // pointer and length describe a live slice.
            unsafe {
                libc::lsetxattr(
                    path.as_ptr(),
                    k.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }
        })
    })??;
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_accepts_relative_and_dot_prefixed() {
        let c = clean_path(b"./usr//bin/./sh").unwrap();
        assert_eq!(
            c,
            vec![OsStr::new("usr"), OsStr::new("bin"), OsStr::new("sh")]
        );
        assert!(clean_path(b"./").unwrap().is_empty());
        assert!(clean_path(b"").unwrap().is_empty());
    }

    #[test]
    fn clean_path_rejects_escapes() {
        assert!(clean_path(b"/etc/passwd").is_err());
        assert!(clean_path(b"../x").is_err());
        assert!(clean_path(b"a/../../x").is_err());
        assert!(clean_path(b"a/..").is_err());
    }

    #[test]
    fn syscall_errors_keep_errno_and_path() {
        let missing =
            std::env::temp_dir().join(format!("berth-unpack-missing-{}/layer", std::process::id()));
        match unpack(&[0u8; 1024][..], &missing) {
            Err(UnpackError::Io { path, op, source }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
                assert_eq!(path, missing.display().to_string());
                assert_eq!(op, "open layer directory");
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn decompress_detects_formats() {
        use std::io::Write;
        let plain = b"plain tar bytes".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        for input in [plain.clone(), gz] {
            let mut out = Vec::new();
            decompress(&input[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, plain);
        }
    }
}
