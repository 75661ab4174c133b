//! Container state kept under the runtime root (`--root`), one directory per container.

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
/// The FIFO a created container's init blocks on until `start` opens it.
pub const EXEC_FIFO: &str = "exec.fifo";
pub const OCI_VERSION: &str = "1.2.0";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "container id `{0}` is invalid: use 1-1024 characters of [A-Za-z0-9_+.-], not `.` or `..`"
    )]
    InvalidId(String),
    #[error("container `{0}` already exists")]
    Exists(String),
    #[error("container `{0}` does not exist")]
    NotFound(String),
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt state: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The OCI lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    /// Running, but frozen by the cgroup freezer (`pause`).
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
    pub fn can_start(self) -> bool {
        self == Status::Created
    }
    pub fn can_kill(self) -> bool {
        matches!(self, Status::Created | Status::Running | Status::Paused)
    }
    pub fn can_pause(self) -> bool {
        matches!(self, Status::Created | Status::Running)
    }
    pub fn can_resume(self) -> bool {
        self == Status::Paused
    }
    /// Without `--force` only a stopped (or never started) container may be deleted.
    pub fn can_delete(self) -> bool {
        matches!(self, Status::Stopped | Status::Created | Status::Creating)
    }
    pub fn can_exec(self) -> bool {
        matches!(self, Status::Created | Status::Running)
    }
    pub fn can_update(self) -> bool {
        matches!(self, Status::Created | Status::Running | Status::Paused)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `state` prints plus what later verbs need.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    /// Start time of the init process (field 22 of /proc/PID/stat): guards against pid reuse.
    #[serde(default)]
    pub pid_start_time: u64,
    /// The container's cgroup relative to the v2 root, when one was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Created with `--no-new-keyring`: processes `exec` starts keep their caller's session
    /// keyring too, instead of joining the container's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_keyring: bool,
    /// The configuration the container was created from (hooks, process defaults for exec).
    pub config: Spec,
}

/// The OCI state document (what `state` prints and hooks read on stdin).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState<'a> {
    pub oci_version: &'a str,
    pub id: &'a str,
    pub status: Status,
    pub pid: i32,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub created: &'a str,
    pub owner: &'a str,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
}

impl State {
    pub fn oci(&self) -> OciState<'_> {
        OciState {
            oci_version: &self.oci_version,
            id: &self.id,
            status: self.status,
            pid: if self.status == Status::Stopped {
                0
            } else {
                self.pid
            },
            bundle: &self.bundle,
            rootfs: &self.rootfs,
            created: &self.created,
            owner: &self.owner,
            annotations: &self.annotations,
        }
    }

    /// The live status: the recorded one unless the init process is gone (or replaced).
    pub fn refresh(&mut self, dir: &Path) {
        if self.status == Status::Stopped {
            return;
        }
        let alive = self.pid > 0
            && process_start_time(self.pid)
                .is_some_and(|(t, zombie)| t == self.pid_start_time && !zombie);
        self.status = if !alive {
            Status::Stopped
        } else if self.frozen() {
            Status::Paused
        } else if dir.join(EXEC_FIFO).exists() {
            Status::Created
        } else {
            Status::Running
        };
    }

    /// Whether the container's cgroup is frozen (`pause`).
    fn frozen(&self) -> bool {
        let Some(rel) = self.cgroup.as_deref() else {
            return false;
        };
        crate::cgroups::CgroupRoot::host()
            .and_then(|root| root.open(rel))
            .and_then(|cg| cg.is_frozen())
            .unwrap_or(false)
    }
}

/// `(start time, is zombie)` of a process from /proc/PID/stat.
pub fn process_start_time(pid: i32) -> Option<(u64, bool)> {
    crate::procfs::ProcStat::read(pid).map(|s| (s.start_time, s.is_zombie()))
}

/// The directory of all containers' state.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

impl StateStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Claims the id: creates its directory, failing if it exists (the duplicate-id check is
    /// this mkdir, so two concurrent creates cannot both win).
    pub fn claim(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        let io = |op| {
            let root = self.root.clone();
            move |source| StateError::Io {
                path: root,
                op,
                source,
            }
        };
        // Root only: state.json holds each container's whole config (its environment too),
        // and a container's directory leads to its exec FIFO.
        private_dir(&self.root).map_err(io("mkdir"))?;
        let dir = self.dir(id);
        // Search but no listing for others: the init of a container with a user namespace
        // runs as an unprivileged host uid and opens its exec FIFO in here.
        let made = {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(0o711).create(&dir)
        };
        match made {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.to_string()))
            }
            Err(e) => Err(io("mkdir")(e)),
        }
    }

    /// Loads a container's state with its live status.
    pub fn load(&self, id: &str) -> Result<State, StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        let path = dir.join(STATE_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()))
            }
            Err(source) => {
                return Err(StateError::Io {
                    path,
                    op: "read",
                    source,
                })
            }
        };
        let mut state: State =
            crate::spec::from_json(&text).map_err(|source| StateError::Corrupt { path, source })?;
        state.refresh(&dir);
        Ok(state)
    }

    /// Writes the state atomically (temp file + rename).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let dir = self.dir(&state.id);
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(".state.json.tmp");
        let text = serde_json::to_vec(state).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let io = |op| {
            let path = path.clone();
            move |source| StateError::Io { path, op, source }
        };
        let mut f = fs::File::create(&tmp).map_err(io("create"))?;
        f.write_all(&text).map_err(io("write"))?;
        fs::rename(&tmp, &path).map_err(io("rename"))
    }

    /// Ids of every container with a state directory, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.root.clone(),
                    op: "list",
                    source,
                })
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes a container's directory.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                path: dir,
                op: "remove",
                source,
            }),
        }
    }
}

/// Now as RFC 3339 UTC with nanoseconds, as runc prints `created`.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

/// Creates `dir` (and missing parents) reachable by root only, and takes group and other
/// access away from an existing one. The image store keeps its own copy of this rule
/// (berth-store does not depend on the runtime, nor the runtime on it).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // Created 0700 (the umask can only take more away), never wider for a moment.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o7700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "web-1", "x.y_z+1"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_rules() {
        assert!(Status::Created.can_start() && !Status::Running.can_start());
        assert!(!Status::Stopped.can_kill() && Status::Running.can_kill());
        assert!(!Status::Running.can_delete() && Status::Stopped.can_delete());
    }

    #[test]
    fn own_process_start_time_is_readable() {
        let (t, zombie) = process_start_time(std::process::id() as i32).unwrap();
        assert!(t > 0 && !zombie);
    }

    #[test]
    fn rfc3339_shape() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 30, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'));
    }
}
