//! Supervision after boot: loads units, serves the API and runs the event loop until an
//! ordered shutdown has stopped every unit. Shared by PID 1 and host mode.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::sys::signal::Signal;

use crate::api::jobs::Jobs;
use crate::api::{ApiContext, ApiServer, SystemInfo};
use crate::boot::{Boot, Mode, Paths};
use crate::event::{after, Event, EventLoop, Key, Reactor, Timer};
use crate::launch::cgroup::{Cgroups, NoCgroups, SystemShare, DEFAULT_WEIGHT, YIELDING_WEIGHT};
use crate::launch::process::ProcessLauncher;
use crate::launch::Launcher;
use crate::platform::Platform;
use crate::reaper::ChildEvent;
use crate::shutdown::{action_for, PowerAction};
use crate::signals::Signals;
use crate::supervisor::Supervisor;
use crate::unit;
use crate::unit_logs::LogPolicy;

pub use crate::VERSION;

/// When the boot has settled: berth-init drops the pages of its executable that only start-up
/// used (the first containers' setup tasks, forked from it, share them until they exit), and
/// RCU grace periods are normal again (`boot::rcu`).
const BOOT_SETTLED: Duration = Duration::from_secs(10);

/// Extra time past the longest chain of stops before everything left is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("event loop: {0}")]
    EventLoop(std::io::Error),
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

pub struct Init {
    events: EventLoop,
    signals: Signals,
    supervisor: Supervisor,
    api: Option<ApiServer>,
    /// Power button, watchdog, marking the boot good (PID 1 only).
    platform: Platform,
    system: SystemInfo,
    paths: Paths,
    /// Image pulls and prunes started through the API.
    jobs: Jobs,
    /// A reboot or power-off asked for through the API.
    power: Option<PowerAction>,
    mode: Mode,
    /// Set once a shutdown began: what it ends in, and how often its deadline passed.
    shutdown: Option<(PowerAction, u32)>,
    buffer: Vec<Event>,
    /// System units' CPU share, lowered at boot while the first containers are set up, and
    /// since when.
    boot_share: Option<(SystemShare, Instant)>,
    /// RCU grace periods expedited for the boot, until it settles.
    rcu: Option<crate::boot::rcu::Expedited>,
}

impl Init {
    /// Sets up the loop, loads and starts the units, binds the API. `launchers` come first
    /// (e.g. the container launcher); the process launcher for system units is added last.
    pub fn start(mut boot: Boot, mut launchers: Vec<Box<dyn Launcher>>) -> Result<Init, RunError> {
        let (mut events, signals) = match Self::event_sources() {
            Ok(sources) => sources,
            Err(e) => {
                // PID 1 goes to its emergency shell: nothing will feed the watchdog.
                boot.disarm_watchdog();
                return Err(e);
            }
        };

        let share = boot.cgroups.as_ref().and_then(|c| c.system_share());
        let cgroups: Box<dyn Cgroups> = match boot.cgroups {
            Some(cg) => Box::new(cg),
            None => Box::new(NoCgroups),
        };
        launchers.push(Box::new(ProcessLauncher::new(cgroups)));

        let loaded = unit::cache::load_dirs(
            &boot.paths.unit_dirs,
            &boot.paths.state.join(unit::cache::CACHE_FILE),
        );
        info!(
            "loaded {} units from {}",
            loaded.len(),
            display_dirs(&boot.paths.unit_dirs)
        );
        let mut supervisor =
            Supervisor::new(loaded, launchers, LogPolicy::new(boot.paths.logs.clone()));

        let mode = match boot.mode {
            Mode::Pid1 => "pid1",
            Mode::Host { .. } => "host",
        };
        let mut system = SystemInfo::new(VERSION, mode, boot.hostname.clone());
        system.extensions = std::mem::take(&mut boot.extensions);
        let mut api = match ApiServer::bind(&boot.paths.api_socket, &mut events) {
            Ok(api) => {
                info!("control API on {}", boot.paths.api_socket.display());
                Some(api)
            }
            Err(e) => {
                error!(
                    "control API unavailable: {}: {e}",
                    boot.paths.api_socket.display()
                );
                None
            }
        };
        if let (Some(api), Some(remote)) = (&mut api, &boot.machine.remote_api) {
            match api.listen_remote(remote, &mut events) {
                Ok(addr) => system.remote_api = Some(addr),
                Err(e) => error!("remote API unavailable: {e}"),
            }
        }
        let jobs = Jobs::new(
            boot.paths.runtime_bin.clone(),
            &boot.paths.state.join("images"),
            &boot.paths.machine_config,
        )
        .with_registries(&boot.machine.registries)
        .with_updater(boot.paths.updater.clone());
        let mut platform = match boot.mode {
            Mode::Pid1 => Platform::for_pid1(boot.machine.update, boot.watchdog.take()),
            Mode::Host { .. } => Platform::none(),
        };
        platform.attach(Instant::now(), &mut events);
        events.schedule(after(Instant::now(), BOOT_SETTLED), Timer::BootSettled);
        let rcu = boot.rcu.take();
        system.boot_duration = boot_duration(&boot.mode);
        let boot_share = share.and_then(yield_to_containers);
        // The API is served from here on: the first batch of units starts now, the rest in
        // the loop's turns between API requests.
        supervisor.start_all(Instant::now(), &mut events);
        if let (Some(_), Some(until)) = (&boot_share, supervisor.boot_hold_until()) {
            events.schedule(until, Timer::BootShare);
        }
        let mut init = Init {
            events,
            signals,
            supervisor,
            api,
            platform,
            system,
            paths: boot.paths,
            jobs,
            power: None,
            mode: boot.mode,
            shutdown: None,
            buffer: Vec::new(),
            boot_share,
            rcu,
        };
        init.end_boot_yield(Instant::now());
        Ok(init)
    }

