//! Loading and checking an OCI bundle's `config.json`.

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Errors in a bundle or its configuration; each names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {0}: no such directory")]
    MissingBundle(PathBuf),
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed at `{field}` (line {line}, column {column}): {message}")]
    Malformed {
        path: PathBuf,
        field: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: invalid `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists")]
    Exists { path: PathBuf },
}

/// A loaded, checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    pub spec: Spec,
    /// Absolute root filesystem path.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Reads `DIR/config.json`, parses it with the JSON path of any bad field, and checks what
    /// the runtime relies on.
    pub fn load(dir: &Path) -> Result<Bundle, SpecError> {
        let dir =
            std::path::absolute(dir).map_err(|_| SpecError::MissingBundle(dir.to_path_buf()))?;
        if !dir.is_dir() {
            return Err(SpecError::MissingBundle(dir));
        }
        let path = dir.join("config.json");
        let text = fs::read(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        let spec = parse(&path, &text)?;
        Bundle::from_spec(&dir, spec)
    }
}

impl Bundle {
    /// A bundle from a spec built in memory (the supervisor's case): `dir` is the container's
    /// directory, against which a relative `root.path` resolves. Checked like a loaded one.
    pub fn from_spec(dir: &Path, spec: Spec) -> Result<Bundle, SpecError> {
        let path = dir.join("config.json");
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| invalid(&path, "root", "missing"))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(invalid(
                &path,
                "root.path",
                &format!("{} is not a directory", rootfs.display()),
            ));
        }
        validate(&path, &spec)?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            spec,
            rootfs,
        })
    }
}

/// Deserializes JSON that holds OCI runtime-spec types (config.json, state.json, `exec
/// --process`, `update --resources`). On an error, [`crate::json_path::at`] names the field.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(text)
}

/// Parses config.json text, naming the JSON path of the first bad field.
pub fn parse(path: &Path, text: &[u8]) -> Result<Spec, SpecError> {
    from_json(text).map_err(|inner| {
        let field = crate::json_path::at(text, inner.line(), inner.column());
        SpecError::Malformed {
            path: path.to_path_buf(),
            field: if field == "." {
                "(document)".into()
            } else {
                field
            },
            line: inner.line(),
            column: inner.column(),
            message: inner.to_string(),
        }
    })
}

fn invalid(path: &Path, field: &str, reason: &str) -> SpecError {
    SpecError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

/// Checks the parts of a spec that parse but cannot run.
pub fn validate(path: &Path, spec: &Spec) -> Result<(), SpecError> {
    if spec.version().is_empty() {
        return Err(invalid(path, "ociVersion", "missing"));
    }
    if !spec.version().starts_with("1.") {
        return Err(invalid(
            path,
            "ociVersion",
            &format!("`{}` is not a 1.x version", spec.version()),
        ));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid(path, "process", "missing"))?;
    match process.args() {
        Some(a) if !a.is_empty() && !a[0].is_empty() => {}
        _ => return Err(invalid(path, "process.args", "must name a program")),
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(path, "process.cwd", "must be an absolute path"));
    }
    for (i, e) in process.env().iter().flatten().enumerate() {
        if !e.contains('=') {
            return Err(invalid(
                path,
                &format!("process.env[{i}]"),
                &format!("`{e}` is not KEY=value"),
            ));
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                path,
                &format!("mounts[{i}].destination"),
                "must be an absolute path",
            ));
        }
    }
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let mut seen = HashSet::new();
    let mut user_ns = false;
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(invalid(
                path,
                &format!("linux.namespaces[{i}]"),
                &format!("duplicate namespace type `{}`", ns.typ()),
            ));
        }
        if ns.typ() == LinuxNamespaceType::User && ns.path().is_none() {
            user_ns = true;
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(invalid(
                    path,
                    &format!("linux.namespaces[{i}].path"),
                    "must be an absolute path",
                ));
            }
        }
    }
    let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        && linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if user_ns && !has_maps {
        return Err(invalid(
            path,
            "linux.uidMappings",
            "a new user namespace needs uidMappings and gidMappings",
        ));
    }
    if let Some(sysctl) = linux.sysctl() {
        check_sysctls(
            path,
            sysctl.keys(),
            linux.namespaces().as_deref().unwrap_or_default(),
        )?;
    }
    if !seen.contains(&LinuxNamespaceType::Mount) {
        // Allowed (the process is chrooted into the root), but nothing that needs mounts.
        let root_readonly = spec.root().as_ref().and_then(|r| r.readonly()) == Some(true);
        let needs_mounts = [
            (
                "mounts",
                spec.mounts().as_ref().is_some_and(|m| !m.is_empty()),
            ),
            (
                "linux.maskedPaths",
                linux.masked_paths().as_ref().is_some_and(|m| !m.is_empty()),
            ),
            (
                "linux.readonlyPaths",
                linux
                    .readonly_paths()
                    .as_ref()
                    .is_some_and(|m| !m.is_empty()),
            ),
            (
                "linux.rootfsPropagation",
                linux.rootfs_propagation().is_some(),
            ),
            ("root.readonly", root_readonly),
        ];
        if let Some((field, _)) = needs_mounts.iter().find(|(_, set)| *set) {
            return Err(invalid(
                path,
                field,
                "needs a mount namespace (linux.namespaces has none)",
            ));
        }
    }
    Ok(())
}

