//! berth-init: Berth's PID 1 and container supervisor.
//!
//! The binary (`main.rs`) builds the boot sequence from named phases; everything it runs lives
//! in this library so it can be tested without being PID 1.

pub mod api;
pub mod boot;
pub mod ctl;
pub mod disk;
pub mod event;
pub mod graph;
pub mod launch;
pub mod log;
pub mod logs;
pub mod machine;
pub mod platform;
pub mod reaper;
pub mod run;
pub mod shutdown;
pub mod signals;
pub mod supervisor;
pub mod tomlfile;
pub mod unit;
