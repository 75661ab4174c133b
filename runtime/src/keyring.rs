//! The container's own session keyring, as runc gives it: without one, the container's
//! processes would share the session keyring of whoever ran the runtime and could use (and
//! read) every key in it.
//!
//! Berth's kernel has keys (`CONFIG_KEYS=y` in configs/kernel/berth.config); a kernel without
//! them answers ENOSYS, and the container then runs without a keyring, as runc does: there is
//! no keyring to share either.

use nix::errno::Errno;
use std::ffi::CString;

/// `KEY_USR_SEARCH`: processes of the keyring's user may find (and join) it by name.
const USER_SEARCH: u32 = 0x0008_0000;
/// `KEY_OTH_SEARCH`: any process may find it, for a user namespace's mapped root.
const OTHER_SEARCH: u32 = 0x0000_0008;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("session keyring {name}: {what}: {errno}")]
    Sys {
        name: String,
        what: &'static str,
        errno: Errno,
    },
    #[error("session keyring {name}: unexpected description `{description}`")]
    Description { name: String, description: String },
}

/// The name runc gives a container's session keyring (and so what tools expect).
pub fn session_name(id: &str) -> String {
    format!("_ses.{id}")
}

/// The permissions runc gives a container's session keyring: what it has (possessor all,
/// its user view and read) plus search by its user, or by anyone in a user namespace, so that
/// processes later run in the container (`exec`) find it and join it by name. `description`
/// is KEYCTL_DESCRIBE's `type;uid;gid;perm;name`.
pub fn session_perm(description: &str, user_ns: bool) -> Option<u32> {
    let perm = description.split(';').nth(3)?;
    let perm = u32::from_str_radix(perm, 16).ok()?;
    Some(perm | if user_ns { OTHER_SEARCH } else { USER_SEARCH })
}

fn keyctl(
    op: libc::c_uint,
    a: libc::c_ulong,
    b: libc::c_ulong,
    c: libc::c_ulong,
) -> Result<i64, Errno> {
    // SAFETY: keyctl with integer arguments, or pointers the callers keep valid for the call
    // (nix has no keyctl).
    let r = unsafe { libc::syscall(libc::SYS_keyctl, op, a, b, c) };
    Errno::result(r)
}

/// Joins (creating it if needed) the session keyring `name`; `None` on a kernel without keys.
fn join(name: &str) -> Result<Option<i64>, KeyringError> {
    let err = |what, errno| KeyringError::Sys {
        name: name.to_string(),
        what,
        errno,
    };
    let c = CString::new(name).map_err(|_| err("name", Errno::EINVAL))?;
    match keyctl(
        libc::KEYCTL_JOIN_SESSION_KEYRING,
        c.as_ptr() as libc::c_ulong,
        0,
        0,
    ) {
        Ok(serial) => Ok(Some(serial)),
        Err(Errno::ENOSYS) => Ok(None),
        Err(errno) => Err(err("join", errno)),
    }
}

/// Gives the calling process (the container's init, before its program runs) the session
/// keyring `_ses.<id>` and runc's permissions on it. Returns whether the kernel has keys.
pub fn join_new(id: &str, user_ns: bool) -> Result<bool, KeyringError> {
    let name = session_name(id);
    let Some(serial) = join(&name)? else {
        return Ok(false);
    };
    let err = |what, errno| KeyringError::Sys {
        name: name.clone(),
        what,
        errno,
    };
    let serial = libc::c_ulong::try_from(serial).map_err(|_| err("serial", Errno::EINVAL))?;
    let mut buf = vec![0u8; 256];
    loop {
        let len = keyctl(
            libc::KEYCTL_DESCRIBE,
            serial,
            buf.as_mut_ptr() as libc::c_ulong,
            buf.len() as libc::c_ulong,
        )
        .map_err(|errno| err("describe", errno))?;
        let len = usize::try_from(len).map_err(|_| err("describe", Errno::EINVAL))?;
        if len <= buf.len() {
            buf.truncate(len);
            break;
        }
        buf.resize(len, 0);
    }
    let description = String::from_utf8_lossy(&buf)
        .trim_end_matches('\0')
        .to_string();
    let perm = session_perm(&description, user_ns).ok_or_else(|| KeyringError::Description {
        name: name.clone(),
        description: description.clone(),
    })?;
    // A keyring with other permissions than these is not used: the container fails instead.
    keyctl(libc::KEYCTL_SETPERM, serial, libc::c_ulong::from(perm), 0)
        .map_err(|errno| err("set permissions", errno))?;
    Ok(true)
}

/// Joins the session keyring of container `id` (a process `exec` starts in it), as runc's
/// exec does. Returns whether the kernel has keys.
pub fn join_existing(id: &str) -> Result<bool, KeyringError> {
    Ok(join(&session_name(id))?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keyrings_are_named_and_made_searchable_as_runc_does() {
        assert_eq!(session_name("web"), "_ses.web");
        let desc = "keyring;0;0;3f1b0000;_ses.web";
        assert_eq!(session_perm(desc, false), Some(0x3f1b_0000 | 0x0008_0000));
        assert_eq!(session_perm(desc, true), Some(0x3f1b_0008));
        assert_eq!(session_perm("keyring;0;0", false), None);
        assert_eq!(session_perm("keyring;0;0;zz;_ses.web", false), None);
    }
}
