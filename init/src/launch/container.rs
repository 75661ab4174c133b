//! The container launcher: units with an `image`. Missing images are pulled by a child
//! process (`berth-runtime image pull`, a preparation step, so PID 1 never blocks on the
//! network); the root is an overlay of the image's layers and the container's own upper
//! directory under `state/containers/<unit>/`; the OCI spec comes from the unit merged with
//! the image config; the network is attached between create and start; health checks exec
//! inside the container; cleanup deletes the container, its network and its mount.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_runtime::builder::{build_spec, ContainerSettings, ImageConfig, NetworkMode, Volume};
use berth_runtime::cgroups::{CpuMax, Limit, Resources as Limits};
use berth_runtime::image::Store;
use berth_runtime::net::{self, Network as Bridge};
use berth_runtime::{Bundle, ContainerError, ExecOptions, Runtime};
use nix::fcntl::OFlag;
use nix::mount::MntFlags;

use super::process::{set_nonblocking, signal_pid};
use super::{LaunchError, Launcher, Spawned, Step};
use crate::unit::model::Network;
use crate::unit::value::{UserSpec, VolumeSource};
use crate::unit::Unit;

pub struct ContainerLauncher {
    runtime: Runtime,
    /// The state partition (or `DIR/state` in host mode).
    state: PathBuf,
    machine_config: PathBuf,
    /// The berth-runtime binary that pulls images.
    runtime_bin: PathBuf,
    bridge: Bridge,
}

fn err(what: impl std::fmt::Display) -> LaunchError {
    LaunchError::Container(what.to_string())
}

impl ContainerLauncher {
    pub fn new(
        state: &Path,
        machine_config: &Path,
        runtime_root: PathBuf,
        runtime_bin: PathBuf,
    ) -> ContainerLauncher {
        ContainerLauncher {
            runtime: Runtime::new(runtime_root),
            state: state.to_path_buf(),
            machine_config: machine_config.to_path_buf(),
            runtime_bin,
            bridge: Bridge::new(state.join("network")),
        }
    }

    fn store(&self) -> Result<Store, LaunchError> {
        Store::open(self.state.join("images")).map_err(|e| err(format!("image store: {e}")))
    }

    fn dir(&self, unit: &Unit) -> PathBuf {
        self.state.join("containers").join(&unit.name)
    }

    fn reference(unit: &Unit) -> String {
        unit.container
            .image
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default()
    }

    /// `berth-runtime image pull REF`, its output into the unit's log.
    fn spawn_pull(&self, reference: &str) -> Result<Spawned, LaunchError> {
        let (r, w) = output_pipe()?;
        let w2 = w.try_clone().map_err(LaunchError::Pipe)?;
        let mut cmd = Command::new(&self.runtime_bin);
        cmd.arg("image")
            .arg("--store")
            .arg(self.state.join("images"))
            .arg("--config")
            .arg(&self.machine_config)
            .args(["pull", reference])
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::from(w2));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                crate::signals::reset_in_child()
            });
        }
        let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            command: format!("{} image pull", self.runtime_bin.display()),
            source,
        })?;
        let pid = child.id() as i32;
        drop(child);
        Ok(Spawned {
            pid,
            output: Some(r),
        })
    }

    /// Mounts the overlay root: the image's layers under the container's upper directory.
    fn mount_root(
        &self,
        unit: &Unit,
        image: &berth_runtime::image::Image,
    ) -> Result<PathBuf, LaunchError> {
        let dir = self.dir(unit);
        let rootfs = dir.join("rootfs");
        // A mount left by a crash is replaced.
        let _ = nix::mount::umount2(&rootfs, MntFlags::MNT_DETACH);
        image
            .mount_root(&dir.join("upper"), &dir.join("work"), &rootfs)
            .map_err(err)?;
        Ok(rootfs)
    }

    fn settings(
        &self,
        unit: &Unit,
        image: &berth_runtime::image::Image,
    ) -> Result<ContainerSettings, LaunchError> {
        let c = &unit.container;
        let cfg = &image.config.config;
        let mut volumes = Vec::new();
        for v in &c.volumes {
            let source = match &v.source {
                VolumeSource::Named(name) => {
                    let p = self.state.join("volumes").join(name);
                    std::fs::create_dir_all(&p)
                        .map_err(|e| err(format!("volume {}: {e}", p.display())))?;
                    p
                }
                VolumeSource::Host(p) => PathBuf::from(p),
            };
            volumes.push(Volume {
                source,
                destination: v.target.clone(),
                read_only: v.read_only,
            });
        }
        let r = &unit.resources;
        let resources = Limits {
            memory_max: r.memory_max.map(Limit::Value),
            pids_max: r.pids_max.map(Limit::Value),
            cpu_max: r.cpu_max.map(CpuMax::from_cpus).transpose().map_err(err)?,
            ..Limits::default()
        };
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
                Network::Bridge => NetworkMode::Bridge,
                Network::Host => NetworkMode::Host,
                Network::None => NetworkMode::None,
            },
            volumes,
            read_only: c.read_only,
            resources,
            image: ImageConfig {
                entrypoint: cfg.entrypoint.clone().unwrap_or_default(),
                cmd: cfg.cmd.clone().unwrap_or_default(),
                env: cfg.env.clone().unwrap_or_default(),
                user: Some(cfg.user.clone()).filter(|u| !u.is_empty()),
                workdir: Some(cfg.working_dir.clone()).filter(|w| !w.is_empty()),
            },
            cgroup: Some(format!("/containers/{}", unit.name)),
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

    fn run_container(
        &mut self,
        unit: &Unit,
        image: &berth_runtime::image::Image,
        store: &Store,
    ) -> Result<Spawned, LaunchError> {
        let ports = Self::ports(unit)?;
        // A container of the same name left by a crash goes first.
        if let Ok(old) = self.runtime.load(&unit.name) {
            let _ = old.delete(true);
        }
        let rootfs = self.mount_root(unit, image)?;
        store
            .lease(&unit.name, image)
            .map_err(|e| err(format!("lease image: {e}")))?;
        let spec = build_spec(&self.settings(unit, image)?, &rootfs).map_err(err)?;
        let bundle = Bundle::from_spec(&self.dir(unit), spec).map_err(err)?;
        let (r, w) = output_pipe()?;
        let null = std::fs::File::open("/dev/null").map_err(LaunchError::Pipe)?;
        let stdio = [null.as_raw_fd(), w.as_raw_fd(), w.as_raw_fd()];
        let network = unit.container.network;
        let bridge = &self.bridge;
        let container = self
            .runtime
            .launch(&unit.name, &bundle, stdio, |c| {
                let netns = PathBuf::from(format!("/proc/{}/ns/net", c.pid()));
                match network {
                    Network::Bridge => bridge
                        .attach(c.id(), &netns, &ports)
                        .map(drop)
                        .map_err(ContainerError::from),
                    Network::None => Bridge::loopback_only(&netns).map_err(ContainerError::from),
                    Network::Host => Ok(()),
                }
            })
            .map_err(err)?;
        Ok(Spawned {
            pid: container.pid(),
            output: Some(r),
        })
    }
}

