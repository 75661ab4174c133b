//! `tmpcopyup`: what a directory of the image held, copied into the tmpfs mounted over it.
//! The source is read through a descriptor opened before the mount (it still reaches the
//! covered directory) and every step is relative to a directory descriptor with symlinks
//! never followed, so a link in the image cannot lead the copy outside the root.

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, mknodat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, symlinkat, Gid, Uid};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A failed step of the copy: what, the path below the copied directory, the errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {}: {errno}", path.display())]
pub struct CopyError {
    pub what: &'static str,
    pub path: PathBuf,
    pub errno: Errno,
}

type Result<T> = std::result::Result<T, CopyError>;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Copies the content of the directory `from` into the directory `to` (both descriptors),
/// with ownership, modes and symlinks. With `root_attrs`, `to` itself also takes the owner
/// and mode of `from`.
pub fn copy_tree(from: BorrowedFd<'_>, to: BorrowedFd<'_>, root_attrs: bool) -> Result<()> {
    copy_dir(from, to, Path::new(""))?;
    if root_attrs {
        let st = nix::sys::stat::fstat(from).map_err(at("stat", Path::new(".")))?;
        set_owner_and_mode(to, &st, Path::new("."))?;
    }
    Ok(())
}

fn at(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> CopyError {
    let path = path.to_path_buf();
    move |errno| CopyError { what, path, errno }
}

/// The entries of a directory, without `.` and `..`.
fn entries(dir: BorrowedFd<'_>, rel: &Path) -> Result<Vec<OsString>> {
    // A descriptor of its own: the listing moves its offset.
    let fd = openat(dir, ".", DIR_FLAGS, Mode::empty()).map_err(at("open", rel))?;
    let mut list = nix::dir::Dir::from_fd(fd).map_err(at("list", rel))?;
    let mut names = Vec::new();
    for e in list.iter() {
        let e = e.map_err(at("list", rel))?;
        let name = OsStr::from_bytes(e.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_os_string());
        }
    }
    Ok(names)
}

fn copy_dir(from: BorrowedFd<'_>, to: BorrowedFd<'_>, rel: &Path) -> Result<()> {
    for name in entries(from, rel)? {
        let path = rel.join(&name);
        let name = name.as_os_str();
        let st = fstatat(from, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(at("stat", &path))?;
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        match kind {
            SFlag::S_IFDIR => {
                mkdirat(to, name, Mode::from_bits_truncate(0o700)).map_err(at("mkdir", &path))?;
                let src =
                    openat(from, name, DIR_FLAGS, Mode::empty()).map_err(at("open", &path))?;
                let dst = openat(to, name, DIR_FLAGS, Mode::empty()).map_err(at("open", &path))?;
                copy_dir(src.as_fd(), dst.as_fd(), &path)?;
                // Last, so a directory without write permission can still be filled.
                set_owner_and_mode(dst.as_fd(), &st, &path)?;
            }
            SFlag::S_IFREG => {
                let src = openat(
                    from,
                    name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(at("open", &path))?;
                let dst = openat(
                    to,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(at("create", &path))?;
                let (mut src, mut dst) = (std::fs::File::from(src), std::fs::File::from(dst));
                std::io::copy(&mut src, &mut dst).map_err(|e| CopyError {
                    what: "copy",
                    path: path.clone(),
                    errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })?;
                set_owner_and_mode(dst.as_fd(), &st, &path)?;
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(from, name).map_err(at("readlink", &path))?;
                symlinkat(target.as_os_str(), to, name).map_err(at("symlink", &path))?;
                lchown_at(to, name, &st, &path)?;
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
                let perm = Mode::from_bits_truncate(st.st_mode & 0o7777);
                mknodat(to, name, kind, perm, st.st_rdev).map_err(at("mknod", &path))?;
                lchown_at(to, name, &st, &path)?;
                // The mode again: mknod applied the umask, chown cleared set-id bits. The node
                // was just made here, so following the name cannot lead elsewhere.
                nix::sys::stat::fchmodat(
                    to,
                    name,
                    perm,
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(at("chmod", &path))?;
            }
            // A socket is bound by a process; as a file it carries nothing to copy.
            _ => {}
        }
    }
    Ok(())
}

/// Owner first: chown clears the set-id bits the mode then sets again.
fn set_owner_and_mode(fd: BorrowedFd<'_>, st: &FileStat, path: &Path) -> Result<()> {
    fchown(
        fd,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )
    .map_err(at("chown", path))?;
    fchmod(fd, Mode::from_bits_truncate(st.st_mode & 0o7777)).map_err(at("chmod", path))
}

fn lchown_at(dir: BorrowedFd<'_>, name: &OsStr, st: &FileStat, path: &Path) -> Result<()> {
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(at("chown", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn copies_content_owners_modes_and_links_without_following_them() {
        let base = std::env::temp_dir().join(format!("berth-copyup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (from, to, outside) = (base.join("from"), base.join("to"), base.join("outside"));
        for d in [&from, &to, &outside] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(from.join("sub/deeper")).unwrap();
        std::fs::write(from.join("sub/deeper/file"), "deep").unwrap();
        std::fs::write(from.join("secret"), "s").unwrap();
        std::fs::set_permissions(from.join("secret"), PermissionsExt::from_mode(0o4750)).unwrap();
        std::fs::set_permissions(from.join("sub"), PermissionsExt::from_mode(0o500)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", from.join("abs")).unwrap();
        std::os::unix::fs::symlink(&outside, from.join("out")).unwrap();
        nix::unistd::mkfifo(&from.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::set_permissions(from.join("fifo"), PermissionsExt::from_mode(0o620)).unwrap();
        std::fs::set_permissions(&from, PermissionsExt::from_mode(0o751)).unwrap();
        let (f, t) = (
            nix::fcntl::open(&from, DIR_FLAGS, Mode::empty()).unwrap(),
            nix::fcntl::open(&to, DIR_FLAGS, Mode::empty()).unwrap(),
        );
        copy_tree(f.as_fd(), t.as_fd(), true).unwrap();
        assert_eq!(
            std::fs::read_to_string(to.join("sub/deeper/file")).unwrap(),
            "deep"
        );
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&to.join("secret")), 0o4750);
        assert_eq!(mode(&to.join("sub")), 0o500);
        assert_eq!(mode(&to.join("fifo")), 0o620);
        assert_eq!(mode(&to), 0o751, "the root takes the source's mode");
        let me = std::fs::metadata(&from).unwrap().uid();
        assert_eq!(std::fs::metadata(to.join("secret")).unwrap().uid(), me);
        assert_eq!(
            std::fs::read_link(to.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(std::fs::read_link(to.join("out")).unwrap(), outside);
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        // An entry that exists already is an error naming it.
        let t2 = nix::fcntl::open(&to, DIR_FLAGS, Mode::empty()).unwrap();
        let e = copy_tree(f.as_fd(), t2.as_fd(), false).unwrap_err();
        assert_eq!(e.errno, Errno::EEXIST);
        assert!(e.to_string().contains("EEXIST"), "{e}");
        std::fs::set_permissions(to.join("sub"), PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::set_permissions(from.join("sub"), PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
