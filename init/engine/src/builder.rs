//! Turns a unit's container settings, merged with its image's configuration, into an OCI
//! spec with Berth's defaults: Docker's default capabilities, seccomp profile and device
//! rules, the usual mounts, masked and read-only kernel paths, namespaces by network and pid
//! mode. A privileged container drops those restrictions as Docker's `--privileged` does.
//! Resource limits go into the typed `linux.resources` fields (`Resources::to_oci`), which
//! berth-runtime reads back with `Resources::from_oci`.

use berth_runtime::cgroups::{DeviceRules, Resources};
use berth_runtime::process::ALL_CAPABILITIES;
use berth_runtime::seccomp::default_profile;
use berth_runtime::syscall::capbset_read;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The sysctl below which binding a port needs CAP_NET_BIND_SERVICE.
const UNPRIVILEGED_PORT_START: &str = "net.ipv4.ip_unprivileged_port_start";

const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no command: the unit has no `command` and the image no entrypoint or cmd")]
    NoCommand,
    #[error("user `{user}`: {reason}")]
    User { user: String, reason: String },
    #[error("volume destination `{0}` must be an absolute path")]
    VolumeDestination(String),
    #[error("building the spec: {0}")]
    Spec(String),
}

fn spec_err(e: impl std::fmt::Display) -> BuildError {
    BuildError::Spec(e.to_string())
}

/// How the container is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Its own network namespace, attached to the `berth0` bridge by [`crate::net`].
    #[default]
    Bridge,
    /// The host's network namespace.
    Host,
    /// Its own network namespace with only loopback.
    None,
}

/// Whose pid namespace the container's processes live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PidMode {
    /// Its own: its init is pid 1 there, and the rest dies with it.
    #[default]
    Container,
    /// The host's: it sees and can signal every process of the host.
    Host,
}

/// The capabilities of `berth_runtime::process::ALL_CAPABILITIES` whose number `held` says
/// are there.
fn capabilities_held(held: impl Fn(usize) -> bool) -> Vec<Capability> {
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(n, _)| held(*n))
        .map(|(_, c)| *c)
        .collect()
}

/// What a privileged container gets: every capability the kernel knows that this process
/// can still hand on (its bounding set), as Docker's `--privileged` does. Asking for more
/// would only make the container's init fail where the supervisor itself runs with a
/// reduced bounding set (inside another container, say).
pub fn privileged_capabilities() -> Vec<Capability> {
    // Past the kernel's last capability the kernel answers EINVAL: not held.
    capabilities_held(|n| capbset_read(n as u64).unwrap_or(false))
}

/// What the image says about running it: the defaults a unit overrides, taken from the
/// `config` of the OCI image config (`berth_store::spec::ImageConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
}

/// A host directory mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
    pub propagation: Propagation,
}

/// Which way mounts made later under a volume travel. The source must be a shared mount on
/// the host for either to reach anything (the launcher makes it one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Private,
    /// Both ways; the container's root propagation becomes rshared too, as Docker does, so
    /// its copy of the host's mounts stays a peer of them.
    Rshared,
    /// From the host into the container.
    Rslave,
}

