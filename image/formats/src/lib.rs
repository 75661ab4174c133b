//! berth-formats: the on-disk formats that berth-init (PID 1) reads and writes and that the
//! image builder (berth-image) produces. Only formats live here, no host tools: this crate
//! is linked into PID 1.
//!
//! [`gpt`] (read and grow the partition table), [`guid`], [`grubenv`] (the A/B boot state),
//! [`bootcfg`] (a slot's GRUB boot configuration), [`bundle`] (reading and verifying signed
//! update bundles), [`extension`] (system extensions chained after the root erofs in a slot).

pub mod bootcfg;
pub mod bundle;
pub mod extension;
pub mod gpt;
pub mod grubenv;
pub mod guid;
