//! Subcommands of the berth-runtime binary.

pub mod image;