fn output_pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| LaunchError::Pipe(e.into()))?;
    set_nonblocking(&r).map_err(LaunchError::Pipe)?;
    Ok((r, w))
}

impl Launcher for ContainerLauncher {
    fn handles(&self, unit: &Unit) -> bool {
        !unit.is_system()
    }

    fn start(&mut self, unit: &Unit, prepared: u32) -> Result<Step, LaunchError> {
        let reference = Self::reference(unit);
        let store = self.store()?;
        let image = match store.resolve(&reference) {
            Ok(image) => image,
            // Not here yet: pull it in a child process, then come back.
            Err(_) if prepared == 0 => return self.spawn_pull(&reference).map(Step::Prepare),
            Err(e) => return Err(err(format!("image {reference}: {e}"))),
        };
        match self.run_container(unit, &image, &store) {
            Ok(spawned) => Ok(Step::Main(spawned)),
            Err(e) => {
                self.cleanup(unit, None);
                Err(e)
            }
        }
    }

    fn signal(&mut self, unit: &Unit, pid: i32, signal: i32, all: bool) -> Result<(), LaunchError> {
        if all {
            let sig = nix::sys::signal::Signal::try_from(signal)
                .map_err(|source| LaunchError::Signal { pid, source })?;
            if let Ok(mut c) = self.runtime.load(&unit.name) {
                return c.kill(sig, true).or_else(|e| match e {
                    // Already stopped: nothing left to signal.
                    ContainerError::WrongState { .. } => Ok(()),
                    other => Err(err(other)),
                });
            }
        }
        signal_pid(pid, signal)
    }

    fn health_check(&mut self, unit: &Unit) -> Result<Spawned, LaunchError> {
        let exec = unit
            .health
            .as_ref()
            .map(|h| h.exec.clone())
            .unwrap_or_default();
        let mut c = self.runtime.load(&unit.name).map_err(err)?;
        let mut process = c.state().config.process().clone().unwrap_or_default();
        process.set_args(Some(exec));
        let null = std::fs::File::open("/dev/null").map_err(LaunchError::Pipe)?;
        let fd = null.as_raw_fd();
        let opts = ExecOptions {
            process,
            console_socket: None,
            pid_file: None,
            stdio: Some([fd, fd, fd]),
        };
        let pid = c.exec(&opts).map_err(err)?;
        Ok(Spawned { pid, output: None })
    }

    fn cleanup(&mut self, unit: &Unit, _pid: Option<i32>) {
        if let Ok(c) = self.runtime.load(&unit.name) {
            if let Err(e) = c.delete(true) {
                log::warn!("{}: delete container: {e}", unit.name);
            }
        }
        if unit.container.network == Network::Bridge {
            if let Err(e) = self.bridge.detach(&unit.name) {
                log::warn!("{}: detach network: {e}", unit.name);
            }
        }
        let rootfs = self.dir(unit).join("rootfs");
        match nix::mount::umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => log::warn!("{}: unmount {}: {e}", unit.name, rootfs.display()),
        }
        if let Ok(store) = self.store() {
            if let Err(e) = store.release(&unit.name) {
                log::warn!("{}: release image: {e}", unit.name);
            }
        }
    }
}