/// The components of a `linux.sysctl` key: dotted (`net.ipv4.ip_forward`) or, when it has a
/// `/`, slashed (`net/ipv4/conf/eth0.100/forwarding`, where a dot belongs to a name). `None`
/// for an empty component or a `.` or `..` one: joined under /proc/sys, those would lead to
/// another file than the one the key names (`net/../kernel/printk`).
pub fn sysctl_components(key: &str) -> Option<Vec<&str>> {
    let sep = if key.contains('/') { '/' } else { '.' };
    let parts: Vec<&str> = key.split(sep).collect();
    let bad = |c: &&str| c.is_empty() || *c == "." || *c == ".." || c.contains('\0');
    (!parts.iter().any(bad)).then_some(parts)
}

/// The file under /proc/sys a checked `linux.sysctl` key is written to.
pub fn sysctl_file(key: &str) -> Option<PathBuf> {
    let parts = sysctl_components(key)?;
    Some(
        parts
            .iter()
            .fold(PathBuf::from("/proc/sys"), |p, c| p.join(c)),
    )
}

/// The namespace whose copy of a sysctl the container writes, or `None` for a sysctl the
/// kernel keeps once for the whole host (runc's list, libcontainer/configs/validate).
pub fn sysctl_namespace(parts: &[&str]) -> Option<LinuxNamespaceType> {
    match parts {
        ["kernel", "msgmax" | "msgmnb" | "msgmni" | "sem" | "shmall" | "shmmax" | "shmmni"
        | "shm_rmid_forced"] => Some(LinuxNamespaceType::Ipc),
        ["fs", "mqueue", _, ..] => Some(LinuxNamespaceType::Ipc),
        ["net", _, ..] => Some(LinuxNamespaceType::Network),
        ["kernel", "hostname" | "domainname"] => Some(LinuxNamespaceType::Uts),
        _ => None,
    }
}

