//! Device rules (`linux.resources.devices`) and the cgroup v2 device program they become.
//!
//! cgroup v2 has no `devices.allow` file: access to device nodes is decided by an eBPF
//! program of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the cgroup. The kernel runs it
//! on every open and mknod of a device node with the device's type, major, minor and the
//! requested access (`r`, `w`, `m`, possibly several at once); it returns 1 to allow.
//!
//! Semantics are those of the v1 device controller as runc and crun emulate them: rules apply
//! in order, for each access bit the last rule that matches the device decides, and a bit no
//! rule matches is denied. After the spec's rules come [`DEFAULT_ALLOWED`], as in runc and
//! crun, so the devices every container needs (null, zero, tty, ptmx, ...) stay usable
//! whatever the spec denies before them.

use super::{CgroupError, Result};
use crate::bpf::{Alu, Asm, AsmError, Cond, Insn, Reg, Size};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use std::fmt;

/// Name of the program as the kernel lists it (`bpftool prog`).
pub const PROGRAM_NAME: &str = "berth_devices";

/// Device type as the program context encodes it (`BPF_DEVCG_DEV_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DeviceKind {
    Block = 1,
    Char = 2,
}

/// A set of access bits, encoded as the program context's (`BPF_DEVCG_ACC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u32);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const READ: Access = Access(2);
    pub const WRITE: Access = Access(4);
    pub const ALL: Access = Access(7);
    /// The bits one at a time, in the order the program checks them.
    const BITS: [Access; 3] = [Access::MKNOD, Access::READ, Access::WRITE];

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// Parses `rwm`-style text; empty means all three (as the v1 controller takes it).
    pub fn parse(text: &str) -> std::result::Result<Access, String> {
        if text.is_empty() {
            return Ok(Access::ALL);
        }
        let mut bits = 0;
        for c in text.chars() {
            bits |= match c {
                'm' => Access::MKNOD.0,
                'r' => Access::READ.0,
                'w' => Access::WRITE.0,
                other => return Err(format!("`{other}` in `{text}` is not one of r, w, m")),
            };
        }
        Ok(Access(bits))
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, c) in [
            (Access::READ, 'r'),
            (Access::WRITE, 'w'),
            (Access::MKNOD, 'm'),
        ] {
            if self.contains(bit) {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// One rule: `kind` `None` is every type (`a`), `major`/`minor` `None` is any number (`*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: Option<DeviceKind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl DeviceRule {
    /// An allow rule for one character device, all access.
    pub const fn char_device(major: u32, minor: u32) -> DeviceRule {
        DeviceRule {
            allow: true,
            kind: Some(DeviceKind::Char),
            major: Some(major),
            minor: Some(minor),
            access: Access::ALL,
        }
    }

    /// Whether the rule is about this device.
    pub fn matches(&self, kind: DeviceKind, major: u32, minor: u32) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }

    /// Matches every device: nothing before it can matter for its access bits.
    fn matches_all(&self) -> bool {
        self.kind.is_none() && self.major.is_none() && self.minor.is_none()
    }
}

/// `allow c 1:3 rwm`, `deny a *:* rwm`: the v1 controller's notation.
impl fmt::Display for DeviceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            None => 'a',
            Some(DeviceKind::Block) => 'b',
            Some(DeviceKind::Char) => 'c',
        };
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        write!(
            f,
            "{} {kind} {}:{} {}",
            if self.allow { "allow" } else { "deny" },
            num(self.major),
            num(self.minor),
            self.access
        )
    }
}

