//! cgroup v2: create and open cgroups under a root, enable controllers, move processes,
//! apply limits, read stats, kill everything inside and remove.
//!
//! One implementation serves the container runtime and berth-init's system units. Limits are
//! never silently dropped: applying a resource whose controller is not available in the cgroup
//! is a [`CgroupError::Unavailable`] naming the controller and the cgroup.

pub mod devices;
mod fs;
mod resources;
mod stats;

pub use devices::{DeviceRule, DeviceRules};
pub use fs::{CgroupFs, HostFs};
pub use resources::{CpuMax, IoMax, Limit, Resources};
pub use stats::Stats;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// Where the v2 hierarchy is mounted on a unified host (Berth) and on a hybrid host.
const HOST_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
/// Rounds of freeze/kill/thaw in the fallback kill before giving up.
const KILL_ROUNDS: usize = 10;
/// rmdir of a just-emptied cgroup can see EBUSY while the kernel finishes the exits.
const REMOVE_ATTEMPTS: usize = 100;
/// Polls of `cgroup.events` (1 ms apart) for a freeze to complete before it is an error.
const FREEZE_POLLS: usize = 5000;

/// Errors of the cgroups module.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (looked at {}): resource limits and device rules \
         cannot be applied",
        HOST_MOUNTS.join(", ")
    )]
    NotMounted,
    #[error(
        "cgroup v2 controller `{controller}` is unavailable in {path} (available: {available}); \
         the limit cannot be applied"
    )]
    Unavailable {
        controller: Controller,
        path: PathBuf,
        available: String,
    },
    #[error("invalid cgroup path `{0}`: it must stay below the cgroup root (no `..`, no systemd `slice:prefix:name` form)")]
    InvalidPath(String),
    #[error("invalid cgroup value for {field}: {reason}")]
    InvalidValue { field: String, reason: String },
    #[error("cgroup {path}: not found")]
    NotFound { path: PathBuf },
    #[error("cgroup {path}: the freezer did not report `frozen {frozen}` in time")]
    FreezeTimeout { path: PathBuf, frozen: u8 },
    #[error("cgroup {path}: processes {pids:?} survived the kill")]
    Survivors { path: PathBuf, pids: Vec<i32> },
    #[error("device rules cannot be enforced in {path}: {source}")]
    Devices {
        path: PathBuf,
        #[source]
        source: crate::bpf::BpfError,
    },
    #[error("cgroup {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, CgroupError>;

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { path, op, source }
}

/// A cgroup v2 controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    Cpu,
    Cpuset,
    Io,
    Memory,
    Pids,
    Hugetlb,
    Rdma,
    Misc,
}

impl Controller {
    pub const ALL: [Controller; 8] = [
        Controller::Cpu,
        Controller::Cpuset,
        Controller::Io,
        Controller::Memory,
        Controller::Pids,
        Controller::Hugetlb,
        Controller::Rdma,
        Controller::Misc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuset => "cpuset",
            Controller::Io => "io",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Hugetlb => "hugetlb",
            Controller::Rdma => "rdma",
            Controller::Misc => "misc",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Controller {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        Controller::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or(())
    }
}

/// A set of controllers, as listed in `cgroup.controllers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controllers(BTreeSet<Controller>);

impl Controllers {
    /// Parses the space-separated list of a `cgroup.controllers` file; unknown names are skipped.
    pub fn parse(text: &str) -> Self {
        Controllers(
            text.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect(),
        )
    }

    pub fn contains(&self, c: Controller) -> bool {
        self.0.contains(&c)
    }

    pub fn iter(&self) -> impl Iterator<Item = Controller> + '_ {
        self.0.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Controllers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.0.iter().map(|c| c.name()).collect();
        f.write_str(&names.join(" "))
    }
}

/// The root of a cgroup v2 hierarchy (the mount point, or a delegated subtree).
#[derive(Debug, Clone)]
pub struct CgroupRoot<F: CgroupFs + Clone = HostFs> {
    fs: F,
    path: PathBuf,
}

