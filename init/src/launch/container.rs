//! The container launcher: units with an `image`. Starting one is a preparation step and a
//! release. The preparation runs in a forked task (see [`super::task`]), so PID 1 never
//! blocks on it and never touches the runtime's code and memory: it pulls the image when
//! missing (`berth-runtime image pull`, output into the unit log), mounts the root (an overlay
//! of the image's layers and the container's own upper directory under
//! `state/containers/<unit>/`, or on PID 1's tmpfs for a read-only root), builds the OCI spec
//! from the unit merged with the image config, creates the container (its init waits on the
//! exec FIFO), and attaches its network. The task then exits and the container's init becomes
//! PID 1's child. The release, in PID 1, opens the exec FIFO: the init execs the unit's
//! program, and the unit is running. Health checks exec inside the container and cleanup
//! deletes the container, its network and its mount, both in tasks too.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_engine::builder::{self, build_spec, ContainerSettings, ImageDefaults, Volume};
use berth_engine::net::{self, BridgeNetwork};
use berth_runtime::state::EXEC_FIFO;
use berth_runtime::{trace, Bundle, CreateOptions, ExecOptions, Runtime, StartMode};
use berth_store::fsutil::private_dir;
use berth_store::registry::Reference;
use berth_store::Store;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::limits::limits;
use super::process::{set_nonblocking, signal_pid};
use super::pull::pull_command;
use super::removal;
use super::root_layers;
use super::task::{at_idle_priority, fork_task};
use super::{LaunchError, Launcher, Spawned, Step};
use crate::unit::model::{NetworkMode, PidMode};
use crate::unit::value::{Propagation, UserSpec, VolumeSource};
use crate::unit::Unit;

/// Files the preparation task leaves in the container's directory for PID 1.
const INIT_PID_FILE: &str = "init.pid";
const START_ERROR_FILE: &str = "start-error";

pub struct ContainerLauncher {
    runtime: Runtime,
    /// The state partition (or `DIR/state` in host mode).
    state: PathBuf,
    machine_config: PathBuf,
    /// The berth-runtime binary that pulls images.
    runtime_bin: PathBuf,
    bridge: BridgeNetwork,
    /// Read ends of the exec FIFOs of released containers, kept open until the unit's cleanup
    /// so that an init released but not yet past its write never meets a FIFO without reader.
    released: HashMap<String, OwnedFd>,
    /// The runtime state, the network allocations and the mounts end with the boot (PID 1:
    /// they live on /run and in the kernel), so a container that was never prepared since
    /// boot has nothing of its own left to remove.
    boot_scoped: bool,
    /// Units prepared since this launcher was made.
    prepared: HashSet<String>,
    /// Where read-only containers keep their directory (PID 1: `/run/berth/containers`, a
    /// tmpfs). Their root is the image: the upper directory only ever holds mount points,
    /// and the first start after boot writes nothing to the state partition (whose first
    /// writes, ext4's allocation and journal code run for the first time, cost ~20 ms of
    /// emulated boot).
    read_only_dirs: Option<PathBuf>,
    /// When the first sweep looks for directories of removed units whose deletion a power
    /// loss or shutdown cut short: once the boot has settled, off the path to the first
    /// container.
    leftover_deletions_at: Option<Instant>,
}

/// How long after the launcher is made its sweep first looks for unfinished deletions.
const LEFTOVER_DELETIONS_AFTER: Duration = Duration::from_secs(30);

/// Deletes set-aside directories (see [`removal::delete`]), reporting each failure on
/// stderr. True when all went.
fn delete_reporting(dirs: &[PathBuf]) -> bool {
    let failed = removal::delete(dirs);
    for f in &failed {
        let _ = writeln!(std::io::stderr(), "berth-init: {f}");
    }
    failed.is_empty()
}

fn err(what: impl std::fmt::Display) -> LaunchError {
    LaunchError::Container(what.to_string())
}

impl ContainerLauncher {
    /// `network_dir` holds the bridge network's allocations: on a tmpfs that lives as long
    /// as the kernel's links and nftables table (no fsync'd file on the state partition in
    /// each container's start).
    pub fn new(
        state: &Path,
        machine_config: &Path,
        runtime_root: PathBuf,
        network_dir: PathBuf,
        runtime_bin: PathBuf,
    ) -> ContainerLauncher {
        ContainerLauncher {
            runtime: Runtime::new(runtime_root),
            state: state.to_path_buf(),
            machine_config: machine_config.to_path_buf(),
            runtime_bin,
            bridge: BridgeNetwork::new(network_dir),
            released: HashMap::new(),
            boot_scoped: false,
            prepared: HashSet::new(),
            read_only_dirs: None,
            leftover_deletions_at: Some(Instant::now() + LEFTOVER_DELETIONS_AFTER),
        }
    }

