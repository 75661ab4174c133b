//! Which namespaces a container gets: new ones (clone flags) and existing ones joined by path.

use crate::syscall::Syscall;
use nix::sched::CloneFlags;
use oci_spec::runtime::{Linux, LinuxNamespaceType};
use std::os::fd::AsFd;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("linux.namespaces: {0} namespaces are not supported")]
    Unsupported(LinuxNamespaceType),
    #[error("linux.namespaces: joining a user namespace by path is not supported; create a new one with uidMappings/gidMappings")]
    UserJoin,
    #[error("linux.namespaces: joining a {0} namespace by path together with a new user namespace is not supported")]
    JoinWithNewUser(LinuxNamespaceType),
    #[error("cannot open namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setns {path}: {source}")]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

/// The namespaces of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    /// Namespaces created by clone(2).
    pub new: CloneFlags,
    /// Namespaces joined in the init process, in this order.
    pub join: Vec<(CloneFlags, PathBuf)>,
    /// A pid namespace to join: the runtime enters it before clone so that the init is born in it.
    pub join_pid: Option<PathBuf>,
}

pub fn flag(t: LinuxNamespaceType) -> Result<CloneFlags, NamespaceError> {
    Ok(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        other => return Err(NamespaceError::Unsupported(other)),
    })
}

impl NamespacePlan {
    pub fn from_linux(linux: Option<&Linux>) -> Result<NamespacePlan, NamespaceError> {
        let mut plan = NamespacePlan {
            new: CloneFlags::empty(),
            join: Vec::new(),
            join_pid: None,
        };
        let list = linux.and_then(|l| l.namespaces().as_ref());
        for ns in list.into_iter().flatten() {
            let f = flag(ns.typ())?;
            match ns.path() {
                None => plan.new |= f,
                Some(_) if f == CloneFlags::CLONE_NEWUSER => return Err(NamespaceError::UserJoin),
                Some(p) if f == CloneFlags::CLONE_NEWPID => plan.join_pid = Some(p.clone()),
                Some(p) => plan.join.push((f, p.clone())),
            }
        }
        // A namespace created with the new user namespace is owned by it; one joined by path
        // after that needs privileges the container's root does not have on the host.
        if plan.new.contains(CloneFlags::CLONE_NEWUSER) {
            if let Some(ns) = list.into_iter().flatten().find(|n| n.path().is_some()) {
                return Err(NamespaceError::JoinWithNewUser(ns.typ()));
            }
        }
        // The mount namespace last: joining it changes the root the other paths resolve in.
        plan.join
            .sort_by_key(|(f, _)| *f == CloneFlags::CLONE_NEWNS);
        Ok(plan)
    }

    pub fn has(&self, f: CloneFlags) -> bool {
        self.new.contains(f)
            || self.join.iter().any(|(j, _)| *j == f)
            || (f == CloneFlags::CLONE_NEWPID && self.join_pid.is_some())
    }

    pub fn user(&self) -> bool {
        self.new.contains(CloneFlags::CLONE_NEWUSER)
    }
}

/// Joins the namespace at `path`.
pub fn enter(
    sys: &dyn Syscall,
    path: &std::path::Path,
    f: CloneFlags,
) -> Result<(), NamespaceError> {
    let file = sys
        .open_namespace(path)
        .map_err(|errno| NamespaceError::Open {
            path: path.to_path_buf(),
            source: errno.into(),
        })?;
    sys.setns(file.as_fd(), f)
        .map_err(|source| NamespaceError::Setns {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(json: &str) -> Linux {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn new_and_joined() {
        let l = linux(
            r#"{"namespaces":[{"type":"mount"},{"type":"pid"},{"type":"network","path":"/run/netns/x"},{"type":"uts"}]}"#,
        );
        let p = NamespacePlan::from_linux(Some(&l)).unwrap();
        assert_eq!(
            p.new,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS
        );
        assert_eq!(
            p.join,
            vec![(CloneFlags::CLONE_NEWNET, PathBuf::from("/run/netns/x"))]
        );
        assert!(p.has(CloneFlags::CLONE_NEWNET) && !p.has(CloneFlags::CLONE_NEWIPC));
        let l =
            linux(r#"{"namespaces":[{"type":"mount"},{"type":"pid","path":"/proc/1/ns/pid"}]}"#);
        let p = NamespacePlan::from_linux(Some(&l)).unwrap();
        assert_eq!(p.join_pid, Some(PathBuf::from("/proc/1/ns/pid")));
        assert!(p.has(CloneFlags::CLONE_NEWPID));
    }

    #[test]
    fn unsupported_combinations_are_named() {
        let l =
            linux(r#"{"namespaces":[{"type":"user"},{"type":"network","path":"/run/netns/x"}]}"#);
        let e = NamespacePlan::from_linux(Some(&l)).unwrap_err().to_string();
        assert!(e.contains("net") && e.contains("user"), "{e}");
        let l = linux(r#"{"namespaces":[{"type":"user","path":"/proc/1/ns/user"}]}"#);
        assert!(matches!(
            NamespacePlan::from_linux(Some(&l)),
            Err(NamespaceError::UserJoin)
        ));
        let l = linux(r#"{"namespaces":[{"type":"time"}]}"#);
        assert!(NamespacePlan::from_linux(Some(&l))
            .unwrap_err()
            .to_string()
            .contains("time"));
    }
}
