//! The cgroup seam of the process launcher: one cgroup per unit (`units/<name>` below the
//! cgroup v2 root) with its resource limits, when cgroup v2 has controllers to delegate. The
//! cgroup work itself is `berth_runtime::cgroups`, shared with the container runtime.

use std::path::{Path, PathBuf};

use berth_runtime::cgroups::{
    self as cg, CgroupError, CgroupFs, CgroupRoot, Controller, CpuMax, HostFs, Limit,
};

use crate::unit::Resources;

pub trait Cgroups {
    /// Creates (or reuses) the unit's cgroup with its limits and returns the path of its
    /// `cgroup.procs`, or `None` when units run without cgroups.
    fn prepare(
        &mut self,
        unit: &str,
        resources: &Resources,
    ) -> Result<Option<PathBuf>, CgroupError>;
    /// Kills every process in the unit's cgroup.
    fn kill_all(&mut self, unit: &str);
    /// Removes the unit's cgroup once it is empty (a populated one is reused by the next start).
    fn remove(&mut self, unit: &str);
}

/// No cgroups (host mode, or a kernel without cgroup v2 controllers).
pub struct NoCgroups;

impl Cgroups for NoCgroups {
    fn prepare(&mut self, _: &str, _: &Resources) -> Result<Option<PathBuf>, CgroupError> {
        Ok(None)
    }
    fn kill_all(&mut self, _: &str) {}
    fn remove(&mut self, _: &str) {}
}

/// Unit cgroups below a cgroup v2 root.
pub struct FsCgroups<F: CgroupFs + Clone = HostFs> {
    root: CgroupRoot<F>,
}

/// The controllers units get.
const WANTED: [Controller; 4] = [
    Controller::Cpu,
    Controller::Memory,
    Controller::Io,
    Controller::Pids,
];

impl FsCgroups<HostFs> {
    /// The cgroup v2 hierarchy mounted at `mount` with controllers to delegate (enabled for
    /// children here); `None` otherwise (e.g. hybrid v1/v2 hosts).
    pub fn detect(mount: &Path) -> Option<FsCgroups<HostFs>> {
        FsCgroups::with_root(CgroupRoot::with_fs(HostFs, mount))
    }
}

impl<F: CgroupFs + Clone> FsCgroups<F> {
    pub fn with_root(root: CgroupRoot<F>) -> Option<FsCgroups<F>> {
        let available = root.controllers().ok()?;
        let wanted: Vec<Controller> = WANTED
            .into_iter()
            .filter(|c| available.contains(*c))
            .collect();
        if wanted.is_empty() {
            return None;
        }
        root.as_cgroup().enable_controllers(&wanted).ok()?;
        Some(FsCgroups { root })
    }

    fn rel(unit: &str) -> String {
        format!("units/{unit}")
    }
}

/// A unit's limits for the cgroup; limits the unit does not set are reset to `max` where the
/// controller exists, so a changed unit file takes effect on the next start.
pub fn limits(
    resources: &Resources,
    available: &cg::Controllers,
) -> Result<cg::Resources, CgroupError> {
    let mut out = cg::Resources::default();
    let has = |c| available.contains(c);
    out.memory_max = match resources.memory_max {
        Some(b) => Some(Limit::Value(b)),
        None => has(Controller::Memory).then_some(Limit::Max),
    };
    out.pids_max = match resources.pids_max {
        Some(p) => Some(Limit::Value(p)),
        None => has(Controller::Pids).then_some(Limit::Max),
    };
    out.cpu_max = match resources.cpu_max {
        Some(cpus) => Some(CpuMax::from_cpus(cpus)?),
        None => has(Controller::Cpu).then_some(CpuMax {
            quota: None,
            period: CpuMax::DEFAULT_PERIOD,
        }),
    };
    Ok(out)
}

impl<F: CgroupFs + Clone> Cgroups for FsCgroups<F> {
    fn prepare(
        &mut self,
        unit: &str,
        resources: &Resources,
    ) -> Result<Option<PathBuf>, CgroupError> {
        let group = self.root.create(&Self::rel(unit))?;
        let available = group.controllers()?;
        group.apply(&limits(resources, &available)?)?;
        Ok(Some(group.path().join("cgroup.procs")))
    }

    fn kill_all(&mut self, unit: &str) {
        if let Ok(group) = self.root.open(&Self::rel(unit)) {
            let _ = group.kill();
        }
    }

    fn remove(&mut self, unit: &str) {
        if let Ok(group) = self.root.open(&Self::rel(unit)) {
            // Never wait for a cgroup to drain inside the event loop.
            if group.is_populated().ok() == Some(false) {
                let _ = group.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A directory tree shaped like cgroupfs (interface files exist up front, as the kernel
    /// creates them).
    fn fake_hierarchy(tag: &str, controllers: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("berth-cg-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for dir in [root.clone(), root.join("units"), root.join("units/web")] {
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
            fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        }
        for file in ["memory.max", "cpu.max", "pids.max", "cgroup.procs"] {
            fs::write(root.join("units/web").join(file), "").unwrap();
        }
        root
    }

    #[test]
    fn writes_limits_into_the_unit_cgroup() {
        let root = fake_hierarchy("limits", "cpu memory pids\n");
        let mut cgs = FsCgroups::with_root(CgroupRoot::with_fs(HostFs, &root)).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        let res = Resources {
            memory_max: Some(64 << 20),
            cpu_max: Some(0.5),
            pids_max: Some(128),
        };
        let procs = cgs.prepare("web", &res).unwrap().unwrap();
        assert_eq!(procs, root.join("units/web/cgroup.procs"));
        let read = |f: &str| fs::read_to_string(root.join("units/web").join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "128");
        // Without limits every file is reset to "max".
        cgs.prepare("web", &Resources::default()).unwrap();
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_hierarchy_without_unit_controllers_is_not_used() {
        let root = fake_hierarchy("detect", "hugetlb\n");
        assert!(FsCgroups::with_root(CgroupRoot::with_fs(HostFs, &root)).is_none());
        fs::remove_dir_all(&root).unwrap();
    }
}
