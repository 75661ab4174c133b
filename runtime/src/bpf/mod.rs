//! eBPF without LLVM or libbpf: an instruction emitter with labels ([`Asm`]) and the few
//! `bpf(2)` commands a cgroup program needs ([`BpfSys`]: load, attach, query, detach).
//!
//! Berth uses it for one program type, `BPF_PROG_TYPE_CGROUP_DEVICE`, whose source is
//! generated from device rules by [`crate::cgroups::devices`]. The emitter only knows the
//! instructions that generator uses; a test interpreter runs them without root.

mod insn;
#[cfg(test)]
pub(crate) mod interp;
mod sys;

pub use insn::{to_bytes, Alu, Asm, AsmError, Cond, Insn, Label, Reg, Size};
pub use sys::{classify_load_error, replace_cgroup_program, BpfError, BpfSys, Kernel, LoadFailure};

/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
pub const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` attach type.
pub const ATTACH_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: several programs on one cgroup, all of which must allow.
pub const F_ALLOW_MULTI: u32 = 1 << 1;