    /// Keeps the directories of read-only containers under `dir` (a tmpfs that ends with the
    /// boot) instead of the state partition.
    pub fn read_only_dirs_in(mut self, dir: PathBuf) -> ContainerLauncher {
        self.read_only_dirs = Some(dir);
        self
    }

    /// Declares the runtime root, the network directory and the mounts as ending with the
    /// boot (PID 1), so the first start of a container since boot skips leftover removal.
    pub fn boot_scoped(mut self) -> ContainerLauncher {
        self.boot_scoped = true;
        self
    }

    /// Whether a start of `unit` may find a container, network attachment or mount left by
    /// an earlier start (or a crash); counts this start as one.
    fn leftovers_possible(&mut self, unit: &str) -> bool {
        let first = self.prepared.insert(unit.to_string());
        !(self.boot_scoped && first)
    }

    /// Where the bridge network's allocations live.
    pub fn network_dir(&self) -> &Path {
        &self.bridge.dir
    }

    fn store(&self) -> Result<Store, LaunchError> {
        Store::open(self.state.join("images")).map_err(|e| err(format!("image store: {e}")))
    }

    /// The container's directory: its root's mount point, upper and work directories, and
    /// the files the preparation task leaves for PID 1.
    fn dir(&self, unit: &Unit) -> PathBuf {
        match &self.read_only_dirs {
            Some(top) if unit.container.read_only => top.join(&unit.name),
            _ => self.state.join("containers").join(&unit.name),
        }
    }

    /// Every place the unit's directory may be: a leftover mount can be in the one its unit
    /// file used before an edit of `read_only`.
    fn dirs(&self, unit: &Unit) -> Vec<PathBuf> {
        self.container_tops()
            .iter()
            .map(|top| top.join(&unit.name))
            .collect()
    }

    /// The directories that hold containers' directories.
    fn container_tops(&self) -> Vec<PathBuf> {
        let mut tops = vec![self.state.join("containers")];
        tops.extend(self.read_only_dirs.clone());
        tops
    }

    /// Deletes the directories of removed units (see [`removal`]) in a task at idle priority,
    /// reaped as an orphan. Nothing when there are none.
    fn delete_removed_dirs(&self) {
        let dirs = removal::pending(&self.container_tops());
        if dirs.is_empty() {
            return;
        }
        let stderr = 2;
        let spawned = fork_task([stderr, stderr, stderr], || {
            at_idle_priority();
            i32::from(!delete_reporting(&dirs))
        });
        if let Err(e) = spawned {
            log::warn!("cannot start deleting the directories of removed containers: {e}");
        }
    }

    /// The unit's image, parsed once when the unit file was validated.
    fn reference(unit: &Unit) -> Result<&Reference, LaunchError> {
        unit.container
            .image
            .as_ref()
            .map(|i| &i.0)
            .ok_or_else(|| err("the unit has no image"))
    }

    /// A berth-runtime command run from a task: it dies with the task, which dies with
    /// berth-init, so no pull or container command is left behind by a berth-init that died.
    fn runtime_command(&self) -> Command {
        dies_with_task(Command::new(&self.runtime_bin))
    }

