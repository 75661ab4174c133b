//! Expedited RCU grace periods while the boot's containers come up.
//!
//! Kernel paths that free shared structures wait for an RCU grace period
//! (`synchronize_rcu`): closing a packet socket (the DHCP client does, before its lease),
//! changing a link, moving a process between cgroups. A normal grace period waits for every
//! CPU to pass a quiescent state, several scheduler ticks; an expedited one forces them with
//! interrupts and ends within microseconds of work on a small machine. The kernel expedites
//! them during its own start and stops when it runs init. PID 1 does the same for the boot:
//! expedited from its first phase until the boot has settled, then back to normal (their cost,
//! interrupts to every CPU, then weighs on a busy many-core machine). A kernel command line
//! that asked for them already (`rcupdate.rcu_expedited=1`) keeps them.

use std::io;
use std::path::{Path, PathBuf};

/// The kernel's switch (`CONFIG_TREE_RCU`).
pub const KNOB: &str = "/sys/kernel/rcu_expedited";

/// Grace periods PID 1 expedited; [`Expedited::end`] puts them back.
#[derive(Debug)]
pub struct Expedited {
    knob: PathBuf,
}

/// Expedites grace periods through `knob`. `None` when they were already (the command
/// line's choice, left alone) or the kernel has no such switch.
pub fn expedite(knob: &Path) -> io::Result<Option<Expedited>> {
    let now = match std::fs::read_to_string(knob) {
        Ok(v) => v,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if now.trim() != "0" {
        return Ok(None);
    }
    std::fs::write(knob, "1")?;
    Ok(Some(Expedited {
        knob: knob.to_path_buf(),
    }))
}

impl Expedited {
    /// Normal grace periods again.
    pub fn end(self) -> io::Result<()> {
        std::fs::write(&self.knob, "0")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn expedited_until_ended_unless_the_command_line_asked_already() {
        let dir = crate::testutil::scratch_dir("rcu");
        let knob = dir.join("rcu_expedited");
        std::fs::write(&knob, "0\n").unwrap();
        let on = expedite(&knob).unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(&knob).unwrap(), "1");
        on.end().unwrap();
        assert_eq!(std::fs::read_to_string(&knob).unwrap(), "0");

        std::fs::write(&knob, "1\n").unwrap();
        assert!(expedite(&knob).unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&knob).unwrap(), "1\n");

        assert!(expedite(&dir.join("absent")).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
