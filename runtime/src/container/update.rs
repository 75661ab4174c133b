//! `update`: new resource limits and device rules for a live container.

use super::{Container, ContainerError, Result};
use crate::cgroups::Resources;
use crate::state::Status;
use oci_spec::runtime::LinuxResources;

impl Container {
    /// Applies `resources` to the container's cgroup (device rules replace the program
    /// attached before) and records them in its state. Sections absent from `resources` keep
    /// their values. A bad value is reported before anything changes.
    pub fn update(&mut self, resources: &LinuxResources) -> Result<()> {
        self.ready_to("update", Status::can_update)?;
        let limits = Resources::from_oci(resources)?;
        let cgroup = self
            .cgroup()
            .ok_or_else(|| ContainerError::NoCgroup(self.state.id.clone()))?;
        cgroup.apply(&limits)?;
        let linux = self
            .state
            .config
            .linux_mut()
            .get_or_insert_with(Default::default);
        let merged = merge(linux.resources().clone().unwrap_or_default(), resources);
        linux.set_resources(Some(merged));
        self.store.save(&self.state)?;
        Ok(())
    }
}

/// `old` with every section `new` sets replaced (an empty device list, which changes no
/// program, replaces nothing either).
fn merge(mut old: LinuxResources, new: &LinuxResources) -> LinuxResources {
    if new.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        old.set_devices(new.devices().clone());
    }
    if new.memory().is_some() {
        old.set_memory(*new.memory());
    }
    if new.cpu().is_some() {
        old.set_cpu(new.cpu().clone());
    }
    if new.pids().is_some() {
        old.set_pids(*new.pids());
    }
    if new.block_io().is_some() {
        old.set_block_io(new.block_io().clone());
    }
    if new.unified().is_some() {
        old.set_unified(new.unified().clone());
    }
    old
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_replaces_only_the_sections_given() {
        let old: LinuxResources = serde_json::from_str(
            r#"{"devices":[{"allow":false,"access":"rwm"}],"pids":{"limit":10},"unified":{"a.b":"1"}}"#,
        )
        .unwrap();
        let new: LinuxResources = serde_json::from_str(
            r#"{"devices":[{"allow":true,"access":"r"}],"memory":{"limit":4096}}"#,
        )
        .unwrap();
        let m = merge(old, &new);
        assert!(m.devices().as_ref().unwrap()[0].allow());
        assert_eq!(m.pids().as_ref().unwrap().limit(), 10);
        assert_eq!(m.memory().as_ref().unwrap().limit(), Some(4096));
        assert!(m.unified().as_ref().unwrap().contains_key("a.b"));
        let kept = merge(
            m.clone(),
            &serde_json::from_str(r#"{"devices":[]}"#).unwrap(),
        );
        assert_eq!(kept.devices(), m.devices());
    }
}