impl CgroupRoot<HostFs> {
    /// Finds the host's cgroup v2 mount: `/sys/fs/cgroup` on a unified host, else
    /// `/sys/fs/cgroup/unified` on a hybrid one.
    pub fn host() -> Result<Self> {
        HOST_MOUNTS
            .iter()
            .map(Path::new)
            .find(|p| is_cgroup2(p))
            .map(|p| CgroupRoot {
                fs: HostFs,
                path: p.to_path_buf(),
            })
            .ok_or(CgroupError::NotMounted)
    }
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

impl<F: CgroupFs + Clone> CgroupRoot<F> {
    /// A root at `path` accessed through `fs` (tests pass a temp dir).
    pub fn with_fs(fs: F, path: impl Into<PathBuf>) -> Self {
        CgroupRoot {
            fs,
            path: path.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The controllers the root offers to its children.
    pub fn controllers(&self) -> Result<Controllers> {
        self.as_cgroup().controllers()
    }

    /// The root itself as a cgroup (berth-init enables controllers on it at boot).
    pub fn as_cgroup(&self) -> Cgroup<F> {
        Cgroup {
            fs: self.fs.clone(),
            path: self.path.clone(),
        }
    }

    /// Opens an existing cgroup by its path relative to the root (`/berth/web` or `berth/web`).
    pub fn open(&self, rel: &str) -> Result<Cgroup<F>> {
        let path = self.resolve(rel)?;
        if !self.fs.exists(&path) {
            return Err(CgroupError::NotFound { path });
        }
        Ok(Cgroup {
            fs: self.fs.clone(),
            path,
        })
    }

    /// Creates a cgroup (and its missing parents). Every ancestor below the root gets the
    /// controllers it can offer enabled for its children, so limits can reach the new cgroup;
    /// a controller that cannot be enabled shows up later as `Unavailable` when a limit needs it.
    pub fn create(&self, rel: &str) -> Result<Cgroup<F>> {
        let target = self.resolve(rel)?;
        let mut current = self.path.clone();
        let relative = target.strip_prefix(&self.path).unwrap_or(Path::new(""));
        for component in relative.components() {
            let parent = Cgroup {
                fs: self.fs.clone(),
                path: current.clone(),
            };
            parent.enable_available_controllers();
            current.push(component);
            if !self.fs.exists(&current) {
                match self.fs.create_dir(&current) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&current, "mkdir")(e)),
                }
            }
        }
        Ok(Cgroup {
            fs: self.fs.clone(),
            path: target,
        })
    }

    fn resolve(&self, rel: &str) -> Result<PathBuf> {
        if rel.contains(':') {
            return Err(CgroupError::InvalidPath(rel.to_string()));
        }
        let mut path = self.path.clone();
        for component in Path::new(rel).components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => path.push(name),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(CgroupError::InvalidPath(rel.to_string()))
                }
            }
        }
        if path == self.path {
            return Err(CgroupError::InvalidPath(rel.to_string()));
        }
        Ok(path)
    }
}

/// One cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup<F: CgroupFs + Clone = HostFs> {
    fs: F,
    path: PathBuf,
}

impl<F: CgroupFs + Clone> Cgroup<F> {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn read(&self, name: &str) -> Result<String> {
        let path = self.file(name);
        self.fs.read(&path).map_err(io_err(&path, "read"))
    }

