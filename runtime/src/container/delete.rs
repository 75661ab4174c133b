//! `delete`: remove a stopped container (or, with force, kill a running one first): its
//! processes, cgroup and state; then run the poststop hooks.

use super::start::log_warning;
use super::wait::wait_for_exit_of;
use super::{Container, ContainerError, Result};
use crate::hooks::{self, HookKind};
use crate::state::Status;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;

/// How long a SIGKILLed init may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Container {
    pub fn delete(mut self, force: bool) -> Result<()> {
        self.refresh();
        if matches!(self.state.status, Status::Running | Status::Paused) && !force {
            return Err(ContainerError::Running {
                id: self.state.id.clone(),
            });
        }
        if self.state.status != Status::Stopped {
            let cgroup = self.cgroup();
            match &cgroup {
                Some(cg) => cg.kill()?,
                None => {
                    // SIGKILL to a pid namespace's init takes every process in it along.
                    let _ = kill(Pid::from_raw(self.state.pid), Signal::SIGKILL);
                }
            }
            if !wait_for_exit_of(self.state.pid, self.state.pid_start_time, KILL_WAIT) {
                return Err(ContainerError::Unkillable {
                    id: self.state.id.clone(),
                    pid: self.state.pid,
                });
            }
            self.state.status = Status::Stopped;
        }
        if let Some(cg) = self.cgroup() {
            cg.kill()?;
            cg.remove()?;
        }
        let state = self.state_json();
        self.store.remove(&self.state.id)?;
        if let Err(e) = hooks::run(
            self.state.config.hooks().as_ref(),
            HookKind::Poststop,
            &state,
        ) {
            log_warning(&e.to_string());
        }
        Ok(())
    }
}
