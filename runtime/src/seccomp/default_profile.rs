//! Berth's default seccomp profile for containers, in the spirit of Docker's: refuse (EPERM)
//! what reaches beyond the container (kernel modules, reboot, clocks, mounts, keyrings, new
//! namespaces, BPF, tracing of others) unless the container holds the capability that
//! makes the call meaningful, and allow the rest.

use super::table_x86_64::SYSCALLS;
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// Calls refused to every container: obsolete, or no namespace isolates them.
const NEVER: &[&str] = &[
    "add_key",
    "keyctl",
    "request_key",
    "userfaultfd",
    "uselib",
    "_sysctl",
    "nfsservctl",
    "get_kernel_syms",
    "query_module",
    "create_module",
    "afs_syscall",
    "tuxcall",
    "security",
    "putpmsg",
    "getpmsg",
    "vserver",
    "lookup_dcookie",
    "vm86",
    "vm86old",
];

/// Calls allowed only with the capability that governs them.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "quotactl",
            "quotactl_fd",
            "fanotify_init",
            "bpf",
            "perf_event_open",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "swapon",
            "swapoff",
            "clone3",
            "name_to_handle_at",
            "statmount",
            "listmount",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot", "kexec_load", "kexec_file_load"]),
    (
        "CAP_SYS_MODULE",
        &["init_module", "finit_module", "delete_module"],
    ),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"],
    ),
    (
        "CAP_SYS_PTRACE",
        &[
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kcmp",
            "pidfd_getfd",
        ],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_NICE",
        &["mbind", "set_mempolicy", "move_pages", "migrate_pages"],
    ),
];

/// Namespace flags a container without CAP_SYS_ADMIN may not pass to clone(2).
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

fn syscall(
    names: Vec<String>,
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Option<Vec<LinuxSeccompArg>>,
) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names);
    s.set_action(action);
    s.set_errno_ret(errno);
    s.set_args(args);
    s
}

fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> Vec<LinuxSeccompArg> {
    let mut b = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    // The builder only fails on missing required fields, and all are set.
    b.build().into_iter().collect()
}

/// The profile for a container holding `capabilities` (names like `CAP_SYS_ADMIN`).
pub fn default_profile(capabilities: &[String]) -> LinuxSeccomp {
    let has = |c: &str| capabilities.iter().any(|x| x == c);
    let denied = |name: &str| {
        NEVER.contains(&name)
            || name == "clone"
            || name == "personality"
            || BY_CAPABILITY
                .iter()
                .any(|(cap, calls)| !has(cap) && calls.contains(&name))
    };
    let allowed: Vec<String> = SYSCALLS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !denied(n))
        .map(String::from)
        .collect();
    let mut rules = vec![syscall(
        allowed,
        LinuxSeccompAction::ScmpActAllow,
        None,
        None,
    )];
    if has("CAP_SYS_ADMIN") {
        rules.push(syscall(
            vec!["clone".into()],
            LinuxSeccompAction::ScmpActAllow,
            None,
            None,
        ));
    } else {
        // clone without namespace flags; clone3 hides its flags in memory, so it reports ENOSYS
        // and libc falls back to clone.
        let no_ns = arg(
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NAMESPACES,
            Some(0),
        );
        rules.push(syscall(
            vec!["clone".into()],
            LinuxSeccompAction::ScmpActAllow,
            None,
            Some(no_ns),
        ));
        rules.push(syscall(
            vec!["clone3".into()],
            LinuxSeccompAction::ScmpActErrno,
            Some(libc::ENOSYS as u32),
            None,
        ));
    }
    // Execution domains that change nothing but the personality flags libc sets.
    for v in [0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        let a = arg(0, LinuxSeccompOperator::ScmpCmpEq, v, None);
        rules.push(syscall(
            vec!["personality".into()],
            LinuxSeccompAction::ScmpActAllow,
            None,
            Some(a),
        ));
    }
    let mut p = LinuxSeccomp::default();
    p.set_default_action(LinuxSeccompAction::ScmpActErrno);
    p.set_default_errno_ret(Some(libc::EPERM as u32));
    p.set_syscalls(Some(rules));
    p
}