    /// Reads an interface file that may be absent (controller off): `None` then.
    fn read_optional(&self, name: &str) -> Result<Option<String>> {
        let path = self.file(name);
        match self.fs.read(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, "read")(e)),
        }
    }

    fn write(&self, name: &str, value: &str) -> Result<()> {
        let path = self.file(name);
        self.fs.write(&path, value).map_err(io_err(&path, "write"))
    }

    /// Controllers available in this cgroup (enabled by its parent).
    pub fn controllers(&self) -> Result<Controllers> {
        Ok(Controllers::parse(&self.read("cgroup.controllers")?))
    }

    /// Controllers this cgroup passes to its children.
    pub fn subtree_controllers(&self) -> Result<Controllers> {
        Ok(Controllers::parse(&self.read("cgroup.subtree_control")?))
    }

    /// Enables controllers for the children of this cgroup; each must be available here.
    pub fn enable_controllers(&self, wanted: &[Controller]) -> Result<()> {
        let available = self.controllers()?;
        if let Some(missing) = wanted.iter().find(|c| !available.contains(**c)) {
            return Err(self.unavailable(*missing, &available));
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let line: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
        self.write("cgroup.subtree_control", &line.join(" "))
    }

    /// Enables, one at a time, every controller this cgroup has for its children; failures
    /// (a controller busy in a threaded subtree, processes in an inner node) are left for the
    /// availability check of the child to report.
    fn enable_available_controllers(&self) {
        let (Ok(available), Ok(enabled)) = (self.controllers(), self.subtree_controllers()) else {
            return;
        };
        for c in available.iter().filter(|c| !enabled.contains(*c)) {
            let _ = self.write("cgroup.subtree_control", &format!("+{c}"));
        }
    }

    fn unavailable(&self, controller: Controller, available: &Controllers) -> CgroupError {
        CgroupError::Unavailable {
            controller,
            path: self.path.clone(),
            available: available.to_string(),
        }
    }

    /// Moves a process (all its threads) into this cgroup.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Processes directly in this cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Processes in this cgroup and every descendant.
    pub fn all_pids(&self) -> Result<Vec<i32>> {
        let mut pids = self.pids()?;
        for child in self.children()? {
            pids.extend(child.all_pids()?);
        }
        Ok(pids)
    }

    fn children(&self) -> Result<Vec<Cgroup<F>>> {
        let dirs = self
            .fs
            .child_dirs(&self.path)
            .map_err(io_err(&self.path, "list"))?;
        Ok(dirs
            .into_iter()
            .map(|path| Cgroup {
                fs: self.fs.clone(),
                path,
            })
            .collect())
    }

    /// Checks, without writing anything, that every controller `resources` needs is available.
    /// Values that mean "no limit" need no controller.
    pub fn check(&self, resources: &Resources) -> Result<()> {
        self.plan(resources).map(drop)
    }

    /// The writes that apply `resources` here: all of them, less the optional ones whose
    /// controller is missing; a missing controller for any other is `Unavailable`.
    fn plan(&self, resources: &Resources) -> Result<Vec<resources::Write>> {
        let writes = resources.writes()?;
        if writes.is_empty() {
            return Ok(writes);
        }
        let available = self.controllers()?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            match w.controller {
                Some(c) if !available.contains(c) => {
                    if !w.optional {
                        return Err(self.unavailable(c, &available));
                    }
                }
                _ => out.push(w),
            }
        }
        Ok(out)
    }

    /// Applies limits. Everything is validated and checked for availability before the first
    /// write, so a bad or unavailable limit changes nothing. Device rules go first: the
    /// kernel's support for their program is known only once it is loaded, and a new program
    /// replaces the one attached before.
    pub fn apply(&self, resources: &Resources) -> Result<()> {
        let writes = self.plan(resources)?;
        if let Some(devices) = &resources.devices {
            let program = devices.program().map_err(|e| CgroupError::InvalidValue {
                field: "linux.resources.devices".into(),
                reason: e.to_string(),
            })?;
            self.fs
                .set_device_program(&self.path, &program)
                .map_err(|source| CgroupError::Devices {
                    path: self.path.clone(),
                    source,
                })?;
            crate::trace::step("limits: device program");
        }
        for w in writes {
            self.write(&w.file, &w.value)?;
        }
        Ok(())
    }

    /// Usage counters; a counter whose controller is off is `None`.
    pub fn stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        if let Some(text) = self.read_optional("cpu.stat")? {
            stats.parse_cpu_stat(&text);
        }
        stats.memory_current = self
            .read_optional("memory.current")?
            .and_then(|s| parse_u64(&s));
        stats.memory_peak = self
            .read_optional("memory.peak")?
            .and_then(|s| parse_u64(&s));
        if let Some(text) = self.read_optional("memory.events")? {
            stats.parse_memory_events(&text);
        }
        if let Some(text) = self.read_optional("io.stat")? {
            stats.parse_io_stat(&text);
        }
        stats.pids_current = self
            .read_optional("pids.current")?
            .and_then(|s| parse_u64(&s));
        Ok(stats)
    }

    /// Whether any process is in this cgroup or below (`cgroup.events`).
    pub fn is_populated(&self) -> Result<bool> {
        let events = self.read("cgroup.events")?;
        Ok(events.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Whether the cgroup is frozen or freezing (`cgroup.freeze` is 1); false without a freezer.
    pub fn is_frozen(&self) -> Result<bool> {
        Ok(self
            .read_optional("cgroup.freeze")?
            .is_some_and(|s| s.trim() == "1"))
    }

    /// Freezes (or thaws) every process in this cgroup and below with the v2 freezer, and
    /// waits until the kernel reports it done in `cgroup.events`.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let want = u8::from(frozen);
        self.write("cgroup.freeze", &want.to_string())?;
        let line = format!("frozen {want}");
        for _ in 0..FREEZE_POLLS {
            let events = self.read("cgroup.events")?;
            if events.lines().any(|l| l.trim() == line) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(CgroupError::FreezeTimeout {
            path: self.path.clone(),
            frozen: want,
        })
    }

    /// SIGKILLs every process in this cgroup and below: `cgroup.kill` (Linux 5.14+), else
    /// freeze, signal each process, thaw, until none is left.
    pub fn kill(&self) -> Result<()> {
        match self.fs.write(&self.file("cgroup.kill"), "1") {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.file("cgroup.kill"), "write")(e)),
        }
        let freezer = self.fs.exists(&self.file("cgroup.freeze"));
        for _ in 0..KILL_ROUNDS {
            // Frozen, nothing in the cgroup can fork a new process between listing and killing.
            if freezer {
                self.write("cgroup.freeze", "1")?;
            }
            let pids = self.all_pids()?;
            for &pid in &pids {
                match self.fs.signal(pid, libc::SIGKILL) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(io_err(&self.path, "kill")(e)),
                }
            }
            if freezer {
                self.write("cgroup.freeze", "0")?;
            }
            if pids.is_empty() {
                return Ok(());
            }
        }
        let pids = self.all_pids()?;
        if pids.is_empty() {
            Ok(())
        } else {
            Err(CgroupError::Survivors {
                path: self.path.clone(),
                pids,
            })
        }
    }

    /// Removes this cgroup and its descendants (deepest first). They must hold no processes:
    /// call [`Cgroup::kill`] first. A cgroup that is already gone is not an error.
    pub fn remove(&self) -> Result<()> {
        if !self.fs.exists(&self.path) {
            return Ok(());
        }
        for child in self.children()? {
            child.remove()?;
        }
        let mut attempt = 0;
        loop {
            match self.fs.remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                // Killed processes leave the cgroup asynchronously; give the kernel a moment.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < REMOVE_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => return Err(io_err(&self.path, "rmdir")(e)),
            }
        }
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests;