    /// `berth-runtime image pull REF`, its output into the unit's log (this task's stdout and
    /// stderr). Runs in the preparation task, and dies with it.
    fn pull(&self, reference: &Reference) -> Result<(), LaunchError> {
        let store = self.state.join("images");
        let cmd = pull_command(&self.runtime_bin, &store, &self.machine_config, reference);
        let status = dies_with_task(cmd)
            .stdin(Stdio::null())
            .status()
            .map_err(|source| LaunchError::Spawn {
                command: format!("{} image pull", self.runtime_bin.display()),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(err(format!("image pull {reference}: {status}")))
        }
    }

    /// Mounts the overlay root: the image's layers under the container's upper directory. A
    /// writable root made over other layers is set aside first, its path pushed to `stale`
    /// (see [`root_layers`]).
    fn mount_root(
        &self,
        unit: &Unit,
        image: &berth_store::Image,
        stale: &mut Vec<PathBuf>,
    ) -> Result<PathBuf, LaunchError> {
        let dir = self.dir(unit);
        let rootfs = dir.join("rootfs");
        // A mount left by a crash is replaced.
        let _ = nix::mount::umount2(&rootfs, MntFlags::MNT_DETACH);
        // A read-only root's upper directory only ever holds mount points.
        if let (false, Some(top)) = (unit.container.read_only, dir.parent()) {
            let layers = &image.config.rootfs.diff_ids;
            let claim = root_layers::claim(top, &unit.name, layers)
                .map_err(|e| err(format!("writable root: {e}")))?;
            if let root_layers::Claim::Replaced(old) = claim {
                let why = format!(
                    "{}: the image's layers changed ({}): the container starts from a new \
                     writable root, and the old one is deleted",
                    unit.name, image.reference
                );
                log::info!("unit {why}");
                let _ = writeln!(std::io::stderr(), "berth-init: {why}");
                stale.push(old);
            }
        }
        image
            .mount_root(&dir.join("upper"), &dir.join("work"), &rootfs)
            .map_err(err)?;
        Ok(rootfs)
    }

    fn settings(
        &self,
        unit: &Unit,
        image: &berth_store::Image,
    ) -> Result<ContainerSettings, LaunchError> {
        let c = &unit.container;
        let cfg = &image.config.config;
        let mut volumes = Vec::new();
        for v in &c.volumes {
            let source = match &v.source {
                VolumeSource::Named(name) => {
                    // Containers write setuid files and device nodes into their volumes:
                    // root only above them.
                    let top = self.state.join("volumes");
                    private_dir(&top).map_err(|e| err(format!("{}: {e}", top.display())))?;
                    let p = top.join(name);
                    std::fs::create_dir_all(&p)
                        .map_err(|e| err(format!("volume {}: {e}", p.display())))?;
                    p
                }
                VolumeSource::Host(p) => PathBuf::from(p),
            };
            let propagation = match v.propagation {
                Propagation::Private => builder::Propagation::Private,
                Propagation::Rshared => builder::Propagation::Rshared,
                Propagation::Rslave => builder::Propagation::Rslave,
            };
            if propagation != builder::Propagation::Private {
                share_mount(&source)?;
            }
            volumes.push(Volume {
                source,
                destination: v.target.clone(),
                read_only: v.read_only,
                propagation,
            });
        }
        Ok(ContainerSettings {
            hostname: unit.name.clone(),
            command: c.command.clone(),
            env: c.env.clone(),
            user: c.user.as_ref().map(|u| match u {
                UserSpec::Id { uid, gid } => format!("{uid}:{}", gid.unwrap_or(*uid)),
                UserSpec::Name {
                    user,
                    group: Some(g),
                } => format!("{user}:{g}"),
                UserSpec::Name { user, group: None } => user.clone(),
            }),
            network: match c.network {
                NetworkMode::Bridge => builder::NetworkMode::Bridge,
                NetworkMode::Host => builder::NetworkMode::Host,
                NetworkMode::None => builder::NetworkMode::None,
            },
            volumes,
            read_only: c.read_only,
            privileged: c.privileged,
            pid: match c.pid {
                PidMode::Container => builder::PidMode::Container,
                PidMode::Host => builder::PidMode::Host,
            },
            resources: limits(&unit.resources).map_err(err)?,
            image: ImageDefaults {
                entrypoint: cfg.entrypoint.clone().unwrap_or_default(),
                cmd: cfg.cmd.clone().unwrap_or_default(),
                env: cfg.env.clone().unwrap_or_default(),
                user: Some(cfg.user.clone()).filter(|u| !u.is_empty()),
                workdir: Some(cfg.working_dir.clone()).filter(|w| !w.is_empty()),
            },
            cgroup: Some(format!("/{}", cgroup_path(unit))),
        })
    }

    fn ports(unit: &Unit) -> Result<Vec<net::PortMapping>, LaunchError> {
        unit.container
            .ports
            .iter()
            .map(|p| {
                if p.host_ip.is_some() {
                    return Err(err(format!(
                        "port {}: binding to one host address is not supported",
                        p.host_port
                    )));
                }
                let protocol = match p.protocol {
                    crate::unit::value::Protocol::Tcp => net::Protocol::Tcp,
                    crate::unit::value::Protocol::Udp => net::Protocol::Udp,
                };
                Ok(net::PortMapping {
                    host_port: p.host_port,
                    container_port: p.container_port,
                    protocol,
                })
            })
            .collect()
    }

    /// The preparation task: from the image to a created container whose init waits on the
    /// exec FIFO, with its network attached. `out` is the unit log's pipe.
    /// `stale` receives the directories this start set aside, for deletion once it is over.
    fn prepare(
        &self,
        unit: &Unit,
        out: RawFd,
        leftovers: bool,
        stale: &mut Vec<PathBuf>,
    ) -> Result<(), LaunchError> {
        let ports = Self::ports(unit)?;
        let store = self.store()?;
        // A container of the same name left by a crash (or a killed cleanup) goes first. An
        // image lease left by an earlier boot needs no removal: the lease below replaces it,
        // and a failed start releases it.
        if leftovers {
            self.remove_with(unit, Some(&store));
        }
        let reference = Self::reference(unit)?;
        // Held from the lookup to the lease: a prune (which takes it exclusively) must not
        // delete the layers of an image found here and not yet leased to the container.
        let gc_guard = store
            .write_lock()
            .map_err(|e| err(format!("image store: {e}")))?;
        let image = match store.resolve_reference(reference) {
            Ok(image) => image,
            Err(_) => {
                self.pull(reference)?;
                store
                    .resolve_reference(reference)
                    .map_err(|e| err(format!("image {reference}: {e}")))?
            }
        };
        trace::step("image lookup");
        let rootfs = self.mount_root(unit, &image, stale)?;
        trace::step("overlay mount");
        store
            .lease(&unit.name, &image)
            .map_err(|e| err(format!("lease image: {e}")))?;
        drop(gc_guard);
        trace::step("image lease");
        let spec = build_spec(&self.settings(unit, &image)?, &rootfs).map_err(err)?;
        trace::step("OCI spec");
        let dir = self.dir(unit);
        let bundle = Bundle::from_spec(&dir, spec).map_err(err)?;
        trace::step("OCI spec: checks");
        let null = std::fs::File::open("/dev/null").map_err(LaunchError::Pipe)?;
        let pid_file = dir.join(INIT_PID_FILE);
        let opts = CreateOptions {
            id: &unit.name,
            console_socket: None,
            pid_file: Some(&pid_file),
            no_pivot: false,
            stdio: Some([null.as_raw_fd(), out, out]),
            start: StartMode::Fifo,
            preserve_fds: 0,
            no_new_keyring: false,
        };
        let container = if berth_runtime::sealed::is_sealed() {
            self.runtime.create(&bundle, &opts).map_err(err)?
        } else {
            self.create_sealed(&unit.name, &bundle, &pid_file, out)?;
            trace::step("berth-runtime create");
            self.runtime.load(&unit.name).map_err(err)?
        };
        let netns = PathBuf::from(format!("/proc/{}/ns/net", container.pid()));
        let attached = match unit.container.network {
            NetworkMode::Bridge => self.bridge.attach(container.id(), &netns, &ports).map(drop),
            NetworkMode::None => BridgeNetwork::loopback_only(&netns),
            NetworkMode::Host => Ok(()),
        };
        attached.map_err(|e| err(format!("network: {e}")))
    }

    /// `berth-runtime create` for a host where this executable is not sealed (host mode from
    /// a writable file): the container's init must not be a copy of it, or the container
    /// could reach and rewrite it through /proc (CVE-2019-5736). The runtime binary seals
    /// itself for `create` and `exec`; on a Berth machine berth-init's root is read-only and
    /// the container is created in this task, without that exec.
    fn create_sealed(
        &self,
        id: &str,
        bundle: &Bundle,
        pid_file: &Path,
        out: RawFd,
    ) -> Result<(), LaunchError> {
        let config = bundle.dir.join("config.json");
        let json = serde_json::to_vec(&bundle.spec).map_err(err)?;
        std::fs::write(&config, json).map_err(|e| err(format!("{}: {e}", config.display())))?;
        let output = |fd: RawFd| -> Result<Stdio, LaunchError> {
            // SAFETY: `fd` is the unit log's pipe, open for the whole task.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let dup = nix::unistd::dup(borrowed).map_err(|e| LaunchError::Pipe(e.into()))?;
            Ok(Stdio::from(dup))
        };
        let status = self
            .runtime_command()
            .arg("--root")
            .arg(self.runtime.store().root())
            .arg("create")
            .arg("--bundle")
            .arg(&bundle.dir)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(output(out)?)
            .stderr(output(out)?)
            .status()
            .map_err(|source| LaunchError::Spawn {
                command: format!("{} create", self.runtime_bin.display()),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(err(format!("berth-runtime create: {status}")))
        }
    }

    /// Runs [`Self::prepare`] and reports a failure in the unit log and for the API, after
    /// removing what it left. The task's exit code.
    fn prepare_task(
        &self,
        unit: &Unit,
        out: RawFd,
        leftovers: bool,
        stale: &mut Vec<PathBuf>,
    ) -> i32 {
        trace::begin();
        match self.prepare(unit, out, leftovers, stale) {
            Ok(()) => {
                // One line per start: which step a slow start spent its time in.
                if let Some(done) = trace::finish() {
                    log::info!("unit {}: setup {}", unit.name, trace::summary(&done));
                }
                0
            }
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "berth-init: {}: cannot start: {e}",
                    unit.name
                );
                let _ = std::fs::write(self.dir(unit).join(START_ERROR_FILE), e.to_string());
                self.remove(unit);
                e.exit_code()
            }
        }
    }

