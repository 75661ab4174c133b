//! berth-init: Berth's PID 1 and container supervisor.
//!
//! The binary (`main.rs`) builds the boot sequence from named phases; everything it runs lives
//! in this library so it can be tested without being PID 1.

pub mod api;
pub mod boot;
pub mod disk;
pub mod event;
pub mod graph;
pub mod launch;
pub mod log;
pub mod machine;
pub mod platform;
pub mod reaper;
pub mod run;
pub mod shutdown;
pub mod signals;
pub mod supervisor;
pub mod tomlfile;
pub mod unit;
pub mod unit_logs;
pub mod update;

/// berth-init's version, at the crate root: `run` and `update::status` both name it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    /// A fresh, empty directory for one test: `berth-<tag>-<pid>` under the temp directory
    /// (whatever an earlier run left there is removed first).
    pub fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Whether the test runs as root; says it skips when not (namespaces and mounts need it).
    pub fn running_as_root() -> bool {
        let root = nix::unistd::Uid::effective().is_root();
        if !root {
            eprintln!("skipped: needs root");
        }
        root
    }
}
