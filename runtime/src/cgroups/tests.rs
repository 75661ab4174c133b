//! Unit tests on a temp dir that behaves like cgroupfs where it matters: new cgroups get the
//! interface files of the controllers their parent enables, `cgroup.subtree_control` takes
//! `+name`, `cgroup.procs` appends.

use super::resources::cpu_weight_of_shares;
use super::*;
use oci_spec::runtime::LinuxResources;
use std::cell::RefCell;
use std::fs;
use std::rc::Rc;

fn controller_files(c: &str) -> &'static [&'static str] {
    match c {
        "memory" => &[
            "memory.max",
            "memory.high",
            "memory.low",
            "memory.swap.max",
            "memory.current",
            "memory.peak",
            "memory.events",
        ],
        "cpu" => &["cpu.max", "cpu.weight"],
        "pids" => &["pids.max", "pids.current"],
        "io" => &["io.weight", "io.max", "io.stat"],
        "cpuset" => &["cpuset.cpus", "cpuset.mems"],
        _ => &[],
    }
}

/// Device programs set, with the cgroup each went to.
type DevicePrograms = Rc<RefCell<Vec<(PathBuf, Vec<crate::bpf::Insn>)>>>;

#[derive(Clone, Default)]
struct TestFs {
    signals: Rc<RefCell<Vec<i32>>>,
    /// Device programs set, by cgroup path.
    device_programs: DevicePrograms,
    /// What setting a device program fails with (a kernel without cgroup eBPF).
    device_program_error: Option<crate::bpf::BpfError>,
    /// When set, a signalled pid disappears from every cgroup.procs under this root.
    kill_removes_under: Option<PathBuf>,
    no_cgroup_kill: bool,
}

fn remove_pid(dir: &Path, pid: i32) {
    let procs = dir.join("cgroup.procs");
    if let Ok(text) = fs::read_to_string(&procs) {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| l.trim() != pid.to_string())
            .collect();
        fs::write(&procs, kept.join("\n")).unwrap();
    }
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            remove_pid(&e.path(), pid);
        }
    }
}

impl CgroupFs for TestFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        HostFs.read(path)
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "cgroup.kill" && self.no_cgroup_kill {
            return Err(io::ErrorKind::NotFound.into());
        }
        let old = HostFs.read(path)?;
        let new = match name {
            "cgroup.subtree_control" => {
                let mut set: BTreeSet<String> = old.split_whitespace().map(String::from).collect();
                for tok in value.split_whitespace() {
                    if let Some(n) = tok.strip_prefix('+') {
                        set.insert(n.to_string());
                    } else if let Some(n) = tok.strip_prefix('-') {
                        set.remove(n);
                    }
                }
                set.into_iter().collect::<Vec<_>>().join(" ")
            }
            "cgroup.procs" => format!("{old}{value}\n"),
            _ => value.to_string(),
        };
        fs::write(path, new)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)?;
        let offered = fs::read_to_string(path.parent().unwrap().join("cgroup.subtree_control"))?;
        populate(path, &offered);
        Ok(())
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        if !HostFs.read(&path.join("cgroup.procs"))?.trim().is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        fs::remove_dir_all(path)
    }
    fn child_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        HostFs.child_dirs(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn signal(&self, pid: i32, _signal: i32) -> io::Result<()> {
        self.signals.borrow_mut().push(pid);
        if let Some(root) = &self.kill_removes_under {
            remove_pid(root, pid);
        }
        Ok(())
    }
    fn set_device_program(
        &self,
        path: &Path,
        program: &[crate::bpf::Insn],
    ) -> std::result::Result<(), crate::bpf::BpfError> {
        if let Some(e) = &self.device_program_error {
            return Err(e.clone());
        }
        self.device_programs
            .borrow_mut()
            .push((path.to_path_buf(), program.to_vec()));
        Ok(())
    }
}

