//! Boot: the named phases that run before supervision starts. PID 1 and host mode run
//! different lists; everything after them (loading units, the event loop) is shared.
//!
//! [`extensions`] mounts the system extensions of the slot the root is on. The storage phases
//! ([`storage`]: /tmp, the state partition, the config drive) run only on a machine booted
//! from a Berth disk; marking the boot good, the ACPI power button and the
//! watchdog live in `crate::platform`, on the event loop.

pub mod code_pages;
pub mod emergency;
pub mod extensions;
pub mod mounts;
pub mod net;
pub mod rcu;
pub mod storage;

use std::path::{Path, PathBuf};

use log::{info, warn};
use nix::errno::Errno;

use crate::launch::cgroup::FsCgroups;
use crate::machine::{self, MachineConfig};
use crate::platform::watchdog::{Watchdog, WATCHDOG_DEVICE, WATCHDOG_TIMEOUT};
use crate::tomlfile::Diagnostics;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot mount {target}: {source}")]
    Mount { target: String, source: Errno },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("machine config: {0}")]
    Config(Diagnostics),
    #[error("{what}: {source}")]
    Sys { what: &'static str, source: Errno },
    #[error("loopback: {0}")]
    Loopback(std::io::Error),
    #[error("state partition: {0}")]
    State(#[from] crate::disk::statefs::StateError),
    #[error("config drive: {0}")]
    ConfigDrive(#[from] crate::disk::configdrive::ConfigDriveError),
    #[error("system extensions: {0}")]
    Extensions(#[from] extensions::ExtensionError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// berth-init is PID 1 of a Berth machine.
    Pid1,
    /// `--root-dir DIR`: a supervisor for tests and development, as a child subreaper.
    Host { root: PathBuf },
}

/// Where things live in this mode.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Unit directories in override order (built-in first, user units last).
    pub unit_dirs: Vec<PathBuf>,
    pub state: PathBuf,
    pub logs: PathBuf,
    pub api_socket: PathBuf,
    pub machine_config: PathBuf,
    /// The berth-runtime binary (image pulls, prunes).
    pub runtime_bin: PathBuf,
    /// The program update jobs run as `PROGRAM update-apply SOURCE …`: berth-init itself in
    /// PID 1; in host mode only `$BERTH_UPDATER` (a stand-in for development and tests),
    /// else none and updates are refused.
    pub updater: Option<PathBuf>,
}

impl Paths {
    pub fn for_mode(mode: &Mode) -> Paths {
        match mode {
            Mode::Pid1 => {
                let state = PathBuf::from("/var/lib/berth");
                Paths {
                    unit_dirs: vec!["/usr/lib/berth/units".into(), state.join("units")],
                    logs: state.join("logs"),
                    machine_config: state.join("machine.toml"),
                    api_socket: "/run/berth/api.sock".into(),
                    runtime_bin: "/usr/bin/berth-runtime".into(),
                    // Re-executes the running binary (resolved by the kernel at exec).
                    updater: Some("/proc/self/exe".into()),
                    state,
                }
            }
            Mode::Host { root } => {
                let state = root.join("state");
                Paths {
                    unit_dirs: vec![root.join("units")],
                    logs: state.join("logs"),
                    machine_config: state.join("machine.toml"),
                    api_socket: root.join("api.sock"),
                    runtime_bin: host_runtime_bin(),
                    updater: std::env::var_os("BERTH_UPDATER")
                        .filter(|v| !v.is_empty())
                        .map(PathBuf::from),
                    state,
                }
            }
        }
    }
}

/// Host mode's berth-runtime: `$BERTH_RUNTIME`, else the one beside this executable.
fn host_runtime_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BERTH_RUNTIME") {
        return bin.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("berth-runtime")))
        .unwrap_or_else(|| PathBuf::from("berth-runtime"))
}

