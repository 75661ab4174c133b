//! berth-init: Berth's PID 1 and container supervisor.
//!
//! The binary (`main.rs`) builds the boot sequence from named phases; everything it runs lives
//! in this library so it can be tested without being PID 1.

pub mod tomlfile;
pub mod unit;
pub mod graph;
pub mod event;
pub mod reaper;
pub mod signals;
pub mod launch;
pub mod logs;
pub mod supervisor;
pub mod api;
pub mod log;
pub mod machine;
pub mod boot;
pub mod run;
pub mod shutdown;