    /// Lets the prepared container's init exec the unit's program: opening the exec FIFO for
    /// reading unblocks the init, which then writes one byte and execs. Never blocks.
    fn release(&mut self, unit: &Unit) -> Result<i32, LaunchError> {
        let pid_file = self.dir(unit).join(INIT_PID_FILE);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| err(format!("no container pid in {}", pid_file.display())))?;
        // Killed while it waited for the release (it cannot exit on its own there): nothing
        // to release, and nothing the reaper would report for the unit.
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH)
        {
            return Err(err(format!(
                "container init {pid} ended before its release"
            )));
        }
        let fifo = self.runtime.store().dir(&unit.name).join(EXEC_FIFO);
        let fd = nix::fcntl::open(
            &fifo,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(format!("open {}: {e}", fifo.display())))?;
        // Without the FIFO the runtime reports the container as running.
        let _ = std::fs::remove_file(&fifo);
        self.released.insert(unit.name.clone(), fd);
        Ok(pid)
    }

    /// Deletes the unit's container (killing what is left of it), detaches its network,
    /// unmounts its root and releases its image lease. Each step tolerates a missing piece.
    fn remove(&self, unit: &Unit) {
        self.remove_with(unit, self.store().ok().as_ref());
    }

    /// [`Self::remove`] with the image store already open (`None`: it cannot be opened, so
    /// there is no lease to release).
    fn remove_with(&self, unit: &Unit, store: Option<&Store>) {
        if let Ok(c) = self.runtime.load(&unit.name) {
            if let Err(e) = c.delete(true) {
                log::warn!("{}: delete container: {e}", unit.name);
            }
        }
        trace::step("leftovers: container");
        if unit.container.network == NetworkMode::Bridge {
            if let Err(e) = self.bridge.detach(&unit.name) {
                log::warn!("{}: detach network: {e}", unit.name);
            }
        }
        trace::step("leftovers: network");
        for dir in self.dirs(unit) {
            let rootfs = dir.join("rootfs");
            match nix::mount::umount2(&rootfs, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => log::warn!("{}: unmount {}: {e}", unit.name, rootfs.display()),
            }
        }
        trace::step("leftovers: mount");
        if let Some(store) = store {
            if let Err(e) = store.release(&unit.name) {
                log::warn!("{}: release image: {e}", unit.name);
            }
        }
        for dir in self.dirs(unit) {
            let _ = std::fs::remove_file(dir.join(INIT_PID_FILE));
        }
        trace::step("leftovers: lease");
    }

    /// The health check task: the check's process inside the container; exits as it does.
    fn health_task(&self, unit: &Unit) -> i32 {
        let exec = unit
            .health
            .as_ref()
            .map(|h| h.exec.clone())
            .unwrap_or_default();
        let result = (|| -> Result<i32, LaunchError> {
            if !berth_runtime::sealed::is_sealed() {
                // As for `create`: the check's process must not be a copy of this executable.
                let status = self
                    .runtime_command()
                    .arg("--root")
                    .arg(self.runtime.store().root())
                    .arg("exec")
                    .arg(&unit.name)
                    .args(&exec)
                    .status()
                    .map_err(|source| LaunchError::Spawn {
                        command: format!("{} exec", self.runtime_bin.display()),
                        source,
                    })?;
                return Ok(status.code().unwrap_or(1));
            }
            let mut c = self.runtime.load(&unit.name).map_err(err)?;
            let mut process = c.state().config.process().clone().unwrap_or_default();
            process.set_args(Some(exec.clone()));
            let opts = ExecOptions {
                process,
                console_socket: None,
                pid_file: None,
                stdio: Some([0, 1, 2]),
                preserve_fds: 0,
            };
            let pid = c.exec(&opts).map_err(err)?;
            Ok(super::task::wait_child(pid).code())
        })();
        result.unwrap_or_else(|e| {
            let _ = writeln!(
                std::io::stderr(),
                "berth-init: {}: health check: {e}",
                unit.name
            );
            1
        })
    }
}

