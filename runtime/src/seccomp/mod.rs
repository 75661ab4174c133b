//! Seccomp: compiles `linux.seccomp` into BPF with seccompiler and installs it; Berth's default
//! profile for containers built from units.
//!
//! OCI rules carry an action each, seccompiler one match action per filter. The kernel runs
//! every installed filter and keeps the most restrictive verdict, so the profile becomes one
//! filter per distinct rule action: the default-action filter lets every listed call through
//! (with its argument conditions), and each action's filter applies that action to its calls
//! and allows the rest.

mod table_x86_64;

use crate::syscall::Syscall;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

pub use default_profile::default_profile;
mod default_profile;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("linux.seccomp.{field}: action {action:?} is not supported")]
    Action {
        field: String,
        action: LinuxSeccompAction,
    },
    #[error("linux.seccomp.syscalls[{index}]: {reason}")]
    Rule { index: usize, reason: String },
    #[error("linux.seccomp: {0}")]
    Compile(String),
    #[error("installing seccomp filter: {0}")]
    Install(std::io::Error),
}

/// The number of a syscall on this architecture.
pub fn syscall_number(name: &str) -> Option<i64> {
    let t = table_x86_64::SYSCALLS;
    t.binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| t[i].1)
}

fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    field: &str,
) -> Result<SeccompAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        other => {
            return Err(SeccompError::Action {
                field: field.to_string(),
                action: other,
            })
        }
    })
}

fn rule(index: usize, s: &LinuxSyscall) -> Result<Option<SeccompRule>, SeccompError> {
    let Some(args) = s.args().as_ref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let mut conds = Vec::new();
    for a in args {
        let bad = |reason: String| SeccompError::Rule { index, reason };
        let (op, value) = match a.op() {
            LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
            LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
            LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
            LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
            LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
            LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
            // OCI: `value` is the mask, `valueTwo` what the masked argument must equal.
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                SeccompCmpOp::MaskedEq(a.value()),
                a.value_two().unwrap_or(0),
            ),
        };
        let index_u8 = u8::try_from(a.index())
            .map_err(|_| bad(format!("argument index {} out of range", a.index())))?;
        conds.push(
            SeccompCondition::new(index_u8, SeccompCmpArgLen::Qword, op, value)
                .map_err(|e| bad(e.to_string()))?,
        );
    }
    SeccompRule::new(conds)
        .map(Some)
        .map_err(|e| SeccompError::Rule {
            index,
            reason: e.to_string(),
        })
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn add(rules: &mut Rules, nr: i64, r: Option<SeccompRule>) {
    match r {
        // A call listed without conditions matches unconditionally: an empty chain.
        None => {
            rules.insert(nr, Vec::new());
        }
        Some(r) => match rules.get_mut(&nr) {
            None => {
                rules.insert(nr, vec![r]);
            }
            Some(chain) if chain.is_empty() => {}
            Some(chain) => chain.push(r),
        },
    }
}

/// Compiles a profile into the filters to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "defaultAction",
    )?;
    let mut pass: Rules = BTreeMap::new();
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for (index, s) in profile.syscalls().iter().flatten().enumerate() {
        let act = action(
            s.action(),
            s.errno_ret(),
            &format!("syscalls[{index}].action"),
        )?;
        let r = rule(index, s)?;
        for name in s.names() {
            // Like libseccomp, names unknown on this architecture are skipped.
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            if act == default {
                continue;
            }
            add(&mut pass, nr, r.clone());
            if act != SeccompAction::Allow {
                let slot = match by_action.iter().position(|(a, _)| *a == act) {
                    Some(i) => i,
                    None => {
                        by_action.push((act.clone(), BTreeMap::new()));
                        by_action.len() - 1
                    }
                };
                add(&mut by_action[slot].1, nr, r.clone());
            }
        }
    }
    let build = |rules: Rules,
                 mismatch: SeccompAction,
                 matched: SeccompAction|
     -> Result<BpfProgram, SeccompError> {
        let f = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .map_err(|e| SeccompError::Compile(e.to_string()))?;
        BpfProgram::try_from(f).map_err(|e| SeccompError::Compile(e.to_string()))
    };
    let mut out = Vec::new();
    if default != SeccompAction::Allow {
        out.push(build(pass, default, SeccompAction::Allow)?);
    }
    for (act, rules) in by_action {
        out.push(build(rules, SeccompAction::Allow, act)?);
    }
    Ok(out)
}

/// Installs compiled filters on the calling thread. Unlike seccompiler's helper this does not
/// set no_new_privs: that is the spec's `noNewPrivileges` decision (without it the caller
/// needs CAP_SYS_ADMIN).
pub fn install(sys: &dyn Syscall, filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        sys.seccomp_filter(f)
            .map_err(|errno| SeccompError::Install(errno.into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_knows_common_calls() {
        let t = table_x86_64::SYSCALLS;
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("mkdir"), Some(83));
        assert_eq!(syscall_number("nope"), None);
    }

    #[test]
    fn profile_compiles_to_one_filter_per_action() {
        let p: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write","exit_group","not_a_syscall"],"action":"SCMP_ACT_ALLOW"},
                {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
                {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                {"names":["mkdir"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        )
        .unwrap();
        let filters = compile(&p).unwrap();
        assert_eq!(filters.len(), 3);
        assert!(filters.iter().all(|f| !f.is_empty() && f.len() < 4096));
    }

    #[test]
    fn unsupported_action_is_named() {
        let p: LinuxSeccomp = serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#).unwrap();
        let e = compile(&p).unwrap_err().to_string();
        assert!(e.contains("syscalls[0].action"), "{e}");
    }

    #[test]
    fn default_profile_compiles() {
        let caps = ["CAP_CHOWN".to_string()];
        let filters = compile(&default_profile(&caps)).unwrap();
        assert!(!filters.is_empty() && filters[0].len() < 4096);
    }
}
