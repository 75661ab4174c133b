//! The runtime's own executable, as a container may see it (the CVE-2019-5736 pattern).
//!
//! Every process the runtime puts into a container runs the runtime's code until it execs the
//! container's program: the init of `create`/`run`, the process of `exec`. A process of the
//! container can reach such a process's executable through `/proc/PID/exe`, and a container
//! program that is a script starting with `#!/proc/self/exe` makes the kernel run the
//! runtime's executable itself, as a process of the container. Were that the host's file, the
//! container could open it and, once nothing runs it, write it: the next runtime started on
//! the host would run the container's code as root.
//!
//! So the processes that start container processes run from a *sealed* executable, one no
//! write can ever reach: [`ensure_sealed`] re-executes the runtime from a read-only overlayfs
//! mount that is never attached anywhere (no copy, no extra memory), or, where overlayfs cannot
//! be used, from a memfd copy sealed against writes. A binary on a filesystem without write
//! support (Berth's erofs root) is sealed as it is. Independently, every process cloned into a
//! container is born non-dumpable (see [`NonDumpable`]): until it execs, processes of the
//! container cannot open its `/proc/PID/exe`, `fd/`, `cwd` or `root` at all.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Set (to the pid of the process that re-executed) only for the re-executed image, so that a
/// seal that did not take is an error instead of a loop. Removed again at once.
const REEXEC_MARK: &str = "_BERTH_SEALED_REEXEC";

const OVERLAYFS_SUPER_MAGIC: libc::__fsword_t = 0x794c_7630;
const EROFS_SUPER_MAGIC_V1: libc::__fsword_t = 0xe0f5_e1e2;
const SQUASHFS_MAGIC: libc::__fsword_t = 0x7371_7368;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
/// memfd_create: the file may be executed (needed where `vm.memfd_noexec` asks for it).
const MFD_EXEC: libc::c_uint = 0x10;
/// The seals that make a memfd immutable (F_SEAL_SEAL, SHRINK, GROW, WRITE).
const MEMFD_SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot make a sealed copy of the runtime executable ({what}): {source}")]
    Copy {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("re-executing the runtime from its sealed copy: {0}")]
    Exec(io::Error),
    #[error(
        "the runtime executable is still writable after re-executing from a sealed copy: \
         refusing to let containers reach it"
    )]
    NotSealed,
}

fn last(what: &'static str) -> SealError {
    SealError::Copy {
        what,
        source: io::Error::last_os_error(),
    }
}

/// How the running executable is protected from writes, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// A memfd with the write, grow, shrink and seal seals.
    Memfd,
    /// A file of a read-only overlayfs mount that no path reaches.
    Overlay,
    /// A filesystem that cannot be written at all (erofs, squashfs).
    ReadOnlyFs,
}

/// How `/proc/self/exe` is sealed, or `None` when a write could reach it.
pub fn current() -> Option<Seal> {
    let exe = File::open("/proc/self/exe").ok()?;
    seal_of(&exe)
}

/// Whether the running executable is sealed.
pub fn is_sealed() -> bool {
    current().is_some()
}

fn seal_of(exe: &File) -> Option<Seal> {
    let fd = exe.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, no pointers.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals >= 0 && seals & MEMFD_SEALS == MEMFD_SEALS {
        return Some(Seal::Memfd);
    }
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes into the buffer we pass.
    if unsafe { libc::fstatfs(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialised by the successful fstatfs.
    let st = unsafe { st.assume_init() };
    let magic = st.f_type;
    if magic == EROFS_SUPER_MAGIC_V1 || magic == SQUASHFS_MAGIC {
        return Some(Seal::ReadOnlyFs);
    }
    if magic == OVERLAYFS_SUPER_MAGIC && refuses_writes(fd) && is_detached(fd) {
        return Some(Seal::Overlay);
    }
    None
}

/// Whether the kernel refuses to open `fd`'s file for writing because its mount or
/// filesystem is read-only (root passes every other check).
fn refuses_writes(fd: RawFd) -> bool {
    // SAFETY: faccessat with an empty path names the descriptor itself.
    let r = unsafe {
        libc::faccessat(
            fd,
            c"".as_ptr(),
            libc::W_OK,
            libc::AT_EMPTY_PATH | libc::AT_EACCESS,
        )
    };
    r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EROFS)
}

/// Whether `fd`'s mount is attached nowhere in this mount namespace: then no path reaches it
/// and nobody can remount it writable.
fn is_detached(fd: RawFd) -> bool {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx writes into the buffer we pass; the empty path names the descriptor.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    if r != 0 {
        return false;
    }
    // SAFETY: initialised by the successful statx.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return false;
    }
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let id = stx.stx_mnt_id.to_string();
    !mountinfo
        .lines()
        .any(|l| l.split(' ').next() == Some(id.as_str()))
}