    /// Gives system units their CPU share back once the boot's container setups are done
    /// (see [`yield_to_containers`]).
    fn end_boot_yield(&mut self, now: Instant) {
        if self.boot_share.is_none() || self.supervisor.boot_setups_running(now) {
            return;
        }
        let Some((share, since)) = self.boot_share.take() else {
            return;
        };
        match share.set_weight(DEFAULT_WEIGHT) {
            Ok(()) => info!(
                "system units back at CPU weight {} after {} ms",
                DEFAULT_WEIGHT,
                now.saturating_duration_since(since).as_millis()
            ),
            Err(e) => error!("cannot restore the system units' CPU weight: {e}"),
        }
    }

    fn event_sources() -> Result<(EventLoop, Signals), RunError> {
        let mut events = EventLoop::new().map_err(RunError::EventLoop)?;
        let signals = Signals::new().map_err(RunError::Signals)?;
        events
            .watch(std::os::fd::AsFd::as_fd(&signals), Key::Signals, false)
            .map_err(RunError::Signals)?;
        Ok((events, signals))
    }

    /// Runs until every unit is stopped after a shutdown request; returns what to do next.
    /// A panic inside one iteration is logged and the loop goes on.
    pub fn run(&mut self) -> PowerAction {
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.iteration())) {
                Ok(Some(action)) => return action,
                Ok(None) => {}
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("unknown panic");
                    error!("caught a panic, continuing: {what}");
                    self.buffer.clear();
                }
            }
        }
    }

    fn iteration(&mut self) -> Option<PowerAction> {
        let mut events = std::mem::take(&mut self.buffer);
        events.clear();
        if let Err(e) = self.events.wait(&mut events) {
            error!("event loop: {e}");
        }
        let now = Instant::now();
        for event in events.drain(..) {
            match event {
                Event::Ready(Key::Signals, _) => self.on_signals(now),
                Event::Ready(Key::UnitOutput(id), _) => self.on_unit_output(id),
                Event::Ready(Key::Prepared(id), _) => {
                    self.supervisor.on_prepared(id, now, &mut self.events)
                }
                Event::Ready(Key::ApiListener, _) => {
                    self.with_api(now, |api, ctx| api.on_accept(ctx))
                }
                Event::Ready(Key::ApiRemoteListener, _) => {
                    self.with_api(now, |api, ctx| api.on_accept_remote(ctx))
                }
                Event::Ready(Key::JobOutput(id), _) => self.jobs.on_output(id, &mut self.events),
                Event::Ready(Key::ApiConn(id), ready) => {
                    self.with_api(now, |api, ctx| api.on_ready(id, ready, ctx))
                }
                Event::Ready(Key::UploadPipe(id), _) => {
                    self.with_api(now, |api, ctx| api.on_upload_pipe(id, ctx))
                }
                Event::Timer(Timer::Unit { unit, generation }) => {
                    self.supervisor
                        .on_timer(unit, generation, now, &mut self.events)
                }
                Event::Timer(Timer::ApiConn(id)) => {
                    self.with_api(now, |api, ctx| api.on_timeout(id, ctx))
                }
                Event::Timer(Timer::Shutdown) => self.on_shutdown_deadline(now),
                Event::Ready(Key::PowerButton, _) => {
                    if self.platform.on_power_button() {
                        info!("power button pressed");
                        self.begin_shutdown(PowerAction::Poweroff, "power button", now);
                    }
                }
                Event::Timer(Timer::BootSettled) => {
                    // Keep only the code pages supervision touches from here on.
                    if let Err(e) = crate::boot::code_pages::drop_unused_code_pages() {
                        warn!("cannot drop boot code pages: {e}");
                    }
                    match self.rcu.take().map(crate::boot::rcu::Expedited::end) {
                        Some(Ok(())) => info!("RCU grace periods back to normal"),
                        Some(Err(e)) => warn!("RCU grace periods stay expedited: {e}"),
                        None => {}
                    }
                }
                Event::Timer(Timer::Watchdog) => self.platform.on_watchdog(now, &mut self.events),
                Event::Timer(Timer::Job(id)) => self.jobs.on_deadline(id),
                Event::Timer(Timer::StartUnits) => {
                    self.supervisor.on_start_timer(now, &mut self.events)
                }
                Event::Timer(Timer::BootShare) => self.end_boot_yield(now),
                Event::Timer(Timer::HealthDeadline) => {
                    let statuses = self.supervisor.statuses();
                    if self
                        .platform
                        .on_health_deadline(&statuses, now, &mut self.events)
                    {
                        self.begin_shutdown(PowerAction::Reboot, "new slot unhealthy", now);
                    }
                }
            }
        }
        if self.platform.awaiting_good() && self.shutdown.is_none() {
            self.platform.check_boot_good(&self.supervisor.statuses());
        }
        self.buffer = events;
        self.end_boot_yield(now);
        self.supervisor.after_events();
        self.with_api(now, |api, ctx| api.after_events(ctx));
        if let Some(action) = self.power.take() {
            self.begin_shutdown(action, "API request", now);
        }
        if self.jobs.take_reboot() {
            self.begin_shutdown(PowerAction::Reboot, "update applied", now);
        }
        crate::log::flush_forwarding();
        match self.shutdown {
            Some((action, _)) if self.supervisor.all_stopped() => Some(action),
            _ => None,
        }
    }

    fn with_api(&mut self, now: Instant, f: impl FnOnce(&mut ApiServer, &mut ApiContext<'_>)) {
        let Some(api) = &mut self.api else { return };
        let mut ctx = ApiContext {
            supervisor: &mut self.supervisor,
            reactor: &mut self.events,
            system: &self.system,
            paths: &self.paths,
            jobs: &mut self.jobs,
            power: &mut self.power,
            now,
        };
        f(api, &mut ctx);
    }

    /// A unit wrote output: into its log (the supervisor), to log followers and to the remote
    /// syslog server.
    fn on_unit_output(&mut self, id: u64) {
        let tap = crate::log::forwards_unit_output()
            || self.api.as_ref().is_some_and(ApiServer::has_followers);
        if !tap {
            return self.supervisor.on_output(id, &mut self.events);
        }
        let mut tapped: Vec<(String, Vec<u8>)> = Vec::new();
        self.supervisor
            .on_output_to(id, &mut self.events, &mut |unit, bytes| {
                tapped.push((unit.to_string(), bytes.to_vec()))
            });
        for (unit, bytes) in tapped {
            crate::log::forward_unit_output(&unit, &bytes);
            if let Some(api) = &mut self.api {
                api.on_unit_output(&unit, &bytes, &mut self.events);
            }
        }
    }

    fn on_signals(&mut self, now: Instant) {
        for sig in self.signals.drain() {
            match sig {
                Signal::SIGCHLD => {
                    for event in crate::reaper::reap_events() {
                        match event {
                            ChildEvent::Exited(pid, status) => {
                                if !self.supervisor.on_exit(pid, status, now, &mut self.events)
                                    && !self.jobs.on_exit(pid, status)
                                {
                                    debug!("reaped orphan {pid}: {status}");
                                }
                            }
                            ChildEvent::Stopped(pid, signal) => {
                                self.supervisor.on_paused(pid, signal);
                            }
                            ChildEvent::Continued(pid) => {
                                self.supervisor.on_continued(pid, now, &mut self.events);
                            }
                        }
                    }
                }
                Signal::SIGHUP => info!("SIGHUP: reloading units is not supported yet"),
                other => match action_for(other) {
                    Some(action) => self.begin_shutdown(action, other.as_str(), now),
                    None => debug!("ignoring {other}"),
                },
            }
        }
    }

    fn begin_shutdown(&mut self, action: PowerAction, cause: &str, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        let what = match (&self.mode, action) {
            (Mode::Host { .. }, _) => "exit",
            (Mode::Pid1, PowerAction::Reboot) => "reboot",
            (Mode::Pid1, PowerAction::Poweroff) => "power off",
        };
        info!("{cause}: shutting down ({what})");
        self.shutdown = Some((action, 0));
        // A pull or prune is safe to stop anywhere (downloads resume, GC is idempotent).
        self.jobs.kill_all();
        let longest = self.supervisor.longest_stop_chain();
        self.events
            .schedule(after(now, longest + SHUTDOWN_GRACE), Timer::Shutdown);
        self.supervisor.begin_shutdown(now, &mut self.events);
    }

    fn on_shutdown_deadline(&mut self, now: Instant) {
        let Some((action, fired)) = self.shutdown else {
            return;
        };
        if self.supervisor.all_stopped() {
            return;
        }
        if fired == 0 {
            warn!("shutdown deadline passed: killing every remaining unit");
            self.supervisor.kill_all();
            self.shutdown = Some((action, 1));
            self.events
                .schedule(after(now, SHUTDOWN_GRACE), Timer::Shutdown);
        } else {
            error!("units did not exit after SIGKILL; continuing the shutdown without them");
            self.supervisor.forget_processes();
        }
    }
}

