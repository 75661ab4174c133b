//! berth-runtime: Berth's OCI container runtime library.

pub mod cgroups;
pub mod image;
pub mod registry;
