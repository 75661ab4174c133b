//! PID 1's hooks into the machine, driven by the event loop: the ACPI power button (a press
//! is an ordered poweroff), the hardware watchdog (fed on a timer), and marking the boot good
//! in grubenv once every critical unit is healthy. On an attempt of a newly installed slot
//! (`berth.trying=1`), critical units still unhealthy at the machine config's
//! `update.health_deadline` retire the slot and reboot into the other one.

pub mod bootgood;
pub mod devmapper;
pub mod powerbutton;
pub mod watchdog;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_formats::grubenv::Slot;
use log::{error, info, warn};

use crate::disk::blockdev::BlockDevices;
use crate::event::{after, Key, Reactor, Timer};
use crate::machine::UpdateSettings;
use crate::supervisor::state::{State, UnitStatus};
use crate::update::failure::Failure;
use bootgood::{Marked, Retired};
use powerbutton::PowerButton;
use watchdog::Watchdog;

/// Where the ESP is mounted while grubenv is rewritten.
const ESP_MOUNT: &str = "/run/berth/boot";

#[derive(Default)]
pub struct Platform {
    power_button: Option<PowerButton>,
    watchdog: Option<Watchdog>,
    /// The slot to mark good once critical units are healthy; `None` once done (or when the
    /// machine was not booted by Berth's GRUB).
    unmarked: Option<Slot>,
    /// This boot is an attempt of a new slot (GRUB's `berth.trying=1`).
    trying: bool,
    health_deadline: Duration,
    /// `berth.fault=hang`: fault injection for rollback tests (a kernel argument, so only a
    /// signed bundle's boot arguments can set it): PID 1 stops right after arming the
    /// watchdog, as a hung PID 1 would.
    hang: bool,
}

impl Platform {
    /// Host mode: no machine to drive.
    pub fn none() -> Platform {
        Platform::default()
    }

    /// PID 1 on a machine booted from a Berth disk: finds the power button and the watchdog,
    /// and the slot GRUB booted. Elsewhere (PID 1 in a test's namespaces) it drives nothing.
    pub fn for_pid1(update: UpdateSettings, watchdog: Option<Watchdog>) -> Platform {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let Some(slot) = bootgood::booted_slot(&cmdline) else {
            info!("not booted from a Berth disk: no power button, watchdog or boot marking");
            return Platform::none();
        };
        let power_button =
            match PowerButton::open(Path::new("/sys/class/input"), Path::new("/dev/input")) {
                Ok(Some(b)) => {
                    info!("power button: {}", b.path.display());
                    Some(b)
                }
                Ok(None) => {
                    info!("no ACPI power button");
                    None
                }
                Err(e) => {
                    warn!("power button: {e}");
                    None
                }
            };
        let trying = bootgood::trying_boot(&cmdline);
        if trying {
            info!(
                "slot {slot} is new: its critical units have {}s to become healthy",
                update.health_deadline.as_secs()
            );
        }
        Platform {
            power_button,
            watchdog,
            unmarked: Some(slot),
            trying,
            health_deadline: update.health_deadline,
            hang: cmdline.split_whitespace().any(|w| w == "berth.fault=hang"),
        }
    }

    /// Registers the power button and the first watchdog feed with the loop.
    pub fn attach(&mut self, now: Instant, r: &mut dyn Reactor) {
        if let Some(b) = &self.power_button {
            if let Err(e) = r.watch(b.fd(), Key::PowerButton, false) {
                warn!("power button: cannot watch: {e}");
            }
        }
        self.on_watchdog(now, r);
        if self.trying {
            r.schedule(after(now, self.health_deadline), Timer::HealthDeadline);
            self.record_attempt();
        }
        if self.hang {
            error!("berth.fault=hang: PID 1 stops here with the watchdog armed");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }

    /// True when the power button was pressed.
    pub fn on_power_button(&mut self) -> bool {
        self.power_button.as_mut().is_some_and(PowerButton::pressed)
    }

    /// Feeds the watchdog and schedules the next feed.
    pub fn on_watchdog(&mut self, now: Instant, r: &mut dyn Reactor) {
        if let Some(w) = &mut self.watchdog {
            if let Err(e) = w.keepalive() {
                error!("watchdog keepalive: {e}");
            }
            r.schedule(after(now, w.interval()), Timer::Watchdog);
        }
    }

    /// Whether the boot still waits to be marked good.
    pub fn awaiting_good(&self) -> bool {
        self.unmarked.is_some()
    }

    /// Marks the boot good once every critical unit is healthy (or running, when it has no
    /// health check).
    pub fn check_boot_good(&mut self, statuses: &[UnitStatus]) {
        let Some(slot) = self.unmarked else { return };
        if !critical_units_healthy(statuses) {
            return;
        }
        self.unmarked = None;
        match bootgood::mark(&BlockDevices::system(), slot, Path::new(ESP_MOUNT)) {
            Ok(Marked::Now) => info!("boot of slot {slot} marked good"),
            Ok(Marked::Already) => {
                info!("boot of slot {slot} marked good (the slot already was: nothing written)")
            }
            Err(bootgood::BootGoodError::Busy) => {
                info!("boot state busy (an update is writing it); marking slot {slot} good later");
                self.unmarked = Some(slot);
            }
            Err(e) => error!("cannot mark the boot of slot {slot} good: {e}"),
        }
    }
}

impl Platform {
    /// On an attempt of a new slot, records that PID 1 got this far: if the slot is retired
    /// later without a better reason, this one tells that the kernel and root were fine and
    /// the boot stopped afterwards. (A new slot's boot only: it costs a write to the ESP.)
    fn record_attempt(&self) {
        let Some(slot) = self.unmarked else { return };
        let failure = Failure {
            version: crate::update::status::running_release().version,
            reason: "Berth's PID 1 started, but the boot stopped before it was marked good \
                     (PID 1 hung and the watchdog reset the machine, crashed, or the power \
                     was lost)"
                .into(),
        };
        if let Err(e) = bootgood::with_esp(&BlockDevices::system(), Path::new(ESP_MOUNT), |esp| {
            bootgood::record_in(esp, slot, &failure)
        }) {
            warn!("cannot record the attempt of slot {slot}: {e}");
        }
    }

