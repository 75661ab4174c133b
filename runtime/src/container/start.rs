//! `start`: let a created container's init exec the user program.

use super::{sys, Container, ContainerError, Result};
use crate::channel::Message;
use crate::hooks::{self, HookKind};
use crate::state::{Status, EXEC_FIFO};
use std::io::Read;

impl Container {
    pub fn start(&mut self) -> Result<()> {
        self.ready_to("start", Status::can_start)?;
        match self.channel.take() {
            Some(channel) => {
                let fifo = self.dir().join(EXEC_FIFO);
                std::fs::remove_file(&fifo)
                    .map_err(|source| ContainerError::Io { path: fifo, source })?;
                channel.send(&Message::Start)?;
                channel.wait_for_exec()?;
            }
            None => {
                let fifo = self.dir().join(EXEC_FIFO);
                // Opening for reading releases the init blocked opening it for writing.
                let mut f = std::fs::File::open(&fifo).map_err(|source| ContainerError::Io {
                    path: fifo.clone(),
                    source,
                })?;
                let mut byte = [0u8; 1];
                let n = f.read(&mut byte).map_err(|source| ContainerError::Io {
                    path: fifo.clone(),
                    source,
                })?;
                std::fs::remove_file(&fifo).map_err(|source| ContainerError::Io {
                    path: fifo.clone(),
                    source,
                })?;
                if n != 1 {
                    return Err(sys("start: container init exited before start")(
                        nix::errno::Errno::ESRCH,
                    ));
                }
                // The init holds its end open until exec: EOF means the program runs (or the
                // init failed, which it reports on the container's stderr).
                let io = |source| ContainerError::Io {
                    path: fifo.clone(),
                    source,
                };
                while f.read(&mut byte).map_err(io)? > 0 {}
            }
        }
        // The exec FIFO is gone: the live status is now `running`.
        self.state.status = Status::Running;
        if let Err(e) = hooks::run(
            self.state.config.hooks().as_ref(),
            HookKind::Poststart,
            &self.state_json(),
        ) {
            // The spec makes a failing poststart hook a warning, not a failed start.
            log_warning(&e.to_string());
        }
        Ok(())
    }
}

pub(crate) fn log_warning(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "berth-runtime: warning: {msg}");
}
