//! PID 1's hooks into the machine, driven by the event loop: the ACPI power button (a press
//! is an ordered poweroff), the hardware watchdog (fed on a timer), and marking the boot good
//! in grubenv once every critical unit is healthy.

pub mod bootgood;
pub mod powerbutton;
pub mod watchdog;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_image::grubenv::Slot;
use log::{error, info, warn};

use crate::disk::blockdev::BlockDevices;
use crate::event::{after, Key, Reactor, Timer};
use crate::supervisor::state::{State, UnitStatus};
use bootgood::Marked;
use powerbutton::PowerButton;
use watchdog::Watchdog;

/// The watchdog resets the machine when PID 1 has not fed it for this long.
const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(30);
/// Where the ESP is mounted while grubenv is rewritten.
const ESP_MOUNT: &str = "/run/berth/boot";

#[derive(Default)]
pub struct Platform {
    power_button: Option<PowerButton>,
    watchdog: Option<Watchdog>,
    /// The slot to mark good once critical units are healthy; `None` once done (or when the
    /// machine was not booted by Berth's GRUB).
    unmarked: Option<Slot>,
}

impl Platform {
    /// Host mode: no machine to drive.
    pub fn none() -> Platform {
        Platform::default()
    }

    /// PID 1 on a machine booted from a Berth disk: finds the power button and the watchdog,
    /// and the slot GRUB booted. Elsewhere (PID 1 in a test's namespaces) it drives nothing.
    pub fn for_pid1() -> Platform {
        let Some(slot) = bootgood::booted_slot_of_this_machine() else {
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
        let watchdog = match Watchdog::open(Path::new("/dev/watchdog"), WATCHDOG_TIMEOUT) {
            Ok(Some(w)) => {
                info!("watchdog armed: {}s", w.timeout.as_secs());
                Some(w)
            }
            Ok(None) => None,
            Err(e) => {
                warn!("watchdog: {e}");
                None
            }
        };
        Platform {
            power_button,
            watchdog,
            unmarked: Some(slot),
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

pub fn critical_units_healthy(statuses: &[UnitStatus]) -> bool {
    statuses
        .iter()
        .filter(|s| s.critical)
        .all(|s| match s.health {
            Some(_) => s.state == State::Healthy,
            None => matches!(s.state, State::Running | State::Healthy),
        })
}