/// A unit's `[container]` and `[resources]`, resolved to host paths.
#[derive(Debug, Clone, Default)]
pub struct ContainerSettings {
    pub hostname: String,
    /// Replaces the image's cmd (the entrypoint stays), as `docker run IMAGE COMMAND` does.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub network: NetworkMode,
    pub volumes: Vec<Volume>,
    pub read_only: bool,
    /// Every capability and device, the host's /dev, writable /sys and /sys/fs/cgroup, no
    /// seccomp filter, no masked or read-only paths, no_new_privileges off.
    pub privileged: bool,
    pub pid: PidMode,
    /// The unit's cgroup limits (berth-init's `launch::limits`, shared with system units).
    pub resources: Resources,
    pub image: ImageDefaults,
    /// The container's cgroup below the v2 root (`containers/<unit>`, see berth-init's
    /// container launcher).
    pub cgroup: Option<String>,
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`) against the root filesystem's
/// /etc/passwd and /etc/group: (uid, gid, additional gids).
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), BuildError> {
    let err = |reason: &str| BuildError::User {
        user: user.to_string(),
        reason: reason.to_string(),
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let entries = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(|l| l.split(':').map(String::from).collect())
            .collect()
    };
    let passwd = entries(&passwd);
    let group = entries(&group);
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (
            uid,
            passwd
                .iter()
                .find(|f| f.len() > 3 && f[2] == u)
                .and_then(|f| f[3].parse().ok()),
        ),
        Err(_) => {
            let f = passwd
                .iter()
                .find(|f| f.len() > 3 && f[0] == u)
                .ok_or_else(|| err("no such user in the image's /etc/passwd"))?;
            (
                f[2].parse().map_err(|_| err("bad uid in /etc/passwd"))?,
                f[3].parse().ok(),
            )
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .iter()
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| err("no such group in the image's /etc/group"))?,
        },
        None => primary.unwrap_or(0),
    };
    // Supplementary groups of a named user.
    let name = passwd
        .iter()
        .find(|f| f.len() > 2 && f[2] == uid.to_string())
        .map(|f| f[0].clone());
    let extra = match name {
        Some(name) => group
            .iter()
            .filter(|f| f.len() > 3 && f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        None => Vec::new(),
    };
    Ok((uid, gid, extra))
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, BuildError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

/// The spec for a container whose root filesystem is `rootfs`.
pub fn build_spec(s: &ContainerSettings, rootfs: &Path) -> Result<Spec, BuildError> {
    let mut args = s.image.entrypoint.clone();
    args.extend(if s.command.is_empty() {
        s.image.cmd.clone()
    } else {
        s.command.clone()
    });
    if args.is_empty() {
        return Err(BuildError::NoCommand);
    }
    // Image env first, unit env overrides by key; keep the image's order.
    let mut env: Vec<(String, String)> = Vec::new();
    for e in &s.image.env {
        if let Some((k, v)) = e.split_once('=') {
            env.retain(|(x, _)| x != k);
            env.push((k.to_string(), v.to_string()));
        }
    }
    for (k, v) in &s.env {
        env.retain(|(x, _)| x != k);
        env.push((k.clone(), v.clone()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(
            0,
            ("PATH".into(), berth_runtime::process::DEFAULT_PATH.into()),
        );
    }
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let user = s
        .user
        .as_deref()
        .or(s.image.user.as_deref())
        .filter(|u| !u.is_empty())
        .unwrap_or("0");
    let (uid, gid, extra) = resolve_user(rootfs, user)?;
    let cap_list = if s.privileged {
        privileged_capabilities()
    } else {
        DEFAULT_CAPABILITIES.to_vec()
    };
    let cap_names: Vec<String> = cap_list.iter().map(|c| format!("CAP_{c}")).collect();
    let caps: HashSet<Capability> = cap_list.into_iter().collect();
    // Nothing inheritable or ambient (as Docker since CVE-2022-24769): a process running as
    // another user than root keeps no capability, and a program's inheritable file
    // capabilities grant nothing on exec.
    let cap_sets = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new());
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(env)
        .cwd(
            s.image
                .workdir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
        )
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .additional_gids(extra)
                .build()
                .map_err(spec_err)?,
        )
        .capabilities(cap_sets.build().map_err(spec_err)?)
        // No rlimits: the container inherits the supervisor's (raising a hard limit needs
        // CAP_SYS_RESOURCE, which the supervisor may not have either).
        .rlimits(Vec::new())
        .no_new_privileges(!s.privileged)
        .build()
        .map_err(spec_err)?;

    // Kernel interfaces a privileged container may change: read-write for it only.
    let sys_mode = if s.privileged { "rw" } else { "ro" };
    let mut mounts = vec![mount(
        "/proc",
        "proc",
        "proc",
        &["nosuid", "noexec", "nodev"],
    )?];
    if s.privileged {
        // The host's device nodes, also those that appear later (a disk, a loop device).
        // berth-runtime then creates no nodes or links of its own in it.
        mounts.push(mount("/dev", "bind", "/dev", &["rbind", "nosuid"])?);
    } else {
        mounts.push(mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?);
    }
    // Over the host's /dev too, /dev/pts and /dev/shm are the container's own, as in
    // Docker's privileged containers: its terminals stay apart from the host's (the host's
    // /dev/ptmx node opens the devpts mounted beside it) and its shared memory is its IPC
    // namespace's. The container's mount namespace is a slave of the host's: neither covers
    // the host's own. /dev/mqueue, which lists only the mounting IPC namespace's queues, is
    // left out there: the host's /dev need not have that directory (a Berth machine's has
    // not), creating it would write into the host's /dev, and mq_open(3) needs no mount.
    mounts.push(mount(
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    )?);
    mounts.push(mount(
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    )?);
    if !s.privileged {
        mounts.push(mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?);
    }
    mounts.push(mount(
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", sys_mode],
    )?);
    mounts.push(mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", sys_mode],
    )?);
    for v in &s.volumes {
        if !v.destination.starts_with('/') {
            return Err(BuildError::VolumeDestination(v.destination.clone()));
        }
        let src = v.source.display().to_string();
        let mut options = vec![
            "rbind",
            "nosuid",
            "nodev",
            if v.read_only { "ro" } else { "rw" },
        ];
        match v.propagation {
            Propagation::Private => {}
            Propagation::Rshared => options.push("rshared"),
            Propagation::Rslave => options.push("rslave"),
        }
        mounts.push(mount(&v.destination, "bind", &src, &options)?);
    }

    let mut ns_types = vec![
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    // Without a pid namespace of its own nothing dies with the container's init; the
    // runtime kills the rest through the container's cgroup, as runc does.
    if s.pid == PidMode::Container {
        ns_types.insert(0, LinuxNamespaceType::Pid);
    }
    if s.network != NetworkMode::Host {
        ns_types.push(LinuxNamespaceType::Network);
    }
    let namespaces = ns_types
        .into_iter()
        .map(|t| {
            LinuxNamespaceBuilder::default()
                .typ(t)
                .build()
                .map_err(spec_err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The typed OCI fields (`unified` only for what has none), in the form the runtime's
    // `Resources::from_oci` reads back into the same cgroup values.
    let mut limits = s.resources.clone();
    limits.devices.get_or_insert_with(|| {
        if s.privileged {
            DeviceRules::allow_all()
        } else {
            DeviceRules::container_default()
        }
    });
    let resources = limits.to_oci().map_err(spec_err)?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources);
    // Set either way: the OCI defaults mask and protect paths of their own.
    let paths = |list: &[&str]| list.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    if s.privileged {
        linux = linux.masked_paths(Vec::new()).readonly_paths(Vec::new());
    } else {
        linux = linux
            .masked_paths(paths(&MASKED_PATHS))
            .readonly_paths(paths(&READONLY_PATHS))
            .seccomp(default_profile(&cap_names));
    }
    if let Some(cg) = &s.cgroup {
        linux = linux.cgroups_path(PathBuf::from(cg));
    }
    if s.volumes
        .iter()
        .any(|v| v.propagation == Propagation::Rshared)
    {
        linux = linux.rootfs_propagation("rshared".to_string());
    }
    if s.network != NetworkMode::Host {
        // In its own network namespace any user may bind any port (as with Docker): without
        // ambient capabilities, a server running as another user than root could not take
        // port 80 of its own namespace.
        let sysctl = HashMap::from([(UNPRIVILEGED_PORT_START.to_string(), "0".to_string())]);
        linux = linux.sysctl(sysctl);
    }
    SpecBuilder::default()
        .version("1.2.0")
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(s.read_only)
                .build()
                .map_err(spec_err)?,
        )
        .hostname(s.hostname.clone())
        .mounts(mounts)
        .process(process)
        .linux(linux.build().map_err(spec_err)?)
        .build()
        .map_err(spec_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_runtime::cgroups::{CpuMax, Limit};

    fn rootfs() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "berth-builder-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnginx:x:101:101::/var/cache/nginx:/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/group"),
            "root:x:0:\nnginx:x:101:\nwww:x:33:nginx\n",
        )
        .unwrap();
        dir
    }

    /// The cgroup files the runtime writes for a built spec: file, value, and whether a
    /// missing controller may skip it.
    fn cgroup_writes(spec: &Spec) -> Vec<(String, String, bool)> {
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let mut writes: Vec<_> = Resources::from_oci(res)
            .unwrap()
            .writes()
            .unwrap()
            .into_iter()
            .map(|w| (w.file, w.value, w.optional))
            .collect();
        writes.sort();
        writes
    }

    #[test]
    fn limits_go_into_the_typed_oci_fields() {
        let r = rootfs();
        let w = |f: &str, v: &str, optional| (f.to_string(), v.to_string(), optional);
        let mut s = ContainerSettings {
            command: vec!["sh".into()],
            resources: Resources {
                memory_max: Some(Limit::Value(64 << 20)),
                cpu_max: Some(CpuMax::from_cpus(0.5).unwrap()),
                pids_max: Some(Limit::Value(128)),
                ..Resources::default()
            },
            ..ContainerSettings::default()
        };
        let spec = build_spec(&s, &r).unwrap();
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(64 << 20));
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
        assert_eq!(cpu.shares(), None, "no cpu.weight is asked for");
        assert_eq!(res.pids().unwrap().limit(), 128);
        assert!(res.unified().is_none());
        // The values of the cgroup files, as they were when they travelled as strings.
        assert_eq!(
            cgroup_writes(&spec),
            [
                w("cpu.max", "50000 100000", false),
                w("memory.max", "67108864", false),
                w("pids.max", "128", false),
            ]
        );

        // No limit: -1 in OCI, `max` in the files, skipped where the controller is missing.
        s.resources = Resources {
            memory_max: Some(Limit::Max),
            cpu_max: Some(CpuMax {
                quota: None,
                period: CpuMax::DEFAULT_PERIOD,
            }),
            pids_max: Some(Limit::Max),
            ..Resources::default()
        };
        let spec = build_spec(&s, &r).unwrap();
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(-1));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(-1));
        assert_eq!(res.pids().unwrap().limit(), -1);
        assert!(res.unified().is_none());
        assert_eq!(
            cgroup_writes(&spec),
            [
                w("cpu.max", "max 100000", true),
                w("memory.max", "max", true),
                w("pids.max", "max", true),
            ]
        );

        // Nothing at all: no limit fields, the default device rules.
        s.resources = Resources::default();
        let spec = build_spec(&s, &r).unwrap();
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert!(res.memory().is_none() && res.cpu().is_none() && res.pids().is_none());
        assert!(res.unified().is_none() && res.devices().is_some());
        assert!(cgroup_writes(&spec).is_empty());
        std::fs::remove_dir_all(&r).unwrap();
    }

    fn namespace_types(spec: &Spec) -> Vec<LinuxNamespaceType> {
        let linux = spec.linux().as_ref().unwrap();
        linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect()
    }

    /// (type, source, options) of the mount at `dest`.
    fn mount_at(spec: &Spec, dest: &str) -> Option<(String, String, Vec<String>)> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new(dest))
            .map(|m| {
                (
                    m.typ().clone().unwrap_or_default(),
                    m.source()
                        .as_ref()
                        .map(|s| s.display().to_string())
                        .unwrap_or_default(),
                    m.options().clone().unwrap_or_default(),
                )
            })
    }

    fn bounding(spec: &Spec) -> HashSet<Capability> {
        let p = spec.process().as_ref().unwrap();
        p.capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap()
    }

    #[test]
    fn defaults_confine_the_container() {
        let r = rootfs();
        let s = ContainerSettings {
            command: vec!["sh".into()],
            ..ContainerSettings::default()
        };
        let spec = build_spec(&s, &r).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(bounding(&spec), DEFAULT_CAPABILITIES.into_iter().collect());
        assert_eq!(p.no_new_privileges(), Some(true));
        assert!(linux.seccomp().is_some());
        assert_eq!(
            linux.masked_paths().as_ref().unwrap().len(),
            MASKED_PATHS.len()
        );
        assert_eq!(
            linux.readonly_paths().as_ref().unwrap().len(),
            READONLY_PATHS.len()
        );
        assert_eq!(mount_at(&spec, "/dev").unwrap().0, "tmpfs");
        assert_eq!(mount_at(&spec, "/dev/mqueue").unwrap().0, "mqueue");
        for dest in ["/sys", "/sys/fs/cgroup"] {
            assert!(
                mount_at(&spec, dest).unwrap().2.contains(&"ro".into()),
                "{dest}"
            );
        }
        assert!(namespace_types(&spec).contains(&LinuxNamespaceType::Pid));
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(
            Resources::from_oci(res).unwrap().devices,
            Some(DeviceRules::container_default())
        );
        std::fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn privileged_lifts_every_restriction() {
        let r = rootfs();
        let s = ContainerSettings {
            command: vec!["sh".into()],
            privileged: true,
            ..ContainerSettings::default()
        };
        let spec = build_spec(&s, &r).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let p = spec.process().as_ref().unwrap();
        let all: HashSet<Capability> = privileged_capabilities().into_iter().collect();
        assert!(all.contains(&Capability::SysAdmin), "{all:?}");
        let c = p.capabilities().as_ref().unwrap();
        for set in [c.bounding(), c.effective(), c.permitted()] {
            assert_eq!(set.as_ref(), Some(&all));
        }
        assert!(c.ambient().as_ref().is_some_and(|a| a.is_empty()));
        assert!(c.inheritable().as_ref().is_some_and(|a| a.is_empty()));
        assert_eq!(p.no_new_privileges(), Some(false));
        assert!(linux.seccomp().is_none());
        assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
        assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
        let (typ, source, options) = mount_at(&spec, "/dev").unwrap();
        assert_eq!((typ.as_str(), source.as_str()), ("bind", "/dev"));
        assert!(options.contains(&"rbind".into()), "{options:?}");
        // Its own terminals and shared memory over the host's /dev; no mqueue directory
        // made in the host's.
        assert_eq!(mount_at(&spec, "/dev/pts").unwrap().0, "devpts");
        assert_eq!(mount_at(&spec, "/dev/shm").unwrap().0, "tmpfs");
        assert!(mount_at(&spec, "/dev/mqueue").is_none());
        for dest in ["/sys", "/sys/fs/cgroup"] {
            let options = mount_at(&spec, dest).unwrap().2;
            assert!(
                options.contains(&"rw".into()) && !options.contains(&"ro".into()),
                "{dest}: {options:?}"
            );
        }
        let res = linux.resources().as_ref().unwrap();
        let devices = Resources::from_oci(res).unwrap().devices.unwrap();
        assert_eq!(devices, DeviceRules::allow_all());
        use berth_runtime::cgroups::devices::{Access, DeviceKind};
        assert!(devices.allows(DeviceKind::Block, 7, 0, Access::ALL));
        // Privileged is not the host's pid namespace: that is a setting of its own.
        assert!(namespace_types(&spec).contains(&LinuxNamespaceType::Pid));
        std::fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn volume_propagation_reaches_the_mount_and_the_root() {
        let r = rootfs();
        let volume = |dest: &str, propagation| Volume {
            source: "/var/lib/berth/kubelet".into(),
            destination: dest.into(),
            read_only: false,
            propagation,
        };
        let mut s = ContainerSettings {
            command: vec!["kubelet".into()],
            privileged: true,
            volumes: vec![
                volume("/var/lib/kubelet", Propagation::Rshared),
                volume("/host", Propagation::Rslave),
                volume("/plain", Propagation::Private),
            ],
            ..ContainerSettings::default()
        };
        let spec = build_spec(&s, &r).unwrap();
        let options = |dest| mount_at(&spec, dest).unwrap().2;
        assert_eq!(options("/var/lib/kubelet").last().unwrap(), "rshared");
        assert_eq!(options("/host").last().unwrap(), "rslave");
        assert_eq!(options("/plain"), ["rbind", "nosuid", "nodev", "rw"]);
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.rootfs_propagation().as_deref(), Some("rshared"));
        // Without a shared volume the runtime's default (rslave) stays.
        s.volumes.remove(0);
        let spec = build_spec(&s, &r).unwrap();
        assert_eq!(spec.linux().as_ref().unwrap().rootfs_propagation(), &None);
        std::fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn nothing_is_inherited_and_an_own_network_namespace_opens_low_ports() {
        let r = rootfs();
        let mut s = ContainerSettings {
            command: vec!["httpd".into()],
            user: Some("33".into()),
            ..ContainerSettings::default()
        };
        for network in [NetworkMode::Bridge, NetworkMode::None, NetworkMode::Host] {
            s.network = network;
            let spec = build_spec(&s, &r).unwrap();
            let c = spec
                .process()
                .as_ref()
                .unwrap()
                .capabilities()
                .clone()
                .unwrap();
            assert_eq!(c.inheritable(), &Some(HashSet::new()), "{network:?}");
            assert_eq!(c.ambient(), &Some(HashSet::new()), "{network:?}");
            assert_eq!(c.effective().as_ref().map(HashSet::len), Some(14));
            let sysctl = spec.linux().as_ref().unwrap().sysctl().clone();
            let port = sysctl.as_ref().and_then(|m| m.get(UNPRIVILEGED_PORT_START));
            if network == NetworkMode::Host {
                // Never the host's own setting.
                assert_eq!(sysctl, None);
            } else {
                assert_eq!(port.map(String::as_str), Some("0"), "{network:?}");
            }
        }
        std::fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn privileged_capabilities_are_those_the_kernel_and_this_process_have() {
        // A kernel up to CAP_AUDIT_READ (37).
        let old = capabilities_held(|n| n <= 37);
        assert_eq!(old.len(), 38);
        assert!(old.contains(&Capability::AuditRead) && !old.contains(&Capability::Bpf));
        // A bounding set without CAP_SYS_RESOURCE (24).
        let reduced = capabilities_held(|n| n != 24);
        assert_eq!(reduced.len(), ALL_CAPABILITIES.len() - 1);
        assert!(!reduced.contains(&Capability::SysResource));
        // This process: what /proc says of its bounding set.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let bnd = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
            .unwrap();
        let ours = privileged_capabilities();
        assert_eq!(ours, capabilities_held(|n| bnd & (1 << n) != 0));
    }

    #[test]
    fn pid_host_leaves_out_the_pid_namespace() {
        let r = rootfs();
        let mut s = ContainerSettings {
            command: vec!["sh".into()],
            pid: PidMode::Host,
            ..ContainerSettings::default()
        };
        let spec = build_spec(&s, &r).unwrap();
        let types = namespace_types(&spec);
        assert!(!types.contains(&LinuxNamespaceType::Pid), "{types:?}");
        for t in [
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Cgroup,
            LinuxNamespaceType::Network,
        ] {
            assert!(types.contains(&t), "{t:?} in {types:?}");
        }
        // Nothing else changes: still confined.
        assert_eq!(bounding(&spec).len(), DEFAULT_CAPABILITIES.len());
        assert!(spec.linux().as_ref().unwrap().seccomp().is_some());
        s.network = NetworkMode::Host;
        s.privileged = true;
        let types = namespace_types(&build_spec(&s, &r).unwrap());
        assert_eq!(
            types,
            [
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Cgroup
            ]
        );
        std::fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn users_resolve_by_name_and_number() {
        let r = rootfs();
        assert_eq!(resolve_user(&r, "nginx").unwrap(), (101, 101, vec![33]));
        assert_eq!(resolve_user(&r, "nginx:www").unwrap(), (101, 33, vec![]));
        assert_eq!(resolve_user(&r, "101:101").unwrap(), (101, 101, vec![33]));
        assert_eq!(resolve_user(&r, "5000").unwrap(), (5000, 0, vec![]));
        assert!(resolve_user(&r, "nobody-here")
            .unwrap_err()
            .to_string()
            .contains("nobody-here"));
        assert!(resolve_user(&r, "nginx:nogroup").is_err());
        std::fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn settings_merge_with_the_image_config() {
        let r = rootfs();
        let mut s = ContainerSettings {
            hostname: "web".into(),
            command: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
            env: [
                ("TZ".to_string(), "UTC".to_string()),
                ("A".to_string(), "unit".to_string()),
            ]
            .into_iter()
            .collect(),
            user: Some("nginx".into()),
            read_only: true,
            volumes: vec![Volume {
                source: "/var/lib/berth/volumes/data".into(),
                destination: "/data".into(),
                read_only: true,
                propagation: Propagation::Private,
            }],
            resources: Resources {
                memory_max: Some(Limit::Value(64 << 20)),
                pids_max: Some(Limit::Value(128)),
                ..Resources::default()
            },
            image: ImageDefaults {
                entrypoint: vec!["/docker-entrypoint.sh".into()],
                cmd: vec!["ignored".into()],
                env: vec!["PATH=/usr/sbin:/usr/bin".into(), "A=image".into()],
                user: Some("root".into()),
                workdir: Some("/srv".into()),
            },
            cgroup: Some("/berth/web".into()),
            ..ContainerSettings::default()
        };
        let spec = build_spec(&s, &r).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(
            p.args().as_ref().unwrap(),
            &["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]
        );
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["PATH=/usr/sbin:/usr/bin", "A=unit", "TZ=UTC"]
        );
        assert_eq!((p.user().uid(), p.user().gid()), (101, 101));
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!(
            p.capabilities()
                .as_ref()
                .unwrap()
                .bounding()
                .as_ref()
                .unwrap()
                .len(),
            14
        );
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some());
        assert!(linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network));
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(64 << 20));
        assert_eq!(res.pids().unwrap().limit(), 128);
        assert!(res.cpu().is_none() && res.unified().is_none());
        let data = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .unwrap();
        assert!(data.options().as_ref().unwrap().contains(&"ro".to_string()));
        // The spec round-trips through the runtime's own conversion, device rules included:
        // every device denied, then the usual ones allowed.
        let back = Resources::from_oci(linux.resources().as_ref().unwrap()).unwrap();
        assert_eq!(back.devices, Some(DeviceRules::container_default()));
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert!(!devices[0].allow() && devices[0].access().as_deref() == Some("rwm"));
        assert!(devices
            .iter()
            .any(|d| d.allow() && d.major() == Some(1) && d.minor() == Some(3)));

        s.network = NetworkMode::Host;
        s.command.clear();
        let spec = build_spec(&s, &r).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["/docker-entrypoint.sh", "ignored"]
        );
        assert!(!spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network));
        s.image = ImageDefaults::default();
        assert!(matches!(build_spec(&s, &r), Err(BuildError::NoCommand)));
        std::fs::remove_dir_all(&r).unwrap();
    }
}
