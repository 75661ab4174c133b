//! berth-runtime: Berth's OCI container runtime library.

pub mod cgroups;