/// Lowers the system units' CPU weight for the boot's container setups: with one CPU, the
/// network unit's DHCP client and its helper forks would take half of it from the first
/// container's setup. Their start is not delayed, and an idle CPU still runs them.
/// `None` when the weight cannot be set (no cpu controller).
fn yield_to_containers(share: SystemShare) -> Option<(SystemShare, Instant)> {
    match share.set_weight(YIELDING_WEIGHT) {
        Ok(()) => {
            info!("system units at CPU weight {YIELDING_WEIGHT} while containers are set up");
            Some((share, Instant::now()))
        }
        Err(e) => {
            debug!("system units keep their CPU weight: {e}");
            None
        }
    }
}

/// Time from kernel start (PID 1) or from this process's start (host mode) until now.
fn boot_duration(mode: &Mode) -> Option<Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let now = Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32);
    match mode {
        Mode::Pid1 => Some(now),
        Mode::Host { .. } => {
            // Field 22 of /proc/self/stat: start time in clock ticks after boot.
            let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let ticks: u64 = after_comm.split_whitespace().nth(19)?.parse().ok()?;
            let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .filter(|&hz| hz > 0)? as u64;
            Some(now.saturating_sub(Duration::from_millis(ticks * 1000 / hz)))
        }
    }
}

fn display_dirs(dirs: &[std::path::PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