fn populate(dir: &Path, controllers: &str) {
    for (f, v) in [
        ("cgroup.controllers", controllers),
        ("cgroup.subtree_control", ""),
        ("cgroup.procs", ""),
        ("cgroup.events", "populated 0\nfrozen 0\n"),
        ("cgroup.freeze", "0"),
        ("cgroup.kill", ""),
        ("cpu.stat", "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"),
    ] {
        fs::write(dir.join(f), v).unwrap();
    }
    for c in controllers.split_whitespace() {
        for f in controller_files(c) {
            fs::write(dir.join(f), "").unwrap();
        }
    }
}

struct Fixture {
    _dir: TempDir,
    root: CgroupRoot<TestFs>,
}

/// A minimal temp dir that removes itself.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn fixture(root_controllers: &str, fs_: TestFs) -> Fixture {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("berth-cgroup-test-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    populate(&dir, root_controllers);
    let root = CgroupRoot::with_fs(fs_, &dir);
    Fixture {
        _dir: TempDir(dir),
        root,
    }
}

const ALL: &str = "cpuset cpu io memory pids";

#[test]
fn create_enables_controllers_along_the_path() {
    let f = fixture(ALL, TestFs::default());
    let cg = f.root.create("/berth/web").unwrap();
    assert_eq!(cg.path(), f.root.path().join("berth/web"));
    assert_eq!(
        fs::read_to_string(f.root.path().join("cgroup.subtree_control")).unwrap(),
        "cpu cpuset io memory pids"
    );
    assert!(cg.controllers().unwrap().contains(Controller::Memory));
    // Creating again is fine and opening finds it.
    f.root.create("berth/web").unwrap();
    assert_eq!(f.root.open("berth/web").unwrap().path(), cg.path());
}

#[test]
fn bad_paths_are_rejected() {
    let f = fixture(ALL, TestFs::default());
    for p in ["../x", "a/../../b", "/", "", "system.slice:berth:web"] {
        assert!(
            matches!(f.root.create(p), Err(CgroupError::InvalidPath(_))),
            "{p}"
        );
    }
    assert!(matches!(
        f.root.open("nope"),
        Err(CgroupError::NotFound { .. })
    ));
}

#[test]
fn apply_writes_every_limit() {
    let f = fixture(ALL, TestFs::default());
    let cg = f.root.create("c").unwrap();
    let r = Resources {
        memory_max: Some(Limit::Value(64 << 20)),
        memory_high: Some(Limit::Value(48 << 20)),
        memory_swap_max: Some(Limit::Max),
        cpu_max: Some(CpuMax::from_cpus(0.5).unwrap()),
        cpu_weight: Some(200),
        pids_max: Some(Limit::Value(128)),
        io_weight: Some(50),
        io_max: vec![IoMax {
            major: 8,
            minor: 0,
            rbps: Some(1000),
            wiops: Some(10),
            ..IoMax::default()
        }],
        cpuset_cpus: Some("0-1".into()),
        cpuset_mems: Some("0".into()),
        ..Resources::default()
    };
    cg.apply(&r).unwrap();
    let read = |n: &str| fs::read_to_string(cg.path().join(n)).unwrap();
    assert_eq!(read("memory.max"), "67108864");
    assert_eq!(read("memory.high"), "50331648");
    assert_eq!(read("memory.swap.max"), "max");
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(read("cpu.weight"), "200");
    assert_eq!(read("pids.max"), "128");
    assert_eq!(read("io.weight"), "default 50");
    assert_eq!(read("io.max"), "8:0 rbps=1000 wiops=10");
    assert_eq!(read("cpuset.cpus"), "0-1");
}

