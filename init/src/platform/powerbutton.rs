//! The ACPI power button, read from its input device (`/dev/input/eventN` named
//! "Power Button"): a press asks PID 1 for an ordered poweroff.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: timeval (16), type (2), code (2), value (4).
const EVENT_SIZE: usize = 24;

pub struct PowerButton {
    file: File,
    pub path: PathBuf,
    /// Bytes of a partially read event.
    partial: Vec<u8>,
}

impl PowerButton {
    /// Opens the first input device named "Power Button" (non-blocking); `None` when the
    /// machine has none.
    pub fn open(sys_class_input: &Path, dev_input: &Path) -> std::io::Result<Option<PowerButton>> {
        let mut names: Vec<String> = match std::fs::read_dir(sys_class_input) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("event"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        names.sort();
        for name in names {
            let label = std::fs::read_to_string(sys_class_input.join(&name).join("device/name"))
                .unwrap_or_default();
            if label.trim() == "Power Button" {
                let path = dev_input.join(&name);
                let file = File::options()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(&path)?;
                return Ok(Some(PowerButton {
                    file,
                    path,
                    partial: Vec::new(),
                }));
            }
        }
        Ok(None)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Reads every pending event; true when the power key was pressed.
    pub fn pressed(&mut self) -> bool {
        let mut buf = [0u8; EVENT_SIZE * 16];
        let mut pressed = false;
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    let whole = self.partial.len() / EVENT_SIZE * EVENT_SIZE;
                    pressed |= contains_power_press(&self.partial[..whole]);
                    self.partial.drain(..whole);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        pressed
    }
}

/// True when `events` (whole `input_event`s) hold a power key press.
pub fn contains_power_press(events: &[u8]) -> bool {
    events.chunks_exact(EVENT_SIZE).any(|e| {
        let kind = u16::from_ne_bytes([e[16], e[17]]);
        let code = u16::from_ne_bytes([e[18], e[19]]);
        let value = i32::from_ne_bytes([e[20], e[21], e[22], e[23]]);
        kind == EV_KEY && code == KEY_POWER && value == 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&kind.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        let release = event(EV_KEY, KEY_POWER, 0);
        let sync = event(0, 0, 0);
        let other = event(EV_KEY, 30, 1);
        assert!(!contains_power_press(
            &[release.clone(), sync.clone(), other].concat()
        ));
        assert!(contains_power_press(
            &[sync, event(EV_KEY, KEY_POWER, 1), release].concat()
        ));
    }

    #[test]
    fn finds_the_device_by_name() {
        let root = std::env::temp_dir().join(format!("berth-pwrbtn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (ev, name) in [("event0", "AT Keyboard"), ("event1", "Power Button")] {
            std::fs::create_dir_all(root.join("sys").join(ev).join("device")).unwrap();
            std::fs::write(
                root.join("sys").join(ev).join("device/name"),
                format!("{name}\n"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/event1"), event(EV_KEY, KEY_POWER, 1)).unwrap();
        let mut b = PowerButton::open(&root.join("sys"), &root.join("dev"))
            .unwrap()
            .unwrap();
        assert_eq!(b.path, root.join("dev/event1"));
        assert!(b.pressed());
        assert!(PowerButton::open(&root.join("none"), &root)
            .unwrap()
            .is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
