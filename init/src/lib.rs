//! berth-init: Berth's PID 1 and container supervisor.

pub mod blockdev;
pub mod bootgood;
pub mod configdrive;
pub mod powerbutton;
pub mod statefs;
pub mod watchdog;
