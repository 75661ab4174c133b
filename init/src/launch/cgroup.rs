//! The cgroup seam of the process launcher: one cgroup per unit (`units/<name>` below the
//! cgroup v2 root) with its resource limits ([`super::limits`], the same as a container
//! unit's), when cgroup v2 has controllers to delegate. The cgroup work itself is
//! `berth_runtime::cgroups`, shared with the container runtime.

use std::path::{Path, PathBuf};

use berth_runtime::cgroups::{
    self as cg, CgroupError, CgroupFs, CgroupRoot, Controller, HostFs, Limit,
};

use crate::launch::limits::limits;
use crate::launch::Usage;
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
    /// The unit cgroup's counters and memory limit; `None` without a cgroup.
    fn usage(&self, _unit: &str) -> Option<Usage> {
        None
    }
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

    /// The parent cgroup of every system unit, for [`SystemShare`]; `None` when it cannot be
    /// created.
    pub fn system_share(&self) -> Option<SystemShare<F>> {
        let group = self.root.create(SYSTEM_UNITS).ok()?;
        Some(SystemShare { group })
    }
}

/// The cgroup every system unit's own cgroup sits in.
const SYSTEM_UNITS: &str = "units";

/// The CPU share of all system units together (`units/cpu.weight`). With one CPU, a boot's
/// system units (the DHCP client's shell and helper forks, above all) take half of it from
/// the first containers' setup; PID 1 lowers their weight while those setups run, and
/// restores the default once they are done. Only CPU time the setups want is taken: an idle
/// CPU still runs a system unit at any weight.
pub struct SystemShare<F: CgroupFs + Clone = HostFs> {
    group: cg::Cgroup<F>,
}

/// cgroup v2's lowest weight: system units run when nothing else wants the CPU.
pub const YIELDING_WEIGHT: u64 = 1;
/// cgroup v2's default weight, the same as every container's.
pub const DEFAULT_WEIGHT: u64 = 100;

impl<F: CgroupFs + Clone> SystemShare<F> {
    /// Sets the system units' weight (1..=10000).
    pub fn set_weight(&self, weight: u64) -> Result<(), CgroupError> {
        self.group.apply(&cg::Resources {
            cpu_weight: Some(weight),
            ..Default::default()
        })
    }
}

impl<F: CgroupFs + Clone> Cgroups for FsCgroups<F> {
    fn prepare(
        &mut self,
        unit: &str,
        resources: &Resources,
    ) -> Result<Option<PathBuf>, CgroupError> {
        let group = self.root.create(&Self::rel(unit))?;
        group.apply(&limits(resources)?)?;
        Ok(Some(group.path().join("cgroup.procs")))
    }

    fn kill_all(&mut self, unit: &str) {
        if let Ok(group) = self.root.open(&Self::rel(unit)) {
            let _ = group.kill();
        }
    }

    fn usage(&self, unit: &str) -> Option<Usage> {
        usage_of(&self.root.open(&Self::rel(unit)).ok()?)
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

/// What a cgroup reports: its counters and `memory.max`.
pub fn usage_of<F: CgroupFs + Clone>(group: &cg::Cgroup<F>) -> Option<Usage> {
    let stats = group.stats().ok()?;
    // `memory.max` is absent without the memory controller.
    let memory_max = std::fs::read_to_string(group.path().join("memory.max"))
        .ok()
        .and_then(|text| match text.trim() {
            "max" => Some(Limit::Max),
            n => n.parse().ok().map(Limit::Value),
        });
    Some(Usage { stats, memory_max })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn the_system_share_sets_the_weight_of_all_system_units() {
        let root = fake_hierarchy("share", "cpu memory pids");
        fs::write(root.join("units/cpu.weight"), "100\n").unwrap();
        let cgroups = FsCgroups::with_root(CgroupRoot::with_fs(HostFs, &root)).unwrap();
        let share = cgroups.system_share().unwrap();
        share.set_weight(YIELDING_WEIGHT).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("units/cpu.weight")).unwrap(),
            "1"
        );
        share.set_weight(DEFAULT_WEIGHT).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("units/cpu.weight")).unwrap(),
            "100"
        );
        // A unit's own cgroup keeps its weight: only the parent's share moves.
        assert!(!root.join("units/web/cpu.weight").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn without_the_cpu_controller_the_share_cannot_be_set() {
        let root = fake_hierarchy("share-nocpu", "memory pids");
        let cgroups = FsCgroups::with_root(CgroupRoot::with_fs(HostFs, &root)).unwrap();
        let share = cgroups.system_share().unwrap();
        assert!(share.set_weight(YIELDING_WEIGHT).is_err());
        assert!(!root.join("units/cpu.weight").exists());
        fs::remove_dir_all(&root).unwrap();
    }

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
        assert_eq!(read("pids.max"), "max");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn usage_reads_counters_and_the_memory_limit() {
        let root = fake_hierarchy("usage", "cpu memory pids io\n");
        let web = root.join("units/web");
        fs::write(
            web.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        )
        .unwrap();
        fs::write(web.join("memory.current"), "4096\n").unwrap();
        fs::write(web.join("memory.peak"), "8192\n").unwrap();
        fs::write(web.join("memory.max"), "max\n").unwrap();
        fs::write(
            web.join("io.stat"),
            "8:0 rbytes=10 wbytes=20\n8:16 rbytes=1 wbytes=2\n",
        )
        .unwrap();
        fs::write(web.join("pids.current"), "3\n").unwrap();
        let cgs = FsCgroups::with_root(CgroupRoot::with_fs(HostFs, &root)).unwrap();
        let usage = cgs.usage("web").unwrap();
        assert_eq!(usage.stats.cpu_usage_usec, Some(2_500_000));
        assert_eq!(usage.stats.memory_peak, Some(8192));
        assert_eq!(
            (usage.stats.io_read_bytes, usage.stats.io_write_bytes),
            (Some(11), Some(22))
        );
        assert_eq!(usage.stats.pids_current, Some(3));
        assert_eq!(usage.memory_max, Some(Limit::Max));
        fs::write(web.join("memory.max"), "67108864\n").unwrap();
        assert_eq!(
            cgs.usage("web").unwrap().memory_max,
            Some(Limit::Value(64 << 20))
        );
        assert!(cgs.usage("absent").is_none());
        assert!(NoCgroups.usage("web").is_none());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_hierarchy_without_unit_controllers_is_not_used() {
        let root = fake_hierarchy("detect", "hugetlb\n");
        assert!(FsCgroups::with_root(CgroupRoot::with_fs(HostFs, &root)).is_none());
        fs::remove_dir_all(&root).unwrap();
    }
}