/// What every container may use, after the spec's own rules: runc's list (crun's without its
/// `/dev/console` entry; a container's console is a pty of its own).
pub const DEFAULT_ALLOWED: [DeviceRule; 11] = [
    // mknod of any device node (using it is another matter).
    DeviceRule {
        allow: true,
        kind: Some(DeviceKind::Char),
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule {
        allow: true,
        kind: Some(DeviceKind::Block),
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule::char_device(1, 3), // /dev/null
    DeviceRule::char_device(1, 8), // /dev/random
    DeviceRule::char_device(1, 7), // /dev/full
    DeviceRule::char_device(5, 0), // /dev/tty
    DeviceRule::char_device(1, 5), // /dev/zero
    DeviceRule::char_device(1, 9), // /dev/urandom
    // /dev/pts/* and /dev/ptmx of the container's own devpts.
    DeviceRule {
        allow: true,
        kind: Some(DeviceKind::Char),
        major: Some(136),
        minor: None,
        access: Access::ALL,
    },
    DeviceRule::char_device(5, 2),
    // /dev/net/tun: attaching to a tun/tap device; creating one still needs CAP_NET_ADMIN.
    DeviceRule::char_device(10, 200),
];

/// Device rules in spec order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRules(Vec<DeviceRule>);

fn invalid(index: usize, key: &str, reason: impl Into<String>) -> CgroupError {
    CgroupError::InvalidValue {
        field: format!("linux.resources.devices[{index}].{key}"),
        reason: reason.into(),
    }
}

/// A major or minor number: absent (or runc's -1) is the wildcard.
fn device_number(index: usize, key: &str, value: Option<i64>) -> Result<Option<u32>> {
    match value {
        None | Some(-1) => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| invalid(index, key, format!("{v} is not a device number"))),
    }
}

impl DeviceRules {
    pub fn new(rules: Vec<DeviceRule>) -> DeviceRules {
        DeviceRules(rules)
    }

    /// What a container gets when nothing else is said: every device denied, then
    /// [`DEFAULT_ALLOWED`] (Docker's default spec).
    pub fn container_default() -> DeviceRules {
        let mut rules = vec![DeviceRule {
            allow: false,
            kind: None,
            major: None,
            minor: None,
            access: Access::ALL,
        }];
        rules.extend(DEFAULT_ALLOWED);
        DeviceRules(rules)
    }

    /// Every device, every access: Docker's `--privileged` (`allow a *:* rwm`).
    pub fn allow_all() -> DeviceRules {
        DeviceRules(vec![DeviceRule {
            allow: true,
            kind: None,
            major: None,
            minor: None,
            access: Access::ALL,
        }])
    }

    /// Checks and converts OCI rules; a bad one is named by its index and key.
    pub fn from_oci(list: &[LinuxDeviceCgroup]) -> Result<DeviceRules> {
        let mut rules = Vec::with_capacity(list.len());
        for (i, d) in list.iter().enumerate() {
            let kind = match d.typ() {
                None | Some(LinuxDeviceType::A) => None,
                Some(LinuxDeviceType::B) => Some(DeviceKind::Block),
                Some(LinuxDeviceType::C | LinuxDeviceType::U) => Some(DeviceKind::Char),
                Some(LinuxDeviceType::P) => {
                    return Err(invalid(i, "type", "`p` (fifo) is not a device type"))
                }
            };
            let access = Access::parse(d.access().as_deref().unwrap_or(""))
                .map_err(|r| invalid(i, "access", r))?;
            rules.push(DeviceRule {
                allow: d.allow(),
                kind,
                major: device_number(i, "major", d.major())?,
                minor: device_number(i, "minor", d.minor())?,
                access,
            });
        }
        Ok(DeviceRules(rules))
    }

    /// Back to OCI form (the builder writes these into config.json).
    pub fn to_oci(&self) -> Vec<LinuxDeviceCgroup> {
        self.0
            .iter()
            .map(|r| {
                let mut d = LinuxDeviceCgroup::default();
                d.set_allow(r.allow);
                d.set_typ(Some(match r.kind {
                    None => LinuxDeviceType::A,
                    Some(DeviceKind::Block) => LinuxDeviceType::B,
                    Some(DeviceKind::Char) => LinuxDeviceType::C,
                }));
                d.set_major(r.major.map(i64::from));
                d.set_minor(r.minor.map(i64::from));
                d.set_access(Some(r.access.to_string()));
                d
            })
            .collect()
    }

    pub fn rules(&self) -> &[DeviceRule] {
        &self.0
    }

    /// The rules the program enforces: these, then [`DEFAULT_ALLOWED`]; a rule repeated later
    /// is dropped where it first appears (the later copy decides anyway).
    pub fn effective(&self) -> Vec<DeviceRule> {
        let all: Vec<DeviceRule> = self
            .0
            .iter()
            .chain(DEFAULT_ALLOWED.iter())
            .copied()
            .collect();
        all.iter()
            .enumerate()
            .filter(|(i, r)| !all[i + 1..].contains(r))
            .map(|(_, r)| *r)
            .collect()
    }

    /// The reference semantics the program implements: every requested bit must be allowed
    /// by the last effective rule that matches the device and names that bit.
    pub fn allows(&self, kind: DeviceKind, major: u32, minor: u32, access: Access) -> bool {
        let rules = self.effective();
        Access::BITS
            .into_iter()
            .filter(|bit| access.contains(*bit))
            .all(|bit| {
                rules
                    .iter()
                    .rev()
                    .find(|r| r.access.contains(bit) && r.matches(kind, major, minor))
                    .is_some_and(|r| r.allow)
            })
    }

    /// The `BPF_PROG_TYPE_CGROUP_DEVICE` program. Its context (`struct bpf_cgroup_dev_ctx`)
    /// is `u32 access_type` (access bits << 16 | device type), `u32 major`, `u32 minor`.
    ///
    /// ```text
    ///     r2 = ctx->access_type; r3 = r2 & 0xffff (type); r2 >>= 16 (access)
    ///     r4 = ctx->major; r5 = ctx->minor
    ///     for each access bit (m, r, w):
    ///         if !(r2 & bit) goto next_bit
    ///         for each rule naming the bit, last first:
    ///             if type/major/minor differ (where not wildcards) goto next_rule
    ///             goto allow ? next_bit : deny
    ///         goto deny                           (no rule matched)
    ///     next_bit: ...
    ///     return 1
    ///     deny: return 0
    /// ```
    ///
    /// Rules behind one that matches every device are never reached and are not emitted, and
    /// neither is any other unreachable code (the verifier refuses it).
    pub fn program(&self) -> std::result::Result<Vec<Insn>, AsmError> {
        compile(&self.effective())
    }
}

/// The program deciding by exactly `rules` (see [`DeviceRules::program`]).
fn compile(rules: &[DeviceRule]) -> std::result::Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    let deny = a.label();
    a.load(Size::W, Reg::R2, Reg::R1, 0);
    a.alu64_reg(Alu::Mov, Reg::R3, Reg::R2);
    a.alu64_imm(Alu::And, Reg::R3, 0xffff);
    a.alu64_imm(Alu::Rsh, Reg::R2, 16);
    a.load(Size::W, Reg::R4, Reg::R1, 4);
    a.load(Size::W, Reg::R5, Reg::R1, 8);
    for bit in Access::BITS {
        let next_bit = a.label();
        a.alu64_reg(Alu::Mov, Reg::R6, Reg::R2);
        a.alu64_imm(Alu::And, Reg::R6, bit.bits() as i32);
        a.jump32_imm(Cond::Eq, Reg::R6, 0, next_bit);
        let mut decided = false;
        for rule in rules.iter().rev().filter(|r| r.access.contains(bit)) {
            let next_rule = a.label();
            if let Some(kind) = rule.kind {
                a.jump32_imm(Cond::Ne, Reg::R3, kind as u32, next_rule);
            }
            if let Some(major) = rule.major {
                a.jump32_imm(Cond::Ne, Reg::R4, major, next_rule);
            }
            if let Some(minor) = rule.minor {
                a.jump32_imm(Cond::Ne, Reg::R5, minor, next_rule);
            }
            a.goto(if rule.allow { next_bit } else { deny });
            if rule.matches_all() {
                decided = true;
                break;
            }
            a.bind(next_rule);
        }
        if !decided {
            a.goto(deny);
        }
        a.bind(next_bit);
    }
    a.ret(1);
    if a.is_used(deny) {
        a.bind(deny);
        a.ret(0);
    }
    a.finish()
}

#[cfg(test)]
mod tests;
