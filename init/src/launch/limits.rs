//! A unit's `[resources]` as cgroup limits: the one mapping for system units (written by
//! [`super::cgroup`]) and container units (carried by the OCI spec's typed fields to
//! berth-runtime, which writes them). It lives in the launch layer, where a unit meets the
//! runtime, so the unit model stays the parsed file and knows no cgroup types.

use berth_runtime::cgroups::{self as cg, CgroupError, CpuMax, Limit};

use crate::unit::Resources;

/// The limits of a unit. A limit the unit does not set is `max`, written explicitly: a cgroup
/// that outlives a run (a system unit's populated cgroup, a container's cgroup left by a
/// crash) then loses a limit removed from the unit file, exactly as a new cgroup has none.
/// "No limit" needs no controller, so a cgroup without one is no error.
pub fn limits(resources: &Resources) -> Result<cg::Resources, CgroupError> {
    // Every field named: a new one cannot be forgotten here.
    let Resources {
        memory_max,
        cpu_max,
        pids_max,
    } = resources;
    Ok(cg::Resources {
        memory_max: Some(memory_max.map_or(Limit::Max, Limit::Value)),
        cpu_max: Some(match cpu_max {
            Some(cpus) => CpuMax::from_cpus(*cpus)?,
            None => CpuMax {
                quota: None,
                period: CpuMax::DEFAULT_PERIOD,
            },
        }),
        pids_max: Some(pids_max.map_or(Limit::Max, Limit::Value)),
        ..cg::Resources::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::cgroup::{Cgroups, FsCgroups};
    use berth_engine::builder::{build_spec, ContainerSettings};
    use berth_runtime::cgroups::{CgroupRoot, HostFs};
    use std::fs;
    use std::path::{Path, PathBuf};

    const SET: Resources = Resources {
        memory_max: Some(64 << 20),
        cpu_max: Some(0.5),
        pids_max: Some(128),
    };

    #[test]
    fn every_limit_maps_set_and_unset() {
        let max = CpuMax {
            quota: None,
            period: 100_000,
        };
        assert_eq!(
            limits(&SET).unwrap(),
            cg::Resources {
                memory_max: Some(Limit::Value(64 << 20)),
                cpu_max: Some(CpuMax {
                    quota: Some(50_000),
                    period: 100_000
                }),
                pids_max: Some(Limit::Value(128)),
                ..cg::Resources::default()
            }
        );
        assert_eq!(
            limits(&Resources::default()).unwrap(),
            cg::Resources {
                memory_max: Some(Limit::Max),
                cpu_max: Some(max),
                pids_max: Some(Limit::Max),
                ..cg::Resources::default()
            }
        );
        // Each field alone: set where the unit sets it, `max` elsewhere.
        let one = |r: Resources| limits(&r).unwrap();
        let memory = one(Resources {
            memory_max: Some(1 << 20),
            ..Resources::default()
        });
        assert_eq!(
            (memory.memory_max, memory.cpu_max, memory.pids_max),
            (Some(Limit::Value(1 << 20)), Some(max), Some(Limit::Max))
        );
        let cpu = one(Resources {
            cpu_max: Some(2.0),
            ..Resources::default()
        });
        assert_eq!(
            (cpu.memory_max, cpu.cpu_max, cpu.pids_max),
            (
                Some(Limit::Max),
                Some(CpuMax {
                    quota: Some(200_000),
                    period: 100_000
                }),
                Some(Limit::Max)
            )
        );
        let pids = one(Resources {
            pids_max: Some(1),
            ..Resources::default()
        });
        assert_eq!(
            (pids.memory_max, pids.cpu_max, pids.pids_max),
            (Some(Limit::Max), Some(max), Some(Limit::Value(1)))
        );
        assert!(limits(&Resources {
            cpu_max: Some(0.0),
            ..Resources::default()
        })
        .is_err());
    }

    const FILES: [&str; 4] = ["memory.max", "cpu.max", "pids.max", "cpu.weight"];

    /// A cgroupfs-shaped directory: `units/web` for the system unit, `containers/web` for the
    /// container, both already holding limits from an earlier run.
    fn hierarchy(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("berth-limits-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for dir in ["", "units", "units/web", "containers", "containers/web"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
            fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        }
        for unit in ["units/web", "containers/web"] {
            let dir = root.join(unit);
            for (file, old) in FILES.iter().zip(["1048576", "1000 100000", "2", "100"]) {
                fs::write(dir.join(file), old).unwrap();
            }
            fs::write(dir.join("cgroup.procs"), "").unwrap();
        }
        root
    }

    /// What berth-runtime does with a container unit's limits: the spec the engine builds,
    /// read back by the runtime and applied to the (reused) cgroup `containers/web`.
    fn apply_as_container(root: &Path, resources: &Resources) {
        let settings = ContainerSettings {
            command: vec!["sh".into()],
            resources: limits(resources).unwrap(),
            ..ContainerSettings::default()
        };
        let spec = build_spec(&settings, root).unwrap();
        let oci = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let mut from_spec = cg::Resources::from_oci(oci).unwrap();
        // The device program needs a kernel; the files are what is checked here.
        from_spec.devices = None;
        let group = CgroupRoot::with_fs(HostFs, root)
            .create("containers/web")
            .unwrap();
        group.apply(&from_spec).unwrap();
    }

    fn read(root: &Path, unit: &str) -> Vec<String> {
        FILES
            .iter()
            .map(|f| fs::read_to_string(root.join(unit).join(f)).unwrap())
            .collect()
    }

    #[test]
    fn system_and_container_units_write_the_same_files() {
        let root = hierarchy("same");
        let mut system = FsCgroups::with_root(CgroupRoot::with_fs(HostFs, &root)).unwrap();
        let unset = Resources::default();
        for (resources, want) in [
            (&SET, ["67108864", "50000 100000", "128"]),
            // Limits removed from the unit: the reused cgroups lose them.
            (&unset, ["max", "max 100000", "max"]),
        ] {
            system.prepare("web", resources).unwrap();
            apply_as_container(&root, resources);
            let mut want: Vec<String> = want.iter().map(|v| v.to_string()).collect();
            // No unit sets a weight: cpu.weight keeps what it had.
            want.push("100".into());
            assert_eq!(read(&root, "units/web"), want);
            assert_eq!(read(&root, "containers/web"), want);
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn no_limit_needs_no_controller() {
        let root = hierarchy("nocontroller");
        for dir in ["units/web", "containers/web"] {
            fs::write(root.join(dir).join("cgroup.controllers"), "pids\n").unwrap();
        }
        let mut system = FsCgroups::with_root(CgroupRoot::with_fs(HostFs, &root)).unwrap();
        let only_pids = Resources {
            pids_max: Some(64),
            ..Resources::default()
        };
        system.prepare("web", &only_pids).unwrap();
        apply_as_container(&root, &only_pids);
        for unit in ["units/web", "containers/web"] {
            assert_eq!(read(&root, unit), ["1048576", "1000 100000", "64", "100"]);
        }
        fs::remove_dir_all(&root).unwrap();
    }
}