/// Refuses every sysctl that would change the host: one the kernel does not namespace, or one
/// whose namespace the container shares with the runtime (none in `linux.namespaces`, or a
/// path to the runtime's own).
fn check_sysctls<'a>(
    path: &Path,
    keys: impl Iterator<Item = &'a String>,
    namespaces: &[oci_spec::runtime::LinuxNamespace],
) -> Result<(), SpecError> {
    let refuse =
        |key: &str, why: String| invalid(path, "linux.sysctl", &format!("sysctl `{key}` {why}"));
    let mut keys: Vec<&String> = keys.collect();
    keys.sort();
    for key in keys {
        let parts = sysctl_components(key).ok_or_else(|| {
            refuse(
                key,
                "is not a sysctl name (an empty, `.` or `..` component)".into(),
            )
        })?;
        let typ = sysctl_namespace(&parts).ok_or_else(|| {
            refuse(
                key,
                "is not in a separate kernel namespace: writing it would change the host".into(),
            )
        })?;
        match namespaces.iter().find(|n| n.typ() == typ) {
            None => {
                return Err(refuse(
                    key,
                    format!(
                        "needs the container's own {typ} namespace (linux.namespaces has none): \
                         writing it would change the host's"
                    ),
                ))
            }
            Some(ns) => {
                if let Some(p) = ns.path() {
                    let own = PathBuf::from(format!("/proc/self/ns/{typ}"));
                    let host = same_file(p, &own).map_err(|e| {
                        refuse(
                            key,
                            format!("cannot check the {typ} namespace {}: {e}", p.display()),
                        )
                    })?;
                    if host {
                        return Err(refuse(
                            key,
                            format!(
                                "needs the container's own {typ} namespace, but {} is the \
                                 runtime's: writing it would change the host's",
                                p.display()
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether two paths name the same file (the same namespace, for `/proc/*/ns/*`).
fn same_file(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (x, y) = (fs::metadata(a)?, fs::metadata(b)?);
    Ok(x.dev() == y.dev() && x.ino() == y.ino())
}

/// The default configuration `spec` writes: runc's, with Berth's hostname. Like runc's, it
/// denies every device; the runtime adds the defaults every container needs after it.
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string());
    spec.set_hostname(Some("berth".to_string()));
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    if let Some(r) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.resources_mut().as_mut())
    {
        let mut deny_all = oci_spec::runtime::LinuxDeviceCgroup::default();
        deny_all.set_allow(false);
        deny_all.set_access(Some("rwm".to_string()));
        r.set_devices(Some(vec![deny_all]));
    }
    spec
}

/// Writes `DIR/config.json` unless it exists.
pub fn write_default(dir: &Path, spec: &Spec) -> Result<PathBuf, SpecError> {
    let path = dir.join("config.json");
    if path.exists() {
        return Err(SpecError::Exists { path });
    }
    let text = serde_json::to_vec_pretty(spec).map_err(|e| SpecError::Write {
        path: path.clone(),
        source: e.into(),
    })?;
    fs::write(&path, text).map_err(|source| SpecError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(linux: &str) -> Spec {
        serde_json::from_str(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
                "process":{{"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}}}},"linux":{linux}}}"#
        ))
        .unwrap()
    }

    fn check(namespaces: &str, key: &str) -> Result<(), String> {
        let s = spec(&format!(
            r#"{{"namespaces":{namespaces},"sysctl":{{"{key}":"1"}}}}"#
        ));
        validate(Path::new("/b/config.json"), &s).map_err(|e| e.to_string())
    }

    const OWN: &str = r#"[{"type":"mount"},{"type":"ipc"},{"type":"network"},{"type":"uts"}]"#;

    #[test]
    fn namespaced_sysctls_are_allowed_with_their_namespace() {
        for key in [
            "kernel.msgmax",
            "kernel.msgmnb",
            "kernel.msgmni",
            "kernel.sem",
            "kernel.shmall",
            "kernel.shmmax",
            "kernel.shmmni",
            "kernel.shm_rmid_forced",
            "fs.mqueue.msg_max",
            "net.ipv4.ip_forward",
            "net/ipv4/conf/eth0.100/forwarding",
            "kernel.hostname",
            "kernel.domainname",
        ] {
            assert_eq!(check(OWN, key), Ok(()), "{key}");
        }
    }

    #[test]
    fn host_global_sysctls_are_refused_by_name() {
        for key in [
            "kernel.printk_ratelimit",
            "kernel.core_pattern",
            "vm.overcommit_memory",
            "fs.file-max",
            "fs.mqueue",
            "kernel.msgmax.x",
            "net",
            "kernel",
        ] {
            let e = check(OWN, key).unwrap_err();
            assert!(
                e.contains(&format!(
                    "sysctl `{key}` is not in a separate kernel namespace"
                )),
                "{key}: {e}"
            );
            assert!(
                e.starts_with("/b/config.json: invalid `linux.sysctl`"),
                "{e}"
            );
        }
    }

    #[test]
    fn keys_that_climb_out_or_have_empty_components_are_refused() {
        for key in [
            "net.ipv4/../../kernel/printk",
            "net/../kernel/core_pattern",
            "net/./ipv4/ip_forward",
            "net..ipv4.ip_forward",
            ".net.ipv4.ip_forward",
            "net.ipv4.ip_forward.",
            "net/ipv4//ip_forward",
            "",
        ] {
            let e = check(OWN, key).unwrap_err();
            assert!(e.contains("is not a sysctl name"), "{key}: {e}");
        }
        assert_eq!(sysctl_file("net.ipv4/../x"), None);
        assert_eq!(
            sysctl_file("net.ipv4.ip_forward"),
            Some(PathBuf::from("/proc/sys/net/ipv4/ip_forward"))
        );
        assert_eq!(
            sysctl_file("net/ipv4/conf/eth0.100/forwarding"),
            Some(PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding"))
        );
    }

    #[test]
    fn a_sysctl_without_its_own_namespace_is_refused() {
        let none = r#"[{"type":"mount"}]"#;
        for (key, typ) in [
            ("kernel.shmmax", "ipc"),
            ("fs.mqueue.queues_max", "ipc"),
            ("net.ipv4.ip_forward", "net"),
            ("kernel.domainname", "uts"),
        ] {
            let e = check(none, key).unwrap_err();
            assert!(
                e.contains(&format!(
                    "sysctl `{key}` needs the container's own {typ} namespace"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn a_joined_namespace_must_not_be_the_runtimes_own() {
        let host = r#"[{"type":"mount"},{"type":"network","path":"/proc/self/ns/net"}]"#;
        let e = check(host, "net.ipv4.ip_forward").unwrap_err();
        assert!(e.contains("/proc/self/ns/net is the runtime's"), "{e}");
        let missing = r#"[{"type":"mount"},{"type":"ipc","path":"/nonexistent/ipc"}]"#;
        let e = check(missing, "kernel.sem").unwrap_err();
        assert!(
            e.contains("cannot check the ipc namespace /nonexistent/ipc"),
            "{e}"
        );
    }
}
