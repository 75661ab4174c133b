//! berth-runtime: OCI container runtime library.