/// The unit's container cgroup, relative to the host's cgroup root.
fn cgroup_path(unit: &Unit) -> String {
    format!("containers/{}", unit.name)
}

/// The cgroup the runtime gives the unit's container (`cgroup` in its settings), when the
/// host has a v2 hierarchy and the container has one.
fn container_cgroup(unit: &Unit) -> Option<berth_runtime::cgroups::Cgroup> {
    let root = berth_runtime::cgroups::CgroupRoot::host().ok()?;
    root.open(&cgroup_path(unit)).ok()
}

fn output_pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| LaunchError::Pipe(e.into()))?;
    set_nonblocking(&r).map_err(LaunchError::Pipe)?;
    Ok((r, w))
}

impl Launcher for ContainerLauncher {
    fn removed(&mut self, name: &str) {
        let mut set_aside = false;
        for top in self.container_tops() {
            match removal::set_aside(&top, name) {
                Ok(found) => set_aside |= found.is_some(),
                Err(e) => log::warn!(
                    "unit {name}: cannot set its container directory in {} aside: {e}",
                    top.display()
                ),
            }
        }
        if set_aside {
            self.delete_removed_dirs();
        }
    }

    fn sweep(&mut self) {
        if self
            .leftover_deletions_at
            .is_some_and(|at| Instant::now() >= at)
        {
            self.leftover_deletions_at = None;
            self.delete_removed_dirs();
        }
    }