/// What the boot phases find out and set up for supervision.
pub struct Boot {
    pub mode: Mode,
    pub paths: Paths,
    pub machine: MachineConfig,
    pub cgroups: Option<FsCgroups>,
    pub hostname: String,
    /// Armed by the second boot phase on a machine booted from a Berth disk; fed by the
    /// event loop from then on (`crate::platform`).
    pub watchdog: Option<Watchdog>,
    /// System extensions mounted from the root's slot (`extensions`).
    pub extensions: Vec<extensions::MountedExtension>,
    /// RCU grace periods expedited until the boot settles (`rcu`).
    pub rcu: Option<rcu::Expedited>,
}

impl Boot {
    pub fn new(mode: Mode) -> Boot {
        let paths = Paths::for_mode(&mode);
        Boot {
            mode,
            paths,
            machine: MachineConfig::default(),
            cgroups: None,
            hostname: String::new(),
            watchdog: None,
            extensions: Vec::new(),
            rcu: None,
        }
    }
}

pub struct Phase {
    pub name: &'static str,
    /// A fatal phase's failure ends the boot (PID 1: emergency shell); others are logged.
    pub fatal: bool,
    pub run: fn(&mut Boot) -> Result<(), BootError>,
}

const fn phase(
    name: &'static str,
    fatal: bool,
    run: fn(&mut Boot) -> Result<(), BootError>,
) -> Phase {
    Phase { name, fatal, run }
}

/// PID 1, top to bottom.
pub fn pid1_phases() -> Vec<Phase> {
    vec![
        phase("mount-kernel-filesystems", true, mount_kernel_filesystems),
        phase("expedite-grace-periods", false, expedite_grace_periods),
        phase("mount-extensions", false, extensions::mount_extensions),
        phase("arm-watchdog", false, arm_watchdog),
        phase("enable-cgroup-controllers", false, enable_cgroups),
        phase("disable-ctrl-alt-del", false, disable_ctrl_alt_del),
        phase("raise-fd-limit", false, raise_fd_limit),
        phase("mount-tmp", false, storage::mount_tmp),
        phase(
            "mount-state-partition",
            true,
            storage::mount_state_partition,
        ),
        phase("grow-state-partition", false, storage::grow_state_partition),
        phase("prepare-state", true, prepare_state),
        phase("read-config-drive", false, storage::read_config_drive),
        phase("read-machine-config", false, read_machine_config),
        phase("set-hostname", false, set_hostname),
        phase("forward-logs", false, forward_logs),
        phase("loopback-up", false, loopback_up),
    ]
}

/// Host mode: the same supervisor minus early boot.
pub fn host_phases() -> Vec<Phase> {
    vec![
        phase("become-subreaper", true, become_subreaper),
        phase("raise-fd-limit", false, raise_fd_limit),
        phase("prepare-state", true, prepare_state),
        phase("read-machine-config", false, read_machine_config),
        phase("read-hostname", false, read_hostname),
        phase("forward-logs", false, forward_logs),
    ]
}

/// The hardware watchdog is armed first thing (as soon as /dev is there), so that a boot that
/// hangs anywhere after it resets the machine; only on a Berth disk (a PID 1 in a test's
/// namespaces must not arm the host's watchdog).
fn arm_watchdog(boot: &mut Boot) -> Result<(), BootError> {
    if crate::platform::bootgood::booted_slot_of_this_machine().is_none() {
        return Ok(());
    }
    match Watchdog::open(Path::new(WATCHDOG_DEVICE), WATCHDOG_TIMEOUT) {
        Ok(Some(w)) => {
            info!("watchdog armed: {}s", w.timeout.as_secs());
            boot.watchdog = Some(w);
        }
        Ok(None) => info!("no hardware watchdog"),
        Err(e) => warn!("watchdog: {e}"),
    }
    Ok(())
}

/// See [`rcu`]: only on a Berth disk (the switch is the whole kernel's, and a PID 1 in a
/// test's namespaces must not turn it on the host).
fn expedite_grace_periods(boot: &mut Boot) -> Result<(), BootError> {
    if crate::platform::bootgood::booted_slot_of_this_machine().is_none() {
        return Ok(());
    }
    boot.rcu = rcu::expedite(Path::new(rcu::KNOB)).map_err(|source| BootError::Io {
        what: "write",
        path: rcu::KNOB.into(),
        source,
    })?;
    if boot.rcu.is_some() {
        info!("RCU grace periods expedited until the boot settles");
    }
    Ok(())
}

