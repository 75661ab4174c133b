//! The emergency shell: when PID 1 cannot boot, it runs busybox `sh` on the console instead
//! of exiting (which would panic the kernel), and runs it again whenever it exits.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use log::error;

pub const SHELL: &str = "/bin/sh";

pub fn run_forever(reason: &str) -> ! {
    error!("boot failed: {reason}; starting an emergency shell on the console");
    loop {
        let console = |write: bool| {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open("/dev/console")
                .map(Stdio::from)
        };
        let mut cmd = Command::new(SHELL);
        cmd.env_clear()
            .env("PATH", crate::launch::process::DEFAULT_PATH)
            .env("PS1", "berth-emergency# ");
        if let (Ok(i), Ok(o), Ok(e)) = (console(false), console(true), console(true)) {
            cmd.stdin(i).stdout(o).stderr(e);
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                crate::signals::reset_in_child()?;
                nix::unistd::setsid()?;
                // Make the console the shell's controlling terminal (job control, ctrl-c).
                libc::ioctl(0, libc::TIOCSCTTY, 1);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => {
                let shell = child.id() as i32;
                // Reap everything until the shell itself exits.
                loop {
                    match nix::sys::wait::waitpid(None, None) {
                        Ok(status) if status.pid().map(|p| p.as_raw()) == Some(shell) => break,
                        Ok(_) => {}
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(_) => break,
                    }
                }
            }
            Err(e) => {
                error!("cannot start {SHELL}: {e}");
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    }
}