    /// The health deadline of a new slot's boot: if the boot is still not good, the slot is
    /// retired (with the unhealthy units recorded as the reason) and `true` asks for a
    /// reboot now. A good slot is never rolled back by this; it only complains.
    pub fn on_health_deadline(
        &mut self,
        statuses: &[UnitStatus],
        now: Instant,
        r: &mut dyn Reactor,
    ) -> bool {
        let Some(slot) = self.unmarked else {
            return false;
        };
        let unhealthy: Vec<&str> = statuses
            .iter()
            .filter(|s| s.critical && !unit_healthy(s))
            .map(|s| s.name.as_str())
            .collect();
        let failure = Failure {
            version: crate::update::status::running_release().version,
            reason: format!(
                "critical units not healthy within {}s: {}",
                self.health_deadline.as_secs(),
                unhealthy.join(", ")
            ),
        };
        let retired = bootgood::with_esp(&BlockDevices::system(), Path::new(ESP_MOUNT), |esp| {
            bootgood::retire_in(esp, slot, &failure)
        });
        match retired {
            Ok(Retired::Now) => {
                error!(
                    "slot {slot} retired: {}; rebooting into slot {}",
                    failure.reason,
                    slot.other()
                );
                self.unmarked = None;
                true
            }
            Ok(Retired::NotNew) => {
                warn!("{}; slot {slot} is not new, so it stays", failure.reason);
                false
            }
            Err(bootgood::BootGoodError::Busy) => {
                // An update holds the boot state for a moment: ask again shortly.
                r.schedule(after(now, Duration::from_secs(5)), Timer::HealthDeadline);
                false
            }
            Err(e) => {
                // The boot state cannot be changed: the watchdog and GRUB's counting remain.
                error!(
                    "cannot retire slot {slot} ({}): {e}; rebooting",
                    failure.reason
                );
                true
            }
        }
    }
}

/// A fatal boot error on an attempt of a new slot: records why on the ESP and reboots, so
/// that GRUB counts the attempt (and falls back once they are used up) rather than leaving
/// the machine in an emergency shell. Returns only when this boot is not such an attempt.
pub fn end_failed_attempt(reason: &str) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(slot) = bootgood::booted_slot(&cmdline) else {
        return;
    };
    if !bootgood::trying_boot(&cmdline) {
        return;
    }
    let failure = Failure {
        version: crate::update::status::running_release().version,
        reason: format!("boot failed: {reason}"),
    };
    if let Err(e) = bootgood::with_esp(&BlockDevices::system(), Path::new(ESP_MOUNT), |esp| {
        bootgood::record_in(esp, slot, &failure)
    }) {
        error!("cannot record the failed boot of slot {slot}: {e}");
    }
    error!("boot of new slot {slot} failed: {reason}; rebooting (GRUB counts the attempt)");
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
}

fn unit_healthy(s: &UnitStatus) -> bool {
    match s.health {
        Some(_) => s.state == State::Healthy,
        None => matches!(s.state, State::Running | State::Healthy),
    }
}

pub fn critical_units_healthy(statuses: &[UnitStatus]) -> bool {
    statuses.iter().filter(|s| s.critical).all(unit_healthy)
}
