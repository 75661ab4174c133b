//! The `bpf(2)` commands for cgroup programs, behind [`BpfSys`] so callers can be tested
//! without the kernel, and the one sequence Berth needs: replace the programs of a cgroup.

use super::insn::{to_bytes, Insn};
use super::F_ALLOW_MULTI;
use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

// bpf(2) commands.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;

/// Verifier log kept when a load fails (the kernel truncates beyond it).
const LOG_SIZE: usize = 64 * 1024;
/// Programs a query asks for at first; a larger answer is asked again at its size.
const QUERY_CAPACITY: usize = 16;

/// A failed `BPF_PROG_LOAD`: the errno and what the verifier said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    pub errno: Errno,
    pub log: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BpfError {
    /// The kernel cannot run the program type at all (or refuses this process).
    #[error("cgroup eBPF programs are unavailable: {reason}")]
    Unavailable { reason: String },
    /// The program reached the verifier and was refused: a bug in the generator.
    #[error("the kernel verifier rejected the program ({errno}): {log}")]
    Rejected { errno: Errno, log: String },
    #[error("bpf({op}): {errno}")]
    Sys { op: &'static str, errno: Errno },
}

/// Tells "this kernel cannot do it" from "the program is wrong": an unknown program type
/// fails with EINVAL before the verifier writes anything; a refused program leaves a log.
pub fn classify_load_error(f: LoadFailure) -> BpfError {
    match f.errno {
        Errno::ENOSYS => BpfError::Unavailable {
            reason: "the kernel has no bpf(2) (CONFIG_BPF_SYSCALL is off)".into(),
        },
        Errno::EPERM => BpfError::Unavailable {
            reason: "loading eBPF programs is not permitted here (needs CAP_BPF or \
                     CAP_SYS_ADMIN, and no seccomp filter blocking bpf(2))"
                .into(),
        },
        Errno::EINVAL if f.log.trim().is_empty() => BpfError::Unavailable {
            reason: "the kernel does not know the cgroup device program type \
                     (CONFIG_CGROUP_BPF is off)"
                .into(),
        },
        errno => BpfError::Rejected {
            errno,
            // The end of the log says what failed.
            log: tail(&f.log, 2000),
        },
    }
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim_end_matches(['\0', '\n']);
    match s.char_indices().rev().nth(max) {
        Some((i, _)) => format!("...{}", &s[i..]),
        None => s.to_string(),
    }
}

/// The kernel calls of cgroup programs.
pub trait BpfSys {
    /// Loads a program of `prog_type` named `name` (15 characters at most, `[A-Za-z0-9_.]`).
    fn prog_load(&self, prog_type: u32, name: &str, insns: &[Insn])
        -> Result<OwnedFd, LoadFailure>;
    /// Attaches `prog` to the cgroup `target`.
    fn prog_attach(
        &self,
        target: BorrowedFd<'_>,
        prog: BorrowedFd<'_>,
        attach_type: u32,
        flags: u32,
    ) -> Result<(), Errno>;
    fn prog_detach(
        &self,
        target: BorrowedFd<'_>,
        prog: BorrowedFd<'_>,
        attach_type: u32,
    ) -> Result<(), Errno>;
    /// Ids of the programs attached to `target` itself (not inherited ones).
    fn prog_query(&self, target: BorrowedFd<'_>, attach_type: u32) -> Result<Vec<u32>, Errno>;
    /// A file descriptor for a loaded program.
    fn prog_fd_by_id(&self, id: u32) -> Result<OwnedFd, Errno>;
}

/// Loads `insns` and makes it the only program of `attach_type` on the cgroup `target`: the
/// new one is attached (`BPF_F_ALLOW_MULTI`) before the old ones are detached, so there is
/// never a moment without a filter (both apply in between: more strict, never less).
pub fn replace_cgroup_program(
    sys: &dyn BpfSys,
    target: BorrowedFd<'_>,
    prog_type: u32,
    attach_type: u32,
    name: &str,
    insns: &[Insn],
) -> Result<(), BpfError> {
    let prog = sys
        .prog_load(prog_type, name, insns)
        .map_err(classify_load_error)?;
    let old = sys
        .prog_query(target, attach_type)
        .map_err(|errno| attach_error("BPF_PROG_QUERY", errno))?;
    sys.prog_attach(target, prog.as_fd(), attach_type, F_ALLOW_MULTI)
        .map_err(|errno| attach_error("BPF_PROG_ATTACH", errno))?;
    for id in old {
        let fd = match sys.prog_fd_by_id(id) {
            Ok(fd) => fd,
            // Detached and freed meanwhile.
            Err(Errno::ENOENT) => continue,
            Err(errno) => {
                return Err(BpfError::Sys {
                    op: "BPF_PROG_GET_FD_BY_ID",
                    errno,
                })
            }
        };
        match sys.prog_detach(target, fd.as_fd(), attach_type) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => {
                return Err(BpfError::Sys {
                    op: "BPF_PROG_DETACH",
                    errno,
                })
            }
        }
    }
    Ok(())
}

fn attach_error(op: &'static str, errno: Errno) -> BpfError {
    match errno {
        Errno::ENOSYS => BpfError::Unavailable {
            reason: "the kernel has no bpf(2) (CONFIG_BPF_SYSCALL is off)".into(),
        },
        // cgroup_get_from_fd: the target is not a directory of the v2 hierarchy.
        Errno::EBADF => BpfError::Unavailable {
            reason: "the target is not a cgroup v2 directory".into(),
        },
        // Flags or attach type unknown to this kernel.
        Errno::EINVAL | Errno::EOPNOTSUPP => BpfError::Unavailable {
            reason: format!("{op} of a cgroup device program is not supported ({errno})"),
        },
        errno => BpfError::Sys { op, errno },
    }
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH and BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// `union bpf_attr` for BPF_PROG_QUERY.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// bpf(2) with an attribute struct; the kernel zero-fills the part of its union it knows and
/// the struct does not cover.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<libc::c_long, Errno> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] struct of the layout the kernel expects
    // for `cmd`, and its size is passed along; pointers inside it stay valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    Errno::result(r)
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // Open file descriptors are never negative.
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

impl BpfSys for Kernel {
    fn prog_load(
        &self,
        prog_type: u32,
        name: &str,
        insns: &[Insn],
    ) -> Result<OwnedFd, LoadFailure> {
        let code = to_bytes(insns);
        let license = c"Apache-2.0";
        let mut attr = LoadAttr {
            prog_type,
            insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..LoadAttr::default()
        };
        let n = name.len().min(attr.prog_name.len() - 1);
        attr.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
        // First without a log (the common, fast case); on failure again with one.
        let errno = match bpf(BPF_PROG_LOAD, &mut attr) {
            // SAFETY: BPF_PROG_LOAD returns a new file descriptor this process owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            Err(e) => e,
        };
        if errno != Errno::EINVAL && errno != Errno::EACCES {
            return Err(LoadFailure {
                errno,
                log: String::new(),
            });
        }
        let mut log = vec![0u8; LOG_SIZE];
        attr.log_level = 1;
        attr.log_size = LOG_SIZE as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
        match bpf(BPF_PROG_LOAD, &mut attr) {
            // SAFETY: as above.
            Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            Err(errno) => {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                Err(LoadFailure {
                    errno,
                    log: String::from_utf8_lossy(&log[..end]).into_owned(),
                })
            }
        }
    }

    fn prog_attach(
        &self,
        target: BorrowedFd<'_>,
        prog: BorrowedFd<'_>,
        attach_type: u32,
        flags: u32,
    ) -> Result<(), Errno> {
        let mut attr = AttachAttr {
            target_fd: fd_u32(target),
            attach_bpf_fd: fd_u32(prog),
            attach_type,
            attach_flags: flags,
            ..AttachAttr::default()
        };
        bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
    }

    fn prog_detach(
        &self,
        target: BorrowedFd<'_>,
        prog: BorrowedFd<'_>,
        attach_type: u32,
    ) -> Result<(), Errno> {
        let mut attr = AttachAttr {
            target_fd: fd_u32(target),
            attach_bpf_fd: fd_u32(prog),
            attach_type,
            ..AttachAttr::default()
        };
        bpf(BPF_PROG_DETACH, &mut attr).map(drop)
    }

    fn prog_query(&self, target: BorrowedFd<'_>, attach_type: u32) -> Result<Vec<u32>, Errno> {
        let mut capacity = QUERY_CAPACITY;
        // Bounded: a second round asks for exactly as many as the first reported.
        for _ in 0..3 {
            let mut ids = vec![0u32; capacity];
            let mut attr = QueryAttr {
                target_fd: fd_u32(target),
                attach_type,
                prog_ids: ids.as_mut_ptr() as u64,
                prog_cnt: capacity as u32,
                ..QueryAttr::default()
            };
            match bpf(BPF_PROG_QUERY, &mut attr) {
                Ok(_) => {
                    ids.truncate(attr.prog_cnt as usize);
                    return Ok(ids);
                }
                // More programs than room: prog_cnt holds how many there are.
                Err(Errno::ENOSPC) => capacity = attr.prog_cnt as usize,
                Err(e) => return Err(e),
            }
        }
        Err(Errno::ENOSPC)
    }

    fn prog_fd_by_id(&self, id: u32) -> Result<OwnedFd, Errno> {
        let mut attr = GetFdAttr {
            prog_id: id,
            ..GetFdAttr::default()
        };
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
        // SAFETY: the call returns a new file descriptor this process owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn attr_layouts_match_the_kernel() {
        // Offsets from include/uapi/linux/bpf.h.
        assert_eq!(std::mem::offset_of!(LoadAttr, log_buf), 32);
        assert_eq!(std::mem::offset_of!(LoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(LoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::size_of::<LoadAttr>(), 72);
        assert_eq!(std::mem::offset_of!(AttachAttr, replace_bpf_fd), 16);
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_ids), 16);
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_cnt), 24);
    }

    #[test]
    fn load_errors_tell_missing_support_from_bad_programs() {
        let f = |errno, log: &str| {
            classify_load_error(LoadFailure {
                errno,
                log: log.into(),
            })
        };
        assert!(matches!(f(Errno::ENOSYS, ""), BpfError::Unavailable { .. }));
        assert!(matches!(f(Errno::EPERM, ""), BpfError::Unavailable { .. }));
        let e = f(Errno::EINVAL, "");
        assert!(e.to_string().contains("CONFIG_CGROUP_BPF"), "{e}");
        let e = f(Errno::EINVAL, "0: (95) exit\nR0 !read_ok\n");
        assert!(
            matches!(&e, BpfError::Rejected { log, .. } if log.ends_with("R0 !read_ok")),
            "{e:?}"
        );
        let long = "x".repeat(5000);
        match f(Errno::EACCES, &long) {
            BpfError::Rejected { log, .. } => assert!(log.starts_with("...") && log.len() < 2100),
            other => panic!("{other:?}"),
        }
    }

    /// Records the calls; file descriptors are /dev/null opens standing for programs.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
        attached: Vec<u32>,
        fail_attach: Option<Errno>,
    }

    fn null_fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    impl BpfSys for Recorder {
        fn prog_load(&self, t: u32, name: &str, insns: &[Insn]) -> Result<OwnedFd, LoadFailure> {
            self.calls
                .borrow_mut()
                .push(format!("load {t} {name} {}", insns.len()));
            Ok(null_fd())
        }
        fn prog_attach(
            &self,
            _: BorrowedFd<'_>,
            _: BorrowedFd<'_>,
            t: u32,
            flags: u32,
        ) -> Result<(), Errno> {
            self.calls.borrow_mut().push(format!("attach {t} {flags}"));
            self.fail_attach.map_or(Ok(()), Err)
        }
        fn prog_detach(&self, _: BorrowedFd<'_>, _: BorrowedFd<'_>, t: u32) -> Result<(), Errno> {
            self.calls.borrow_mut().push(format!("detach {t}"));
            Ok(())
        }
        fn prog_query(&self, _: BorrowedFd<'_>, t: u32) -> Result<Vec<u32>, Errno> {
            self.calls.borrow_mut().push(format!("query {t}"));
            Ok(self.attached.clone())
        }
        fn prog_fd_by_id(&self, id: u32) -> Result<OwnedFd, Errno> {
            self.calls.borrow_mut().push(format!("fd {id}"));
            if id == 99 {
                return Err(Errno::ENOENT);
            }
            Ok(null_fd())
        }
    }

    #[test]
    fn replacing_attaches_the_new_program_before_detaching_the_old_ones() {
        let target = null_fd();
        let sys = Recorder {
            attached: vec![7, 99, 8],
            ..Recorder::default()
        };
        replace_cgroup_program(&sys, target.as_fd(), 15, 6, "berth_devices", &[]).unwrap();
        assert_eq!(
            sys.calls.into_inner(),
            [
                "load 15 berth_devices 0",
                "query 6",
                "attach 6 2",
                "fd 7",
                "detach 6",
                "fd 99",
                "fd 8",
                "detach 6"
            ]
        );

        let sys = Recorder {
            attached: vec![7],
            fail_attach: Some(Errno::EBADF),
            ..Recorder::default()
        };
        let e = replace_cgroup_program(&sys, target.as_fd(), 15, 6, "d", &[]).unwrap_err();
        assert!(matches!(e, BpfError::Unavailable { .. }), "{e:?}");
        assert!(
            !sys.calls.borrow().iter().any(|c| c.starts_with("detach")),
            "the old program stays when the new one cannot be attached"
        );
    }
}
