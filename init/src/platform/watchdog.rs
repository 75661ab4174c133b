//! The hardware watchdog (`/dev/watchdog`: i6300esb in QEMU, iTCO on Intel boards). PID 1
//! feeds it from its event loop; if PID 1 hangs, the machine resets, and the boot counter
//! falls back to the other slot when that boot had not been marked good.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

pub const WATCHDOG_DEVICE: &str = "/dev/watchdog";
/// The watchdog resets the machine when PID 1 has not fed it for this long.
pub const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(30);

/// `_IOWR('W', 6, int)`
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xc004_5706;

pub struct Watchdog {
    file: File,
    /// How long the hardware waits for a keepalive.
    pub timeout: Duration,
}

impl Watchdog {
    /// Opens and arms the watchdog with `timeout`; `None` when the machine has none.
    pub fn open(path: &Path, timeout: Duration) -> std::io::Result<Option<Watchdog>> {
        let file = match File::options().write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut secs = timeout.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes back one int through the pointer, which
        // is valid for the call. The driver may round the timeout; it writes what it chose.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT, &mut secs) };
        let timeout = if rc == 0 && secs > 0 {
            Duration::from_secs(secs as u64)
        } else {
            // Some drivers have a fixed timeout; assume the common default.
            Duration::from_secs(30)
        };
        Ok(Some(Watchdog { file, timeout }))
    }

    /// How often to feed it: a third of the timeout leaves room for a slow iteration.
    pub fn interval(&self) -> Duration {
        self.timeout / 3
    }

    pub fn keepalive(&mut self) -> std::io::Result<()> {
        self.file.write_all(b"\0")
    }

    /// Magic close: the driver stops the timer (used right before poweroff or reboot, which
    /// must not be cut short by a reset).
    pub fn disarm(mut self) {
        let _ = self.file.write_all(b"V");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_device_is_not_an_error_and_interval_is_a_third() {
        assert!(
            Watchdog::open(Path::new("/nonexistent/watchdog"), Duration::from_secs(30))
                .unwrap()
                .is_none()
        );
        let path = std::env::temp_dir().join(format!("berth-wdt-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        // A plain file rejects the ioctl: the default timeout is assumed.
        let mut w = Watchdog::open(&path, Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert_eq!(w.interval(), Duration::from_secs(10));
        w.keepalive().unwrap();
        w.disarm();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0V");
        std::fs::remove_file(&path).unwrap();
    }
}