impl Boot {
    /// Stops the watchdog before PID 1 settles in the emergency shell (a person at the
    /// console must not be reset every 30 s).
    pub fn disarm_watchdog(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.disarm();
        }
    }
}

/// Runs `phases` in order. Returns the first fatal failure with its phase name.
pub fn run_phases(phases: &[Phase], boot: &mut Boot) -> Result<(), (&'static str, BootError)> {
    for p in phases {
        match (p.run)(boot) {
            Ok(()) => info!("boot: {} done", p.name),
            Err(e) if p.fatal => return Err((p.name, e)),
            Err(e) => warn!("boot: {} failed: {e}", p.name),
        }
    }
    Ok(())
}

fn mount_kernel_filesystems(_: &mut Boot) -> Result<(), BootError> {
    mounts::mount_all(&mut mounts::SysMounter, &mounts::early_mounts())
}

fn enable_cgroups(boot: &mut Boot) -> Result<(), BootError> {
    boot.cgroups = FsCgroups::detect(Path::new("/sys/fs/cgroup"));
    if boot.cgroups.is_none() {
        warn!("cgroup v2 controllers unavailable: units run without resource limits");
    }
    Ok(())
}

fn disable_ctrl_alt_del(_: &mut Boot) -> Result<(), BootError> {
    // With CAD off the kernel sends SIGINT to PID 1 instead of rebooting at once.
    nix::sys::reboot::set_cad_enabled(false).map_err(|source| BootError::Sys {
        what: "ctrl-alt-del",
        source,
    })
}

fn raise_fd_limit(_: &mut Boot) -> Result<(), BootError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| BootError::Sys {
        what: "getrlimit",
        source,
    })?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|source| BootError::Sys {
        what: "setrlimit",
        source,
    })
}

fn become_subreaper(_: &mut Boot) -> Result<(), BootError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|source| BootError::Sys {
        what: "PR_SET_CHILD_SUBREAPER",
        source,
    })
}

fn prepare_state(boot: &mut Boot) -> Result<(), BootError> {
    let mut dirs = vec![boot.paths.state.clone(), boot.paths.logs.clone()];
    if let Some(user_units) = boot.paths.unit_dirs.last() {
        dirs.push(user_units.clone());
    }
    if let Some(parent) = boot.paths.api_socket.parent() {
        dirs.push(parent.to_path_buf());
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).map_err(|source| BootError::Io {
            what: "cannot create",
            path: dir,
            source,
        })?;
    }
    Ok(())
}

fn read_machine_config(boot: &mut Boot) -> Result<(), BootError> {
    boot.machine = machine::load(&boot.paths.machine_config).map_err(BootError::Config)?;
    Ok(())
}

fn set_hostname(boot: &mut Boot) -> Result<(), BootError> {
    let name = boot
        .machine
        .hostname
        .clone()
        .unwrap_or_else(|| "berth".to_string());
    nix::unistd::sethostname(&name).map_err(|source| BootError::Sys {
        what: "sethostname",
        source,
    })?;
    boot.hostname = name;
    Ok(())
}

fn read_hostname(boot: &mut Boot) -> Result<(), BootError> {
    // Host mode never changes the host's name; it reports the configured one, if any.
    boot.hostname = match &boot.machine.hostname {
        Some(h) => h.clone(),
        None => nix::unistd::gethostname()
            .map_err(|source| BootError::Sys {
                what: "gethostname",
                source,
            })?
            .to_string_lossy()
            .into_owned(),
    };
    Ok(())
}

/// Remote syslog forwarding from `[syslog]` of the machine config, as early as the config is
/// known (boot messages before it stay in the kernel log).
fn forward_logs(boot: &mut Boot) -> Result<(), BootError> {
    if let Some(target) = &boot.machine.syslog {
        crate::log::forward_to(target, &boot.hostname);
        info!("forwarding logs to syslog at {}", target.addr);
    }
    Ok(())
}

fn loopback_up(_: &mut Boot) -> Result<(), BootError> {
    net::loopback_up().map_err(BootError::Loopback)
}
