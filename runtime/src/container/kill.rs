//! `kill`: send a signal to the container's init, or to every process in it.

use super::{sys, Container, Result};
use crate::state::Status;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

impl Container {
    /// `all` of a stopped container signals what is left in its cgroup, as runc does: the
    /// runc shim sends it after the init of a container without its own pid namespace (a CRI
    /// pod's) exits. The init's pid is never signalled once it is stopped (it may be reused).
    pub fn kill(&mut self, signal: Signal, all: bool) -> Result<()> {
        self.refresh();
        let pids = if all && self.state.status == Status::Stopped {
            match self.cgroup() {
                Some(cg) => cg.all_pids()?,
                None => Vec::new(),
            }
        } else {
            self.ready_to("kill", Status::can_kill)?;
            if all {
                self.pids()?
            } else {
                vec![self.state.pid]
            }
        };
        for pid in pids {
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(sys(format!("kill {pid} with {signal}"))(e)),
            }
        }
        Ok(())
    }
}

/// Parses a signal as runc does: `KILL`, `SIGKILL`, `9`.
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}
