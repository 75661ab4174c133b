//! `pause` and `resume`: freeze and thaw every process of the container with the cgroup v2
//! freezer.

use super::{Container, ContainerError, Result};
use crate::state::Status;

impl Container {
    /// Freezes the container's processes; returns once the kernel reports them frozen.
    pub fn pause(&mut self) -> Result<()> {
        self.ready_to("pause", Status::can_pause)?;
        let cgroup = self
            .cgroup()
            .ok_or_else(|| ContainerError::NoCgroup(self.state.id.clone()))?;
        cgroup.freeze(true)?;
        self.refresh();
        Ok(())
    }

    /// Thaws a paused container.
    pub fn resume(&mut self) -> Result<()> {
        self.ready_to("resume", Status::can_resume)?;
        let cgroup = self
            .cgroup()
            .ok_or_else(|| ContainerError::NoCgroup(self.state.id.clone()))?;
        cgroup.freeze(false)?;
        self.refresh();
        Ok(())
    }
}
