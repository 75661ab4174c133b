//! berth-runtime: OCI container runtime library.

pub mod image;
pub mod registry;
