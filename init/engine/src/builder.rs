//! Turns a unit's container settings, merged with its image's configuration, into an OCI
//! spec with Berth's defaults: Docker's default capabilities, seccomp profile and device
//! rules, the usual mounts, masked and read-only kernel paths, namespaces by network mode.
//! Resource limits go into the typed `linux.resources` fields (`Resources::to_oci`), which
//! berth-runtime reads back with `Resources::from_oci`.

use berth_runtime::cgroups::{DeviceRules, Resources};
use berth_runtime::seccomp::default_profile;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::collections::{BTreeMap, HashSet};
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
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let cap_names: Vec<String> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
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
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()
                .map_err(spec_err)?,
        )
        // No rlimits: the container inherits the supervisor's (raising a hard limit needs
        // CAP_SYS_RESOURCE, which the supervisor may not have either).
        .rlimits(Vec::new())
        .no_new_privileges(true)
        .build()
        .map_err(spec_err)?;

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
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
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ];
    for v in &s.volumes {
        if !v.destination.starts_with('/') {
            return Err(BuildError::VolumeDestination(v.destination.clone()));
        }
        let src = v.source.display().to_string();
        mounts.push(mount(
            &v.destination,
            "bind",
            &src,
            &[
                "rbind",
                "nosuid",
                "nodev",
                if v.read_only { "ro" } else { "rw" },
            ],
        )?);
    }

    let mut ns_types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
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
    limits
        .devices
        .get_or_insert_with(DeviceRules::container_default);
    let resources = limits.to_oci().map_err(spec_err)?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .seccomp(default_profile(&cap_names));
    linux = linux.resources(resources);
    if let Some(cg) = &s.cgroup {
        linux = linux.cgroups_path(PathBuf::from(cg));
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