/// Makes sure the running executable is sealed: when it is not, re-executes the process
/// (same arguments and environment) from a sealed copy and never returns; in the new image,
/// returns `Ok`. Call it first thing, while the process is single-threaded and before it
/// opened anything that must survive.
pub fn ensure_sealed() -> Result<Seal, SealError> {
    let reexecuted = std::env::var_os(REEXEC_MARK).is_some();
    if reexecuted {
        // SAFETY: called at start-up, before any thread exists.
        unsafe { std::env::remove_var(REEXEC_MARK) };
    }
    if let Some(seal) = current() {
        return Ok(seal);
    }
    if reexecuted {
        return Err(SealError::NotSealed);
    }
    let exe = match sealed_overlay() {
        Ok(fd) => fd,
        Err(_) => sealed_memfd()?,
    };
    Err(reexec(&exe))
}

/// The executable through a private overlayfs: the executable's directory as the upper of two
/// lower layers (overlayfs without an upper layer is read-only for good), mounted with the new
/// mount API and never attached, so nothing can remount it.
fn sealed_overlay() -> Result<OwnedFd, SealError> {
    let path = std::fs::read_link("/proc/self/exe").map_err(|source| SealError::Copy {
        what: "readlink /proc/self/exe",
        source,
    })?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(SealError::Copy {
            what: "executable path",
            source: io::ErrorKind::InvalidInput.into(),
        });
    };
    // Any other directory will do as the second layer: the executable's is on top. /dev is
    // on every host and on its own filesystem, so the layers never overlap.
    let lower = format!("{}:/dev", escape_lower(dir));
    let cstr = |s: &[u8]| {
        CString::new(s).map_err(|_| SealError::Copy {
            what: "path with NUL",
            source: io::ErrorKind::InvalidInput.into(),
        })
    };
    let lower = cstr(lower.as_bytes())?;
    let name = cstr(name.as_bytes())?;
    // SAFETY: fsopen takes a NUL-terminated name and flags.
    let ctx = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    if ctx < 0 {
        return Err(last("fsopen overlay"));
    }
    // SAFETY: a descriptor fsopen just returned.
    let ctx = unsafe { OwnedFd::from_raw_fd(ctx as RawFd) };
    let set = |key: &CString, value: &CString| {
        // SAFETY: fsconfig with NUL-terminated key and value on our fs context.
        unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                ctx.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        }
    };
    if set(&cstr(b"lowerdir")?, &lower) < 0 {
        return Err(last("overlayfs lowerdir"));
    }
    // Only to keep overlayfs from logging about inode numbers; not needed for the seal.
    let _ = set(&cstr(b"xino")?, &cstr(b"off")?);
    // SAFETY: fsconfig command without key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(last("create overlayfs"));
    }
    // SAFETY: fsmount on our configured context.
    let mnt = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            ctx.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID,
        )
    };
    if mnt < 0 {
        return Err(last("fsmount overlayfs"));
    }
    // SAFETY: a descriptor fsmount just returned.
    let mnt = unsafe { OwnedFd::from_raw_fd(mnt as RawFd) };
    // SAFETY: openat relative to the mount's root with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            mnt.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last("open the executable through overlayfs"));
    }
    // SAFETY: a descriptor openat just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// overlayfs splits `lowerdir` at `:` and takes `\` as its escape.
fn escape_lower(dir: &Path) -> String {
    dir.to_string_lossy()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
}