    fn handles(&self, unit: &Unit) -> bool {
        !unit.is_system()
    }

    fn start(&mut self, unit: &Unit, prepared: u32) -> Result<Step, LaunchError> {
        if prepared > 0 {
            return self.release(unit).map(|pid| {
                Step::Main(Spawned {
                    pid,
                    // The preparation step's pipe carries the container's output on.
                    output: None,
                })
            });
        }
        // Checked here too, so a bad port mapping fails the start before any fork.
        Self::ports(unit)?;
        let dir = self.dir(unit);
        // A container's root and upper directory hold what its image and its processes put
        // there (setuid files, device nodes): root only above them.
        if let Some(top) = dir.parent() {
            private_dir(top).map_err(|e| err(format!("cannot create {}: {e}", top.display())))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let _ = std::fs::remove_file(dir.join(START_ERROR_FILE));
        let (r, w) = output_pipe()?;
        let (done_r, done_w) = output_pipe()?;
        let null = std::fs::File::open("/dev/null").map_err(LaunchError::Pipe)?;
        let out = w.as_raw_fd();
        let leftovers = self.leftovers_possible(&unit.name);
        let pid = fork_task([null.as_raw_fd(), out, out], || {
            let mut stale = Vec::new();
            let code = self.prepare_task(unit, out, leftovers, &mut stale);
            if code == 0 {
                // The container is created: PID 1 releases it when it reads this byte. What is
                // left of this task (deleting a replaced root, its exit tearing down a copy of
                // PID 1's memory) runs at idle priority from here, so on a busy CPU it comes
                // after that release.
                at_idle_priority();
                let _ = nix::unistd::write(&done_w, b"1");
            }
            delete_reporting(&stale);
            code
        })
        .map_err(|source| LaunchError::Spawn {
            command: format!("container setup of {}", unit.name),
            source,
        })?;
        Ok(Step::Prepare {
            task: Spawned {
                pid,
                output: Some(r),
            },
            done: Some(done_r),
        })
    }

    fn preparation_error(&mut self, unit: &Unit) -> Option<String> {
        std::fs::read_to_string(self.dir(unit).join(START_ERROR_FILE)).ok()
    }

    fn signal(&mut self, unit: &Unit, pid: i32, signal: i32, all: bool) -> Result<(), LaunchError> {
        if all {
            // Everything in the container's cgroup; without one, the container's init is
            // PID 1 of its namespace and takes the rest with it.
            if let Some(cg) = container_cgroup(unit) {
                let _ = cg.kill();
            }
        }
        signal_pid(pid, signal)?;
        if signal != libc::SIGKILL && signal != libc::SIGCONT {
            // A stopped init only acts on its stop signal once continued.
            signal_pid(pid, libc::SIGCONT)?;
        }
        Ok(())
    }

    fn health_check(&mut self, unit: &Unit) -> Result<Spawned, LaunchError> {
        let null = std::fs::File::open("/dev/null").map_err(LaunchError::Pipe)?;
        let fd = null.as_raw_fd();
        let pid = fork_task([fd, fd, fd], || self.health_task(unit)).map_err(|source| {
            LaunchError::Spawn {
                command: format!("health check of {}", unit.name),
                source,
            }
        })?;
        Ok(Spawned { pid, output: None })
    }

    fn usage(&self, unit: &Unit) -> Option<super::Usage> {
        super::cgroup::usage_of(&container_cgroup(unit)?)
    }

    fn cleanup(&mut self, unit: &Unit, _pid: Option<i32>) -> Option<Spawned> {
        self.released.remove(&unit.name);
        let stderr = 2;
        // The supervisor reaps the task (a stuck delete must not stall the loop).
        match fork_task([stderr, stderr, stderr], || {
            self.remove(unit);
            0
        }) {
            Ok(pid) => Some(Spawned { pid, output: None }),
            Err(e) => {
                log::warn!("{}: cannot start cleanup: {e}", unit.name);
                None
            }
        }
    }
}

/// `cmd`, to be run from a task, gets SIGKILL when the task (the caller) dies.
fn dies_with_task(mut cmd: Command) -> Command {
    let task = nix::unistd::getpid();
    // SAFETY: runs in the forked child before exec; only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || crate::signals::die_with_parent(task));
    }
    cmd
}

