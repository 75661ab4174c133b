//! The supervisor's entry point: create and start in one call, with a step in between for
//! work that needs the init's pid (network setup), and stdio on descriptors the caller owns.

use super::{Container, CreateOptions, Result, Runtime, StartMode};
use crate::spec::Bundle;
use std::os::fd::RawFd;

impl Runtime {
    /// Creates and starts container `id`. Its init is a child of the caller (wait for
    /// [`Container::pid`] with waitpid); its stdin, stdout and stderr are `stdio`. `prepare`
    /// runs after the namespaces exist and before the program starts (e.g. attach the
    /// network to `/proc/PID/ns/net`); if it fails the container is deleted.
    ///
    /// The caller must be single-threaded (berth-init is), as for every verb that clones.
    pub fn launch(
        &self,
        id: &str,
        bundle: &Bundle,
        stdio: [RawFd; 3],
        prepare: impl FnOnce(&Container) -> Result<()>,
    ) -> Result<Container> {
        let opts = CreateOptions {
            id,
            console_socket: None,
            pid_file: None,
            no_pivot: false,
            stdio: Some(stdio),
            start: StartMode::Channel,
        };
        let mut container = self.create(bundle, &opts)?;
        let started = prepare(&container).and_then(|()| container.start());
        match started {
            Ok(()) => Ok(container),
            Err(e) => {
                let _ = container.delete(true);
                Err(e)
            }
        }
    }
}
