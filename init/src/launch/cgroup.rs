//! The cgroup seam of the process launcher: one cgroup per unit with its resource limits,
//! when cgroup v2 with controllers is available. `FsCgroups` writes the cgroupfs files under a
//! root directory (the real `/sys/fs/cgroup/units`, or a plain directory in tests).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::unit::Resources;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct CgroupError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError {
        path: path.to_path_buf(),
        source,
    }
}

pub trait Cgroups {
    /// Creates (or reuses) the unit's cgroup with its limits and returns the path of its
    /// `cgroup.procs`, or `None` when units run without cgroups.
    fn prepare(
        &mut self,
        unit: &str,
        resources: &Resources,
    ) -> Result<Option<PathBuf>, CgroupError>;
    /// Kills every process in the unit's cgroup (cgroup.kill).
    fn kill_all(&mut self, unit: &str);
    /// Removes the unit's (empty) cgroup.
    fn remove(&mut self, unit: &str);
}

/// No cgroups (host mode on a machine without cgroup v2 controllers).
pub struct NoCgroups;

impl Cgroups for NoCgroups {
    fn prepare(&mut self, _: &str, _: &Resources) -> Result<Option<PathBuf>, CgroupError> {
        Ok(None)
    }
    fn kill_all(&mut self, _: &str) {}
    fn remove(&mut self, _: &str) {}
}

/// cgroup v2 files under `root` (one directory per unit).
pub struct FsCgroups {
    root: PathBuf,
}

/// CPU bandwidth period written to `cpu.max`, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

impl FsCgroups {
    pub fn new(root: PathBuf) -> FsCgroups {
        FsCgroups { root }
    }

    /// The cgroup v2 hierarchy at `/sys/fs/cgroup` with controllers to delegate, prepared for
    /// units at `/sys/fs/cgroup/units`; `None` otherwise (e.g. hybrid v1/v2 hosts).
    pub fn detect(mount: &Path) -> Option<FsCgroups> {
        let controllers = fs::read_to_string(mount.join("cgroup.controllers")).ok()?;
        let wanted: Vec<&str> = controllers
            .split_whitespace()
            .filter(|c| ["cpu", "memory", "io", "pids"].contains(c))
            .collect();
        if wanted.is_empty() {
            return None;
        }
        let enable = wanted
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let root = mount.join("units");
        fs::create_dir_all(&root).ok()?;
        fs::write(mount.join("cgroup.subtree_control"), &enable).ok()?;
        fs::write(root.join("cgroup.subtree_control"), &enable).ok()?;
        Some(FsCgroups { root })
    }

    fn dir(&self, unit: &str) -> PathBuf {
        self.root.join(unit)
    }
}

/// The cgroupfs file contents for `resources`: (file name, value).
pub fn limit_files(resources: &Resources) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    out.push((
        "memory.max",
        resources.memory_max.map_or("max".into(), |b| b.to_string()),
    ));
    let cpu = match resources.cpu_max {
        Some(cpus) => format!(
            "{} {CPU_PERIOD_US}",
            ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)
        ),
        None => format!("max {CPU_PERIOD_US}"),
    };
    out.push(("cpu.max", cpu));
    out.push((
        "pids.max",
        resources.pids_max.map_or("max".into(), |p| p.to_string()),
    ));
    out
}

impl Cgroups for FsCgroups {
    fn prepare(
        &mut self,
        unit: &str,
        resources: &Resources,
    ) -> Result<Option<PathBuf>, CgroupError> {
        let dir = self.dir(unit);
        fs::create_dir_all(&dir).map_err(err(&dir))?;
        for (file, value) in limit_files(resources) {
            let path = dir.join(file);
            // A controller that is not enabled has no file; writing "max" there is a no-op
            // anyway, so only a requested limit makes a missing file an error.
            let requested = !value.starts_with("max");
            match fs::write(&path, &value) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && !requested => {}
                other => other.map_err(err(&path))?,
            }
        }
        Ok(Some(dir.join("cgroup.procs")))
    }

    fn kill_all(&mut self, unit: &str) {
        let _ = fs::write(self.dir(unit).join("cgroup.kill"), "1");
    }

    fn remove(&mut self, unit: &str) {
        // rmdir fails while processes remain; they are killed first, and a later start
        // reuses the directory.
        let _ = fs::remove_dir(self.dir(unit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_limits_into_the_unit_cgroup() {
        let root = std::env::temp_dir().join(format!("berth-cg-{}", std::process::id()));
        let mut cg = FsCgroups::new(root.clone());
        let res = Resources {
            memory_max: Some(64 << 20),
            cpu_max: Some(0.5),
            pids_max: Some(128),
        };
        let procs = cg.prepare("web", &res).unwrap().unwrap();
        assert_eq!(procs, root.join("web/cgroup.procs"));
        let read = |f: &str| fs::read_to_string(root.join("web").join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "128");
        // Without limits every file is reset to "max".
        cg.prepare("web", &Resources::default()).unwrap();
        assert_eq!(read("memory.max"), "max");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn detect_refuses_a_hierarchy_without_controllers() {
        let root = std::env::temp_dir().join(format!("berth-cg-detect-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("cgroup.controllers"), "hugetlb\n").unwrap();
        assert!(FsCgroups::detect(&root).is_none());
        fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert!(FsCgroups::detect(&root).is_some());
        assert_eq!(
            fs::read_to_string(root.join("units/cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