#[test]
fn unavailable_controller_is_an_error_and_changes_nothing() {
    // The hybrid host: only hugetlb on v2.
    let f = fixture("hugetlb", TestFs::default());
    let cg = f.root.create("c").unwrap();
    let r = Resources {
        pids_max: Some(Limit::Value(10)),
        memory_max: Some(Limit::Value(1 << 20)),
        ..Resources::default()
    };
    let err = cg.apply(&r).unwrap_err();
    match &err {
        CgroupError::Unavailable {
            controller,
            path,
            available,
        } => {
            assert_eq!(*controller, Controller::Memory);
            assert_eq!(path, cg.path());
            assert_eq!(available, "hugetlb");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("memory"), "{err}");
    assert!(!cg.path().join("pids.max").exists() && !cg.path().join("memory.max").exists());
    // No limits at all is fine anywhere.
    cg.apply(&Resources::default()).unwrap();
    assert!(matches!(
        cg.enable_controllers(&[Controller::Cpu]),
        Err(CgroupError::Unavailable { .. })
    ));
}

#[test]
fn no_limit_values_need_no_controller() {
    // The hybrid host again: what Podman and Docker send for "no limit" is fine there.
    let f = fixture("hugetlb", TestFs::default());
    let cg = f.root.create("c").unwrap();
    for json in [
        r#"{"pids": {"limit": 0}}"#,
        r#"{"pids": {"limit": -1}}"#,
        r#"{"cpu": {"shares": 1024}}"#,
        r#"{"cpu": {"quota": -1, "period": 100000}}"#,
        r#"{"memory": {"limit": -1, "reservation": 0, "swap": -1}}"#,
        r#"{"blockIO": {"weight": 0}}"#,
    ] {
        let oci: LinuxResources = serde_json::from_str(json).unwrap();
        let r = Resources::from_oci(&oci).unwrap();
        cg.check(&r).unwrap_or_else(|e| panic!("{json}: {e}"));
        cg.apply(&r).unwrap_or_else(|e| panic!("{json}: {e}"));
    }
    assert!(!cg.path().join("pids.max").exists() && !cg.path().join("cpu.weight").exists());
    // A real limit still needs its controller; so does a weight other than the default.
    for (json, controller) in [
        (r#"{"pids": {"limit": 2048}}"#, Controller::Pids),
        (r#"{"cpu": {"shares": 512}}"#, Controller::Cpu),
        (r#"{"memory": {"limit": 67108864}}"#, Controller::Memory),
    ] {
        let oci: LinuxResources = serde_json::from_str(json).unwrap();
        let r = Resources::from_oci(&oci).unwrap();
        match cg.apply(&r) {
            Err(CgroupError::Unavailable { controller: c, .. }) => assert_eq!(c, controller),
            other => panic!("{json}: {other:?}"),
        }
    }
    // Where the controller is there, "no limit" is written (it may lift an earlier limit).
    let f = fixture(ALL, TestFs::default());
    let cg = f.root.create("c").unwrap();
    let oci: LinuxResources = serde_json::from_str(r#"{"pids": {"limit": 0}}"#).unwrap();
    cg.apply(&Resources::from_oci(&oci).unwrap()).unwrap();
    assert_eq!(
        fs::read_to_string(cg.path().join("pids.max")).unwrap(),
        "max"
    );
}

#[test]
fn hugepage_limits_become_hugetlb_max() {
    let oci: LinuxResources = serde_json::from_str(
        r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}, {"pageSize": "1GB", "limit": -1}]}"#,
    )
    .unwrap();
    let r = Resources::from_oci(&oci).unwrap();
    let writes = r.writes().unwrap();
    let files: Vec<(&str, &str)> = writes
        .iter()
        .map(|w| (w.file.as_str(), w.value.as_str()))
        .collect();
    assert_eq!(
        files,
        [("hugetlb.1GB.max", "max"), ("hugetlb.2MB.max", "4194304")]
    );
    let bad: LinuxResources =
        serde_json::from_str(r#"{"hugepageLimits": [{"pageSize": "../x", "limit": 1}]}"#).unwrap();
    assert!(Resources::from_oci(&bad).is_err());
}

#[test]
fn device_rules_become_the_cgroup_device_program() {
    let fs_ = TestFs::default();
    let f = fixture(ALL, fs_.clone());
    let cg = f.root.create("c").unwrap();
    let r = Resources {
        pids_max: Some(Limit::Value(5)),
        devices: Some(DeviceRules::container_default()),
        ..Resources::default()
    };
    cg.apply(&r).unwrap();
    let programs = fs_.device_programs.borrow();
    assert_eq!(programs.len(), 1);
    assert_eq!(programs[0].0, cg.path());
    assert_eq!(
        programs[0].1,
        DeviceRules::container_default().program().unwrap()
    );
    assert_eq!(fs::read_to_string(cg.path().join("pids.max")).unwrap(), "5");
}

#[test]
fn device_rules_without_cgroup_ebpf_are_an_error_and_change_nothing() {
    let fs_ = TestFs {
        device_program_error: Some(crate::bpf::classify_load_error(crate::bpf::LoadFailure {
            errno: nix::errno::Errno::EINVAL,
            log: String::new(),
        })),
        ..TestFs::default()
    };
    let f = fixture(ALL, fs_);
    let cg = f.root.create("c").unwrap();
    let r = Resources {
        pids_max: Some(Limit::Value(5)),
        devices: Some(DeviceRules::container_default()),
        ..Resources::default()
    };
    let err = cg.apply(&r).unwrap_err();
    assert!(matches!(err, CgroupError::Devices { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("device rules cannot be enforced")
            && text.contains("unavailable")
            && text.contains(cg.path().to_str().unwrap()),
        "{text}"
    );
    assert_eq!(fs::read_to_string(cg.path().join("pids.max")).unwrap(), "");
}

#[test]
fn invalid_values_are_rejected_before_writing() {
    let f = fixture(ALL, TestFs::default());
    let cg = f.root.create("c").unwrap();
    let bad = [
        Resources {
            cpu_weight: Some(0),
            pids_max: Some(Limit::Value(3)),
            ..Resources::default()
        },
        Resources {
            cpuset_cpus: Some("0;rm".into()),
            pids_max: Some(Limit::Value(3)),
            ..Resources::default()
        },
        Resources {
            cpu_max: Some(CpuMax {
                quota: Some(1),
                period: 5,
            }),
            pids_max: Some(Limit::Value(3)),
            ..Resources::default()
        },
    ];
    for r in bad {
        assert!(
            matches!(cg.apply(&r), Err(CgroupError::InvalidValue { .. })),
            "{r:?}"
        );
    }
    assert_eq!(fs::read_to_string(cg.path().join("pids.max")).unwrap(), "");
    assert!(CpuMax::from_cpus(0.0).is_err() && CpuMax::from_cpus(f64::NAN).is_err());
}

#[test]
fn oci_resources_convert_like_runc() {
    let json = r#"{
        "memory": {"limit": 104857600, "reservation": 52428800, "swap": 209715200},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 64},
        "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
        "unified": {"memory.high": "90000000"}
    }"#;
    let r: LinuxResources = serde_json::from_str(json).unwrap();
    let r = Resources::from_oci(&r).unwrap();
    assert_eq!(r.memory_max, Some(Limit::Value(104_857_600)));
    assert_eq!(r.memory_low, Some(Limit::Value(52_428_800)));
    assert_eq!(r.memory_swap_max, Some(Limit::Value(104_857_600)));
    assert_eq!(
        r.cpu_max,
        Some(CpuMax {
            quota: Some(50_000),
            period: 100_000
        })
    );
    assert_eq!(r.cpu_weight, Some(39));
    assert_eq!(r.pids_max, Some(Limit::Value(64)));
    assert_eq!(r.io_weight, Some(1 + 490 * 9999 / 990));
    assert_eq!(
        r.io_max,
        vec![IoMax {
            major: 8,
            minor: 0,
            rbps: Some(1_048_576),
            ..IoMax::default()
        }]
    );
    assert_eq!(
        r.unified.get("memory.high").map(String::as_str),
        Some("90000000")
    );
    assert_eq!(r.devices, None, "no rules, no device program");
    let r: LinuxResources = serde_json::from_str(
        r#"{"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}]}"#,
    )
    .unwrap();
    let rules = Resources::from_oci(&r).unwrap().devices.unwrap();
    assert_eq!(rules.rules().len(), 2);
    assert_eq!(rules.rules()[1].to_string(), "allow c 1:11 r");

    for (json, field) in [
        (r#"{"memory": {"limit": 100, "swap": 50}}"#, "memory.swap"),
        (r#"{"memory": {"swap": 50}}"#, "memory.swap"),
        (r#"{"unified": {"../etc": "1"}}"#, "unified"),
        (r#"{"unified": {"bogus.max": "1"}}"#, "bogus"),
        (r#"{"network": {"classID": 1}}"#, "network"),
        (
            r#"{"devices": [{"allow": true, "access": "rwx"}]}"#,
            "devices[0].access",
        ),
    ] {
        let r: LinuxResources = serde_json::from_str(json).unwrap();
        let err = Resources::from_oci(&r).unwrap_err().to_string();
        assert!(err.contains(field), "{json}: {err}");
    }
}

/// The writes sorted by file (the order of writes to different files does not matter).
fn sorted(mut writes: Vec<resources::Write>) -> Vec<resources::Write> {
    writes.sort_by(|a, b| (&a.file, &a.value).cmp(&(&b.file, &b.value)));
    writes
}

/// `to_oci` then `from_oci`: the writes the runtime makes from a built spec.
fn through_oci(r: &Resources) -> (LinuxResources, Vec<resources::Write>) {
    let oci = r.to_oci().unwrap();
    // Through JSON too, as config.json carries it.
    let json = serde_json::to_string(&oci).unwrap();
    let back: LinuxResources = serde_json::from_str(&json).unwrap();
    let writes = Resources::from_oci(&back).unwrap().writes().unwrap();
    (oci, sorted(writes))
}

#[test]
fn to_oci_fills_the_typed_fields_that_read_back_the_same() {
    // Limits as a unit sets them, and the "no limit" of a unit that sets none.
    let set = Resources {
        memory_max: Some(Limit::Value(64 << 20)),
        cpu_max: Some(CpuMax::from_cpus(0.5).unwrap()),
        pids_max: Some(Limit::Value(128)),
        ..Resources::default()
    };
    let unset = Resources {
        memory_max: Some(Limit::Max),
        cpu_max: Some(CpuMax {
            quota: None,
            period: CpuMax::DEFAULT_PERIOD,
        }),
        pids_max: Some(Limit::Max),
        ..Resources::default()
    };
    for r in [&set, &unset] {
        let (oci, writes) = through_oci(r);
        assert_eq!(writes, sorted(r.writes().unwrap()), "{r:?}");
        assert!(oci.unified().is_none(), "{oci:?}");
    }
    let (oci, _) = through_oci(&set);
    assert_eq!(oci.memory().unwrap().limit(), Some(64 << 20));
    assert_eq!(
        (
            oci.cpu().as_ref().unwrap().quota(),
            oci.cpu().as_ref().unwrap().period()
        ),
        (Some(50_000), Some(100_000))
    );
    assert_eq!(oci.pids().unwrap().limit(), 128);
    let (oci, writes) = through_oci(&unset);
    assert_eq!(oci.memory().unwrap().limit(), Some(-1));
    assert_eq!(oci.cpu().as_ref().unwrap().quota(), Some(-1));
    assert_eq!(oci.pids().unwrap().limit(), -1);
    let values: Vec<(&str, &str, bool)> = writes
        .iter()
        .map(|w| (w.file.as_str(), w.value.as_str(), w.optional))
        .collect();
    assert_eq!(
        values,
        [
            ("cpu.max", "max 100000", true),
            ("memory.max", "max", true),
            ("pids.max", "max", true)
        ]
    );

    // Every other typed field.
    let mut all = Resources {
        memory_low: Some(Limit::Value(1 << 20)),
        memory_swap_max: Some(Limit::Value(32 << 20)),
        cpu_weight: Some(cpu_weight_of_shares(1024)),
        cpu_weight_from_default_shares: true,
        cpuset_cpus: Some("0-1".into()),
        cpuset_mems: Some("0".into()),
        io_max: vec![
            IoMax {
                major: 8,
                minor: 0,
                rbps: Some(1 << 20),
                wiops: Some(100),
                ..IoMax::default()
            },
            IoMax {
                major: 8,
                minor: 16,
                wbps: Some(1 << 10),
                riops: Some(10),
                ..IoMax::default()
            },
        ],
        hugetlb_max: [("2MB".to_string(), Limit::Value(4 << 20))].into(),
        unified: [("memory.oom.group".to_string(), "1".to_string())].into(),
        devices: Some(DeviceRules::container_default()),
        ..set.clone()
    };
    let (oci, writes) = through_oci(&all);
    assert_eq!(writes, sorted(all.writes().unwrap()));
    assert_eq!(oci.memory().unwrap().swap(), Some((64 + 32) << 20));
    assert_eq!(oci.cpu().as_ref().unwrap().shares(), Some(1024));
    assert_eq!(
        oci.unified().as_ref().unwrap().keys().collect::<Vec<_>>(),
        ["memory.oom.group"],
        "only what has no typed field"
    );
    assert_eq!(
        Resources::from_oci(&oci).unwrap().devices,
        Some(DeviceRules::container_default())
    );
    all.memory_swap_max = Some(Limit::Max);
    all.hugetlb_max.insert("1GB".into(), Limit::Max);
    let (oci, writes) = through_oci(&all);
    assert_eq!(writes, sorted(all.writes().unwrap()));
    assert_eq!(oci.memory().unwrap().swap(), Some(-1));
}

#[test]
fn to_oci_puts_what_no_typed_field_holds_into_unified() {
    let r = Resources {
        memory_max: Some(Limit::Value(u64::MAX)),
        memory_high: Some(Limit::Value(32 << 20)),
        // A swap limit needs a finite memory limit in OCI's form.
        memory_swap_max: Some(Limit::Value(1 << 20)),
        cpu_max: Some(CpuMax {
            quota: Some(0),
            period: 100_000,
        }),
        cpu_weight: Some(200),
        pids_max: Some(Limit::Value(0)),
        io_weight: Some(300),
        hugetlb_max: [("2MB".to_string(), Limit::Value(u64::MAX))].into(),
        ..Resources::default()
    };
    let oci = r.to_oci().unwrap();
    let mut keys: Vec<&String> = oci.unified().as_ref().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "cpu.max",
            "cpu.weight",
            "hugetlb.2MB.max",
            "io.weight",
            "memory.high",
            "memory.max",
            "memory.swap.max",
            "pids.max"
        ]
    );
    assert!(oci.memory().is_none() && oci.cpu().is_none() && oci.pids().is_none());
    // Same files, same values; raw files just need their controller.
    let files = |w: Vec<resources::Write>| -> Vec<(String, String)> {
        sorted(w).into_iter().map(|w| (w.file, w.value)).collect()
    };
    let back = Resources::from_oci(&oci).unwrap();
    assert_eq!(files(back.writes().unwrap()), files(r.writes().unwrap()));

    // Invalid values are errors before they reach a spec.
    for bad in [
        Resources {
            cpu_weight: Some(0),
            ..Resources::default()
        },
        Resources {
            devices: Some(DeviceRules::new(Vec::new())),
            ..Resources::default()
        },
    ] {
        assert!(
            matches!(bad.to_oci(), Err(CgroupError::InvalidValue { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn pids_and_stats() {
    let f = fixture(ALL, TestFs::default());
    let cg = f.root.create("c").unwrap();
    cg.add_pid(41).unwrap();
    cg.add_pid(42).unwrap();
    assert_eq!(cg.pids().unwrap(), vec![41, 42]);
    let w = |n: &str, v: &str| fs::write(cg.path().join(n), v).unwrap();
    w(
        "cpu.stat",
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n",
    );
    w("memory.current", "4096\n");
    w("memory.peak", "8192\n");
    w("memory.events", "low 0\nhigh 2\nmax 3\noom 1\noom_kill 1\n");
    w(
        "io.stat",
        "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2 rios=1 wios=1\n",
    );
    w("pids.current", "2\n");
    let s = cg.stats().unwrap();
    assert_eq!(
        s,
        Stats {
            cpu_usage_usec: Some(1500),
            cpu_user_usec: Some(1000),
            cpu_system_usec: Some(500),
            memory_current: Some(4096),
            memory_peak: Some(8192),
            io_read_bytes: Some(101),
            io_write_bytes: Some(202),
            pids_current: Some(2),
            oom_events: Some(1),
            oom_kills: Some(1),
        }
    );
    // Without controllers only cpu.stat is there.
    let f = fixture("", TestFs::default());
    let s = f.root.create("c").unwrap().stats().unwrap();
    assert_eq!(s.memory_current, None);
    assert_eq!(s.cpu_usage_usec, Some(0));
}

#[test]
fn kill_uses_cgroup_kill() {
    let f = fixture(ALL, TestFs::default());
    let cg = f.root.create("c").unwrap();
    cg.add_pid(7).unwrap();
    cg.kill().unwrap();
    assert_eq!(
        fs::read_to_string(cg.path().join("cgroup.kill")).unwrap(),
        "1"
    );
    assert!(f.root.fs.signals.borrow().is_empty());
}

#[test]
fn kill_falls_back_to_signalling_every_process() {
    let mut fs_ = TestFs {
        no_cgroup_kill: true,
        ..TestFs::default()
    };
    let f = fixture(ALL, fs_.clone());
    fs_.kill_removes_under = Some(f.root.path().to_path_buf());
    let root = CgroupRoot::with_fs(fs_.clone(), f.root.path());
    let cg = root.create("c").unwrap();
    let child = root.create("c/sub").unwrap();
    cg.add_pid(7).unwrap();
    child.add_pid(8).unwrap();
    cg.kill().unwrap();
    assert_eq!(*fs_.signals.borrow(), vec![7, 8]);
    assert_eq!(
        fs::read_to_string(cg.path().join("cgroup.freeze")).unwrap(),
        "0",
        "thawed again"
    );
    cg.remove().unwrap();
    assert!(!cg.path().exists());
}

#[test]
fn kill_reports_survivors() {
    let fs_ = TestFs {
        no_cgroup_kill: true,
        ..TestFs::default()
    };
    let f = fixture(ALL, fs_.clone());
    let cg = f.root.create("c").unwrap();
    cg.add_pid(9).unwrap();
    assert!(matches!(cg.kill(), Err(CgroupError::Survivors { pids, .. }) if pids == vec![9]));
    assert_eq!(fs_.signals.borrow().len(), KILL_ROUNDS);
}

#[test]
fn remove_is_deepest_first_and_idempotent() {
    let f = fixture(ALL, TestFs::default());
    let cg = f.root.create("a").unwrap();
    f.root.create("a/b/c").unwrap();
    cg.remove().unwrap();
    assert!(!cg.path().exists());
    cg.remove().unwrap();
    assert!(f.root.path().exists());
}

#[test]
fn populated_reads_cgroup_events() {
    let f = fixture(ALL, TestFs::default());
    let cg = f.root.create("c").unwrap();
    assert!(!cg.is_populated().unwrap());
    fs::write(cg.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    assert!(cg.is_populated().unwrap());
}