/// Makes `path` a shared mount of the host, bind-mounting it onto itself first when it is no
/// mount point: mounts made under it later then travel between the host and a container that
/// mounts it `rshared` (or into one that mounts it `rslave`). It stays so after the container
/// ends, as a host's own shared mounts do, and is unmounted at shutdown with the rest.
fn share_mount(path: &Path) -> Result<(), LaunchError> {
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
    };
    let failed = |what: &str, e: nix::errno::Errno| err(format!("{what} {}: {e}", path.display()));
    match shared() {
        Ok(()) => return Ok(()),
        // Not a mount point.
        Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(failed("share volume", e)),
    }
    nix::mount::mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| failed("bind volume onto itself", e))?;
    shared().map_err(|e| failed("share volume", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reaper::ExitStatus;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use std::time::Duration;

    /// A launcher with its state, runtime root and network directory in the scratch `dir`.
    fn launcher_in(dir: &Path) -> ContainerLauncher {
        ContainerLauncher::new(
            &dir.join("state"),
            &dir.join("machine.toml"),
            dir.join("runtime"),
            dir.join("network"),
            PathBuf::from("/bin/false"),
        )
    }

    /// Waits (60 s at most) until the deletion task has deleted what was set aside in `tops`.
    fn wait_until_deleted(tops: &[PathBuf]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !removal::pending(tops).is_empty() {
            assert!(Instant::now() < deadline, "{:?}", removal::pending(tops));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn only_a_first_start_since_boot_skips_leftover_removal() {
        let dir = crate::testutil::scratch_dir("container-leftovers");
        let new = || launcher_in(&dir);
        let mut pid1 = new().boot_scoped();
        assert!(!pid1.leftovers_possible("web"), "first start since boot");
        assert!(pid1.leftovers_possible("web"), "a restart");
        assert!(!pid1.leftovers_possible("db"));
        // Host mode: an earlier berth-init on this host may have left anything.
        let mut host = new();
        assert!(host.leftovers_possible("web"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_only_containers_keep_their_directory_on_the_boot_tmpfs() {
        let dir = crate::testutil::scratch_dir("container-dirs");
        let launcher = launcher_in(&dir);
        let unit = |read_only: bool| {
            let text = format!("[container]\nimage = \"web:1\"\nread_only = {read_only}\n");
            crate::unit::parse("web", "web.toml", &text).unwrap()
        };
        let on_disk = dir.join("state/containers/web");
        // Without a tmpfs (host mode) everything stays on the state partition.
        assert_eq!(launcher.dir(&unit(true)), on_disk);
        let pid1 = launcher.read_only_dirs_in(dir.join("run/containers"));
        assert_eq!(pid1.dir(&unit(true)), dir.join("run/containers/web"));
        // A writable root keeps its upper directory (the container's writes) on the disk.
        assert_eq!(pid1.dir(&unit(false)), on_disk);
        // Cleanup looks in both: the unit file may have changed `read_only` since the mount.
        assert_eq!(
            pid1.dirs(&unit(false)),
            [on_disk, dir.join("run/containers/web")]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_removed_unit_leaves_no_container_directory_behind() {
        let dir = crate::testutil::scratch_dir("container-removed");
        let mut launcher = launcher_in(&dir).read_only_dirs_in(dir.join("run/containers"));
        let on_disk = dir.join("state/containers/web");
        let on_tmpfs = dir.join("run/containers/web");
        for d in [&on_disk, &on_tmpfs] {
            std::fs::create_dir_all(d.join("upper/data")).unwrap();
            std::fs::write(d.join("upper/data/written"), "by the container").unwrap();
        }
        let other = dir.join("state/containers/db/upper");
        std::fs::create_dir_all(&other).unwrap();

        launcher.removed("web");
        // The name is free at once; the deletion runs in a task.
        assert!(!on_disk.exists() && !on_tmpfs.exists());
        let tops = launcher.container_tops();
        wait_until_deleted(&tops);
        assert!(other.is_dir());
        // A unit that never had a directory (a system unit) changes nothing.
        launcher.removed("network");
        assert!(removal::pending(&tops).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_deletion_cut_short_is_finished_by_the_sweep_once_the_boot_settled() {
        let dir = crate::testutil::scratch_dir("container-leftover");
        let mut launcher = launcher_in(&dir);
        let top = dir.join("state/containers");
        std::fs::create_dir_all(top.join("web/upper")).unwrap();
        // What a power loss in the middle of a deletion leaves.
        assert!(removal::set_aside(&top, "web").unwrap().is_some());
        let tops = launcher.container_tops();
        // Not during the boot: the first containers come first.
        launcher.sweep();
        assert_eq!(removal::pending(&tops).len(), 1);
        launcher.leftover_deletions_at = Some(Instant::now());
        launcher.sweep();
        wait_until_deleted(&tops);
        // Once only.
        assert_eq!(launcher.leftover_deletions_at, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cleanup_that_blocks_does_not_block_the_caller() {
        let dir = crate::testutil::scratch_dir("container-cleanup");
        let root = dir.join("runtime");
        std::fs::create_dir_all(root.join("web")).unwrap();
        // Reading the container's state blocks until someone opens this FIFO for writing: a
        // delete stuck in the kernel, as far as the cleanup can tell.
        let fifo = root.join("web").join(berth_runtime::state::STATE_FILE);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let mut launcher = ContainerLauncher::new(
            &dir.join("state"),
            &dir.join("machine.toml"),
            root,
            dir.join("network"),
            PathBuf::from("/bin/false"),
        );
        let text = "[container]\nimage = \"web:1\"\nnetwork = \"none\"\n";
        let unit = crate::unit::parse("web", "web.toml", text).unwrap();
        let task = launcher.cleanup(&unit, None).unwrap();
        // Returned at once, while the task is stuck.
        assert_eq!(
            waitpid(
                nix::unistd::Pid::from_raw(task.pid),
                Some(WaitPidFlag::WNOHANG)
            ),
            Ok(WaitStatus::StillAlive)
        );
        // Unstick it: the state reads as garbage, the cleanup goes on and ends.
        std::fs::write(&fifo, "not json").unwrap();
        assert_eq!(
            super::super::task::wait_task(task.pid, Duration::from_secs(60)),
            ExitStatus::Exited(0)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