/// A copy of the executable in a memfd, sealed against every write.
fn sealed_memfd() -> Result<OwnedFd, SealError> {
    let create = |flags: libc::c_uint| {
        // SAFETY: memfd_create with a NUL-terminated name and flags.
        unsafe { libc::memfd_create(c"berth-runtime".as_ptr(), flags) }
    };
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let mut fd = create(base | MFD_EXEC);
    if fd < 0 {
        // Kernels before 6.3 know no MFD_EXEC; their memfds are executable anyway.
        fd = create(base);
    }
    if fd < 0 {
        return Err(last("memfd_create"));
    }
    // SAFETY: a descriptor memfd_create just returned.
    let mut copy = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut exe = File::open("/proc/self/exe").map_err(|source| SealError::Copy {
        what: "open /proc/self/exe",
        source,
    })?;
    std::io::copy(&mut exe, &mut copy).map_err(|source| SealError::Copy {
        what: "copy into memfd",
        source,
    })?;
    // SAFETY: fcntl on our memfd, integer argument.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, MEMFD_SEALS) } != 0 {
        return Err(last("seal memfd"));
    }
    Ok(copy.into())
}

/// execveat of `exe` with this process's arguments and environment; returns only on failure.
fn reexec(exe: &OwnedFd) -> SealError {
    let to_c = |s: OsString| CString::new(s.as_bytes()).ok();
    let args: Option<Vec<CString>> = std::env::args_os().map(to_c).collect();
    let mut env: Option<Vec<CString>> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            to_c(kv)
        })
        .collect();
    if let Some(env) = env.as_mut() {
        if let Some(mark) = to_c(format!("{REEXEC_MARK}={}", std::process::id()).into()) {
            env.push(mark);
        }
    }
    let (Some(args), Some(env)) = (args, env) else {
        return SealError::Exec(io::ErrorKind::InvalidInput.into());
    };
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of pointers to strings that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            exe.as_raw_fd(),
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    SealError::Exec(io::Error::last_os_error())
}

/// Keeps the calling process non-dumpable while it lives, and so every process it clones
/// meanwhile: such a child is born non-dumpable and stays so until it execs the container's
/// program (exec makes a process dumpable again). A process of the container then cannot
/// open the child's `/proc/PID/exe`, `fd/`, `cwd`, `root`, `mem` or `environ`, nor ptrace it,
/// without CAP_SYS_PTRACE on the host.
pub struct NonDumpable {
    previous: libc::c_int,
}

impl NonDumpable {
    pub fn set() -> NonDumpable {
        // SAFETY: prctl with integer arguments only.
        let previous = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        NonDumpable { previous }
    }
}

impl Drop for NonDumpable {
    fn drop(&mut self) {
        if self.previous > 0 {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, self.previous, 0, 0, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_layers_are_escaped() {
        assert_eq!(escape_lower(Path::new("/a:b\\c")), "/a\\:b\\\\c");
    }

    #[test]
    fn a_sealed_memfd_refuses_writes_and_counts_as_sealed() {
        let fd = sealed_memfd().unwrap();
        let exe = File::from(fd);
        assert_eq!(seal_of(&exe), Some(Seal::Memfd));
        let path = format!("/proc/self/fd/{}", exe.as_raw_fd());
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"\x7fELF"));
        assert_eq!(
            written.unwrap_err().raw_os_error(),
            Some(libc::EPERM),
            "a sealed memfd took a write"
        );
    }

    #[test]
    fn the_overlay_copy_is_read_only_and_attached_nowhere() {
        let fd = match sealed_overlay() {
            Ok(fd) => fd,
            // Kernels without overlayfs fall back to the memfd copy.
            Err(e) => return eprintln!("no overlayfs here: {e}"),
        };
        let exe = File::open(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(seal_of(&exe), Some(Seal::Overlay));
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }

    #[test]
    fn an_ordinary_file_is_not_sealed() {
        let f = File::open("/proc/self/exe").unwrap();
        // Test binaries live in the build directory, on an ordinary filesystem.
        assert_eq!(seal_of(&f), None);
    }
}
