//! What a removed container unit leaves: its directory (its root's mount point, its upper and
//! work directories, i.e. everything the container wrote) is not kept for a later unit of the
//! same name. It is renamed out of the way at once, within the directory that holds it (no new
//! directory is needed, so this works on a disk the container filled), and deleted by a task
//! at idle priority. A deletion cut short (a power loss, a shutdown) is finished by the
//! next one, or by the launcher's first sweep once the boot has settled.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::mount::MntFlags;

/// Start of the name of a directory set aside for deletion; no unit name starts with a dot.
const SET_ASIDE: &str = ".removed.";

/// Renames `top/name`, if it exists, to a set-aside name in `top`, which it returns.
pub fn set_aside(top: &Path, name: &str) -> io::Result<Option<PathBuf>> {
    let dir = top.join(name);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    // Unique within this process and across boots (a set-aside directory can outlive one).
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let aside = top.join(format!("{SET_ASIDE}{name}.{nanos:x}.{n}"));
    std::fs::rename(&dir, &aside)?;
    Ok(Some(aside))
}

/// The directories set aside in `tops` and not yet deleted.
pub fn pending(tops: &[PathBuf]) -> Vec<PathBuf> {
    tops.iter()
        .filter_map(|top| std::fs::read_dir(top).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .starts_with(SET_ASIDE.as_bytes())
        })
        .map(|e| e.path())
        .collect()
}

/// Deletes each of `dirs`, after detaching whatever is still mounted on its `rootfs` (a
/// cleanup killed at its deadline may have left the container's root mounted). Deletion does
/// not follow symbolic links, which the container may have planted. Returns what failed.
pub fn delete(dirs: &[PathBuf]) -> Vec<String> {
    let mut failed = Vec::new();
    for dir in dirs {
        let _ = nix::mount::umount2(
            &dir.join("rootfs"),
            MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
        );
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            // Another deletion got there first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => failed.push(format!("cannot delete {}: {e}", dir.display())),
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        crate::testutil::scratch_dir(&format!("removal-{tag}"))
    }

    #[test]
    fn a_set_aside_directory_frees_the_name_and_is_deleted_with_its_content() {
        let top = scratch("aside");
        let dir = top.join("web");
        std::fs::create_dir_all(dir.join("upper/var/cache")).unwrap();
        std::fs::write(dir.join("upper/var/cache/big"), vec![0u8; 4096]).unwrap();
        std::fs::create_dir_all(top.join("db/upper")).unwrap();

        assert!(set_aside(&top, "web").unwrap().is_some());
        // The name is free at once for a new unit; the other unit's directory is untouched.
        assert!(!dir.exists());
        assert!(top.join("db/upper").is_dir());
        // A unit with nothing on disk has nothing to set aside.
        assert!(set_aside(&top, "web").unwrap().is_none());
        std::fs::create_dir_all(dir.join("upper")).unwrap();
        assert!(set_aside(&top, "web").unwrap().is_some());

        let pending = pending(std::slice::from_ref(&top));
        assert_eq!(pending.len(), 2, "{pending:?}");
        assert!(delete(&pending).is_empty());
        let mut left: Vec<String> = std::fs::read_dir(&top)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["db"]);
        // Deleting again (a second task that raced the first) is not an error.
        assert!(delete(&pending).is_empty());
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn deletion_does_not_follow_symlinks_out_of_the_directory() {
        let top = scratch("symlink");
        let outside = top.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "host file").unwrap();
        let dir = top.join("web");
        std::fs::create_dir_all(dir.join("upper")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("upper/escape")).unwrap();

        assert!(set_aside(&top, "web").unwrap().is_some());
        assert!(delete(&pending(std::slice::from_ref(&top))).is_empty());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).unwrap(),
            "host file"
        );
        assert!(pending(std::slice::from_ref(&top)).is_empty());
        std::fs::remove_dir_all(&top).unwrap();
    }

    /// In a private mount namespace (needs root; unshare affects only the calling thread).
    #[test]
    fn a_root_left_mounted_is_detached_before_the_deletion() {
        if !crate::testutil::running_as_root() {
            return;
        }
        let top = scratch("mounted");
        let rootfs = top.join("web/rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let top_in_thread = top.clone();
        let (failed, mounted_after) = std::thread::spawn(move || {
            use nix::mount::{mount, MsFlags};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            mount(
                Some("tmpfs"),
                &rootfs,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            std::fs::write(rootfs.join("in-the-mount"), "x").unwrap();
            assert!(set_aside(&top_in_thread, "web").unwrap().is_some());
            let failed = delete(&pending(std::slice::from_ref(&top_in_thread)));
            let mounts = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
            let top_text = top_in_thread.display().to_string();
            (failed, mounts.contains(&top_text))
        })
        .join()
        .unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        assert!(!mounted_after, "a mount is left under {}", top.display());
        assert!(pending(std::slice::from_ref(&top)).is_empty());
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn missing_tops_have_nothing_pending() {
        assert!(pending(&[PathBuf::from("/nonexistent/berth/containers")]).is_empty());
    }
}
