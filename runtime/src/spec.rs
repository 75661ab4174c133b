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
