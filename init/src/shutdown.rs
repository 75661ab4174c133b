//! The end of PID 1: after the supervisor stopped every unit in order, kill what is left,
//! sync, unmount, and reboot or power off. Never returns.

use std::time::{Duration, Instant};

use log::{info, warn};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

/// What a shutdown ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Poweroff,
    Reboot,
}

/// Signal conventions of PID 1: ctrl-alt-del (SIGINT with CAD off) reboots; SIGTERM and
/// SIGPWR (power failure, ACPI) power off; SIGUSR1 reboots.
pub fn action_for(signal: Signal) -> Option<PowerAction> {
    match signal {
        Signal::SIGINT | Signal::SIGUSR1 => Some(PowerAction::Reboot),
        Signal::SIGTERM | Signal::SIGPWR => Some(PowerAction::Poweroff),
        _ => None,
    }
}

/// Mount points to unmount, innermost first; the kernel filesystems and `/` stay (the root is
/// remounted read-only instead).
pub fn unmount_order(proc_mounts: &str) -> Vec<String> {
    const KEEP: [&str; 5] = ["/", "/proc", "/sys", "/dev", "/run"];
    let mut targets: Vec<String> = proc_mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|t| t.replace("\\040", " "))
        .filter(|t| !KEEP.contains(&t.as_str()))
        .filter(|t| {
            !["/proc/", "/sys/", "/dev/"]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .collect();
    targets.reverse();
    targets.dedup();
    targets
}

/// Waits (event-driven, on SIGCHLD) until no child is left or `deadline` passes.
fn reap_until(deadline: Instant) {
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    loop {
        crate::reaper::reap();
        if matches!(
            nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Err(nix::errno::Errno::ECHILD)
        ) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: sigtimedwait with a valid set and timespec; SIGCHLD is blocked.
        unsafe { libc::sigtimedwait(chld.as_ref(), std::ptr::null_mut(), &ts) };
    }
}

pub fn finish_pid1(action: PowerAction) -> ! {
    info!("terminating remaining processes");
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    reap_until(Instant::now() + Duration::from_secs(3));
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap_until(Instant::now() + Duration::from_secs(2));
    nix::unistd::sync();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for target in unmount_order(&mounts) {
        if let Err(e) = nix::mount::umount2(target.as_str(), nix::mount::MntFlags::empty()) {
            warn!("cannot unmount {target}: {e}; remounting read-only");
            let flags = nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY;
            let _ = nix::mount::mount(
                None::<&str>,
                target.as_str(),
                None::<&str>,
                flags,
                None::<&str>,
            );
        }
    }
    let ro = nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY;
    let _ = nix::mount::mount(None::<&str>, "/", None::<&str>, ro, None::<&str>);
    nix::unistd::sync();
    info!(
        "{}",
        if action == PowerAction::Reboot {
            "rebooting"
        } else {
            "powering off"
        }
    );
    let result = match action {
        PowerAction::Reboot => nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT),
        PowerAction::Poweroff => {
            nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF)
        }
    };
    warn!("reboot(2) failed: {result:?}");
    // PID 1 must not exit.
    loop {
        nix::unistd::pause();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_power_actions() {
        assert_eq!(action_for(Signal::SIGINT), Some(PowerAction::Reboot));
        assert_eq!(action_for(Signal::SIGPWR), Some(PowerAction::Poweroff));
        assert_eq!(action_for(Signal::SIGTERM), Some(PowerAction::Poweroff));
        assert_eq!(action_for(Signal::SIGCHLD), None);
    }

    #[test]
    fn unmounts_innermost_first_and_keeps_kernel_filesystems() {
        let mounts = "/dev/root / erofs ro 0 0\nproc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n\
                      cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n/dev/vda4 /var/lib/berth ext4 rw 0 0\n\
                      overlay /var/lib/berth/containers/x/rootfs overlay rw 0 0\ntmpfs /run tmpfs rw 0 0\n\
                      overlay /run/berth/containers/y/rootfs overlay rw 0 0\n";
        // A read-only container's root on /run still has its layers on the state partition.
        assert_eq!(
            unmount_order(mounts),
            [
                "/run/berth/containers/y/rootfs",
                "/var/lib/berth/containers/x/rootfs",
                "/var/lib/berth"
            ]
        );
    }
}
