//! berth-runtime: Berth's OCI container runtime library.
//!
//! The supervisor (berth-init, through its engine) and the runc-compatible CLI share it; it
//! knows nothing of images, registries or networks. Mechanism lives here; the
//! CLI only parses arguments. The container init's kernel calls (mounts and devices,
//! namespaces, identity, capabilities, rlimits, seccomp) go through [`syscall::Syscall`] so
//! that their order and arguments are unit-tested without root.

pub mod bpf;
pub mod cgroups;
pub mod channel;
pub mod console;
pub mod container;
pub mod container_init;
pub mod fds;
pub mod hooks;
pub mod json_path;
pub mod keyring;
pub mod namespaces;
pub mod process;
pub mod procfs;
pub mod rootfs;
pub mod sealed;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod syscall;
pub mod trace;

pub use container::{Container, ContainerError, CreateOptions, ExecOptions, Runtime, StartMode};
pub use spec::Bundle;
