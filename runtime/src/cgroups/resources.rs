//! Resource limits and how they map onto cgroup v2 interface files.

use super::devices::DeviceRules;
use super::{CgroupError, Controller, Result};
use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxPids, LinuxResources,
    LinuxThrottleDevice, LinuxThrottleDeviceBuilder,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A byte or count limit: a number or `max` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Max,
    Value(u64),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Max => f.write_str("max"),
            Limit::Value(v) => write!(f, "{v}"),
        }
    }
}

impl Limit {
    /// OCI's convention: a negative number means unlimited.
    fn from_oci(v: i64) -> Limit {
        u64::try_from(v).map(Limit::Value).unwrap_or(Limit::Max)
    }

    /// The OCI form, -1 for `max`; `None` for a value beyond `i64`.
    fn to_oci(self) -> Option<i64> {
        match self {
            Limit::Max => Some(-1),
            Limit::Value(v) => i64::try_from(v).ok(),
        }
    }
}

/// `cpu.max`: `quota` microseconds of CPU time per `period` (`None` quota = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    pub quota: Option<u64>,
    pub period: u64,
}

impl CpuMax {
    pub const DEFAULT_PERIOD: u64 = 100_000;

    /// A limit of `cpus` CPUs (0.5 = half a CPU) over the default period.
    pub fn from_cpus(cpus: f64) -> Result<CpuMax> {
        if !(cpus.is_finite() && cpus > 0.0) {
            return Err(invalid(
                "cpu_max",
                format!("{cpus} is not a positive number of CPUs"),
            ));
        }
        // Truncation is fine: the kernel's own granularity is one microsecond.
        let quota = (cpus * Self::DEFAULT_PERIOD as f64) as u64;
        Ok(CpuMax {
            quota: Some(quota.max(1000)),
            period: Self::DEFAULT_PERIOD,
        })
    }
}

/// One `io.max` line for a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoMax {
    pub major: u64,
    pub minor: u64,
    pub rbps: Option<u64>,
    pub wbps: Option<u64>,
    pub riops: Option<u64>,
    pub wiops: Option<u64>,
}

/// The default of `cpu.weight` and `io.weight`.
const DEFAULT_WEIGHT: u64 = 100;
/// The default of cgroup v1's `cpu.shares`, which means no particular weight.
const DEFAULT_SHARES: u64 = 1024;

/// runc's mapping of v1 `cpu.shares` [2, 262144] onto v2 `cpu.weight` [1, 10000].
pub(super) fn cpu_weight_of_shares(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// Limits of one cgroup. `None` leaves the kernel's current value alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub memory_max: Option<Limit>,
    pub memory_high: Option<Limit>,
    pub memory_low: Option<Limit>,
    pub memory_swap_max: Option<Limit>,
    pub cpu_max: Option<CpuMax>,
    /// 1..=10000 (default 100).
    pub cpu_weight: Option<u64>,
    /// `cpu_weight` is the mapping of v1's default `cpu.shares` (1024): no particular weight
    /// was asked for, so a missing cpu controller is no error.
    pub cpu_weight_from_default_shares: bool,
    pub pids_max: Option<Limit>,
    /// 1..=10000 (default 100).
    pub io_weight: Option<u64>,
    pub io_max: Vec<IoMax>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// `hugetlb.<size>.max` limits by page size (`2MB`, `1GB`).
    pub hugetlb_max: BTreeMap<String, Limit>,
    /// Raw interface files (`linux.resources.unified`), written last.
    pub unified: BTreeMap<String, String>,
    /// Device access rules, enforced by an eBPF program on the cgroup; `None` attaches none.
    pub devices: Option<DeviceRules>,
}

/// One interface file write and the controller it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub controller: Option<Controller>,
    pub file: String,
    pub value: String,
    /// The value is "no limit" or the kernel's default: where the controller is missing it
    /// is already in effect, so the write is skipped instead of failing.
    pub optional: bool,
}

fn invalid(field: &str, reason: impl Into<String>) -> CgroupError {
    CgroupError::InvalidValue {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn cpuset_list(field: &str, v: &str) -> Result<String> {
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
    {
        return Err(invalid(field, format!("`{v}` is not a list like `0-2,4`")));
    }
    Ok(v.to_string())
}

impl Resources {
    /// True when no limit is set at all.
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }

    /// The writes that apply these limits, validated.
    pub fn writes(&self) -> Result<Vec<Write>> {
        let mut out = Vec::new();
        let mut push = |controller, file: &str, value: String, optional: bool| {
            out.push(Write {
                controller: Some(controller),
                file: file.to_string(),
                value,
                optional,
            })
        };
        use Controller::*;
        if let Some(v) = self.memory_low {
            push(Memory, "memory.low", v.to_string(), v == Limit::Value(0));
        }
        if let Some(v) = self.memory_high {
            push(Memory, "memory.high", v.to_string(), v == Limit::Max);
        }
        if let Some(v) = self.memory_max {
            push(Memory, "memory.max", v.to_string(), v == Limit::Max);
        }
        if let Some(v) = self.memory_swap_max {
            push(Memory, "memory.swap.max", v.to_string(), v == Limit::Max);
        }
        if let Some(CpuMax { quota, period }) = self.cpu_max {
            if !(1000..=1_000_000).contains(&period) {
                return Err(invalid(
                    "cpu.max period",
                    format!("{period} is outside 1000..=1000000 µs"),
                ));
            }
            let unlimited = quota.is_none();
            let quota = quota.map_or("max".to_string(), |q| q.to_string());
            push(Cpu, "cpu.max", format!("{quota} {period}"), unlimited);
        }
        if let Some(w) = self.cpu_weight {
            if !(1..=10_000).contains(&w) {
                return Err(invalid("cpu.weight", format!("{w} is outside 1..=10000")));
            }
            let default = w == DEFAULT_WEIGHT || self.cpu_weight_from_default_shares;
            push(Cpu, "cpu.weight", w.to_string(), default);
        }
        if let Some(v) = self.pids_max {
            push(Pids, "pids.max", v.to_string(), v == Limit::Max);
        }
        if let Some(w) = self.io_weight {
            if !(1..=10_000).contains(&w) {
                return Err(invalid("io.weight", format!("{w} is outside 1..=10000")));
            }
            push(Io, "io.weight", format!("default {w}"), w == DEFAULT_WEIGHT);
        }
        for m in &self.io_max {
            let mut line = format!("{}:{}", m.major, m.minor);
            for (key, v) in [
                ("rbps", m.rbps),
                ("wbps", m.wbps),
                ("riops", m.riops),
                ("wiops", m.wiops),
            ] {
                if let Some(v) = v {
                    line.push_str(&format!(" {key}={v}"));
                }
            }
            push(Io, "io.max", line, false);
        }
        if let Some(v) = &self.cpuset_cpus {
            push(Cpuset, "cpuset.cpus", cpuset_list("cpuset.cpus", v)?, false);
        }
        if let Some(v) = &self.cpuset_mems {
            push(Cpuset, "cpuset.mems", cpuset_list("cpuset.mems", v)?, false);
        }
        for (size, limit) in &self.hugetlb_max {
            if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(invalid(
                    "linux.resources.hugepageLimits.pageSize",
                    format!("`{size}` is not a page size like 2MB"),
                ));
            }
            let file = format!("hugetlb.{size}.max");
            push(Hugetlb, &file, limit.to_string(), *limit == Limit::Max);
        }
        for (file, value) in &self.unified {
            let prefix = file.split('.').next().unwrap_or_default();
            if file.contains('/')
                || !file.contains('.')
                || file.starts_with("cgroup.") && file != "cgroup.freeze"
            {
                return Err(invalid(
                    &format!("unified key `{file}`"),
                    "not a writable cgroup interface file",
                ));
            }
            let controller = match prefix.parse() {
                Ok(c) => c,
                Err(()) => {
                    return Err(invalid(
                        &format!("unified key `{file}`"),
                        format!("unknown controller `{prefix}`"),
                    ))
                }
            };
            out.push(Write {
                controller: Some(controller),
                file: file.clone(),
                value: value.clone(),
                optional: false,
            });
        }
        Ok(out)
    }

    /// Converts OCI `linux.resources` into v2 limits, as runc and crun do (shares and blkio
    /// weight rescaled to the v2 ranges, swap as total minus memory). Device rules become
    /// [`DeviceRules`] when there are any. Settings that have no v2 meaning are errors naming
    /// the field.
    pub fn from_oci(r: &LinuxResources) -> Result<Resources> {
        let mut out = Resources::default();
        if let Some(list) = r.devices().as_ref().filter(|l| !l.is_empty()) {
            out.devices = Some(DeviceRules::from_oci(list)?);
        }
        if let Some(m) = r.memory() {
            out.memory_max = m.limit().map(Limit::from_oci);
            out.memory_low = m.reservation().map(Limit::from_oci);
            match (m.swap(), m.limit()) {
                (None, _) => {}
                (Some(s), _) if s < 0 => out.memory_swap_max = Some(Limit::Max),
                (Some(s), Some(l)) if l >= 0 => {
                    let swap = s.checked_sub(l).filter(|v| *v >= 0).ok_or_else(|| {
                        invalid(
                            "linux.resources.memory.swap",
                            format!("{s} is less than memory.limit {l}"),
                        )
                    })?;
                    out.memory_swap_max = Some(Limit::Value(swap as u64));
                }
                (Some(_), _) => {
                    return Err(invalid(
                        "linux.resources.memory.swap",
                        "a swap limit needs a finite memory.limit (swap counts memory plus swap)",
                    ))
                }
            }
            if m.kernel_tcp().is_some() {
                return Err(invalid(
                    "linux.resources.memory.kernelTCP",
                    "not available on cgroup v2",
                ));
            }
            if m.swappiness().is_some() {
                return Err(invalid(
                    "linux.resources.memory.swappiness",
                    "not available on cgroup v2",
                ));
            }
        }
        if let Some(c) = r.cpu() {
            if c.quota().is_some() || c.period().is_some() {
                let quota = c
                    .quota()
                    .and_then(|q| u64::try_from(q).ok())
                    .filter(|q| *q > 0);
                out.cpu_max = Some(CpuMax {
                    quota,
                    period: c.period().unwrap_or(CpuMax::DEFAULT_PERIOD),
                });
            }
            if let Some(shares) = c.shares() {
                out.cpu_weight_from_default_shares = shares == DEFAULT_SHARES;
                if shares != 0 {
                    out.cpu_weight = Some(cpu_weight_of_shares(shares));
                }
            }
            out.cpuset_cpus = c.cpus().clone().filter(|s| !s.is_empty());
            out.cpuset_mems = c.mems().clone().filter(|s| !s.is_empty());
            if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
                return Err(invalid(
                    "linux.resources.cpu.realtimeRuntime",
                    "not available on cgroup v2",
                ));
            }
        }
        if let Some(p) = r.pids() {
            out.pids_max = Some(if p.limit() > 0 {
                Limit::Value(p.limit() as u64)
            } else {
                Limit::Max
            });
        }
        if let Some(b) = r.block_io() {
            if let Some(w) = b.weight() {
                if w != 0 {
                    // v1 blkio weight [10, 1000] onto v2 io.weight [1, 10000].
                    let w = u64::from(w.clamp(10, 1000));
                    out.io_weight = Some(1 + (w - 10) * 9999 / 990);
                }
            }
            let mut devices: BTreeMap<(u64, u64), IoMax> = BTreeMap::new();
            let lists = [
                (b.throttle_read_bps_device(), 0),
                (b.throttle_write_bps_device(), 1),
                (b.throttle_read_iops_device(), 2),
                (b.throttle_write_iops_device(), 3),
            ];
            for (list, kind) in lists {
                for d in list.iter().flatten() {
                    let (Ok(major), Ok(minor)) =
                        (u64::try_from(d.major()), u64::try_from(d.minor()))
                    else {
                        return Err(invalid("linux.resources.blockIO", "negative device number"));
                    };
                    let e = devices.entry((major, minor)).or_insert(IoMax {
                        major,
                        minor,
                        ..IoMax::default()
                    });
                    let slot = match kind {
                        0 => &mut e.rbps,
                        1 => &mut e.wbps,
                        2 => &mut e.riops,
                        _ => &mut e.wiops,
                    };
                    *slot = Some(d.rate());
                }
            }
            out.io_max = devices.into_values().collect();
        }
        for h in r.hugepage_limits().iter().flatten() {
            out.hugetlb_max
                .insert(h.page_size().clone(), Limit::from_oci(h.limit()));
        }
        if r.network().is_some() {
            return Err(invalid(
                "linux.resources.network",
                "not available on cgroup v2",
            ));
        }
        if r.rdma().as_ref().is_some_and(|l| !l.is_empty()) {
            return Err(invalid(
                "linux.resources.rdma",
                "not supported by berth-runtime",
            ));
        }
        if let Some(u) = r.unified() {
            out.unified = u.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        // Validate now so the caller learns of a bad value before anything is created.
        out.writes()?;
        Ok(out)
    }

    /// The OCI `linux.resources` that [`Resources::from_oci`] reads back into the same
    /// interface-file values (a spec builder's side of that conversion). Each limit goes into
    /// its typed field where the field holds it as is; `unified` carries the rest, as the
    /// write [`Resources::writes`] makes: `memory.high`, `cpu.weight` and `io.weight` (OCI
    /// has them only on cgroup v1's scales, which the runtime rescales, and not every v2
    /// weight is reachable that way), and values a typed field cannot hold (`pids.max` 0,
    /// which OCI reads as no limit; a cpu quota of 0; a swap limit without a finite memory
    /// limit; numbers beyond `i64`). `io.max` lines come back merged per device, in device
    /// order, without lines that set nothing.
    pub fn to_oci(&self) -> Result<LinuxResources> {
        // A bad value is an error here, before a spec carries it.
        let writes = self.writes()?;
        let mut unified: HashMap<String, String> = self
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // What `file` gets, as a raw write; one already in `unified` is written last anyway.
        let mut raw = |file: &str| {
            if let Some(w) = writes.iter().find(|w| w.file == file) {
                unified
                    .entry(file.to_string())
                    .or_insert_with(|| w.value.clone());
            }
        };
        let mut typed = |limit: Option<Limit>, file: &str| {
            let v = limit?.to_oci();
            if v.is_none() {
                raw(file);
            }
            v
        };
        let mut out = LinuxResources::default();

        let limit = typed(self.memory_max, "memory.max");
        let reservation = typed(self.memory_low, "memory.low");
        let swap = match (self.memory_swap_max, limit) {
            (None, _) => None,
            (Some(Limit::Max), _) => Some(-1),
            // OCI's swap counts memory plus swap.
            (Some(Limit::Value(s)), Some(l)) if l >= 0 => {
                i64::try_from(s).ok().and_then(|s| s.checked_add(l))
            }
            (Some(Limit::Value(_)), _) => None,
        };
        if self.memory_swap_max.is_some() && swap.is_none() {
            raw("memory.swap.max");
        }
        if self.memory_high.is_some() {
            raw("memory.high");
        }
        if limit.is_some() || reservation.is_some() || swap.is_some() {
            let mut m = LinuxMemory::default();
            m.set_limit(limit);
            m.set_reservation(reservation);
            m.set_swap(swap);
            out.set_memory(Some(m));
        }

        let mut cpu = LinuxCpu::default();
        if let Some(CpuMax { quota, period }) = self.cpu_max {
            // OCI reads a quota of 0 or less as no limit.
            let q = match quota {
                None => Some(-1),
                Some(q) => i64::try_from(q).ok().filter(|q| *q > 0),
            };
            match q {
                Some(q) => {
                    cpu.set_quota(Some(q));
                    cpu.set_period(Some(period));
                }
                None => raw("cpu.max"),
            }
        }
        if let Some(w) = self.cpu_weight {
            if self.cpu_weight_from_default_shares && w == cpu_weight_of_shares(DEFAULT_SHARES) {
                cpu.set_shares(Some(DEFAULT_SHARES));
            } else {
                raw("cpu.weight");
            }
        }
        cpu.set_cpus(self.cpuset_cpus.clone());
        cpu.set_mems(self.cpuset_mems.clone());
        if cpu != LinuxCpu::default() {
            out.set_cpu(Some(cpu));
        }

        let pids_limit = match self.pids_max {
            None => None,
            Some(Limit::Max) => Some(-1),
            // OCI reads a pids limit of 0 as no limit.
            Some(Limit::Value(v)) => i64::try_from(v).ok().filter(|v| *v > 0),
        };
        match pids_limit {
            Some(v) => {
                let mut p = LinuxPids::default();
                p.set_limit(v);
                out.set_pids(Some(p));
            }
            None if self.pids_max.is_some() => raw("pids.max"),
            None => {}
        }

        if self.io_weight.is_some() {
            raw("io.weight");
        }
        if !self.io_max.is_empty() {
            let mut lists: [Vec<LinuxThrottleDevice>; 4] = Default::default();
            for m in &self.io_max {
                let (Ok(major), Ok(minor)) = (i64::try_from(m.major), i64::try_from(m.minor))
                else {
                    return Err(invalid(
                        "io.max",
                        format!("{}:{} is not a device number", m.major, m.minor),
                    ));
                };
                for (list, rate) in lists.iter_mut().zip([m.rbps, m.wbps, m.riops, m.wiops]) {
                    if let Some(rate) = rate {
                        let d = LinuxThrottleDeviceBuilder::default()
                            .major(major)
                            .minor(minor)
                            .rate(rate)
                            .build()
                            .map_err(|e| invalid("io.max", e.to_string()))?;
                        list.push(d);
                    }
                }
            }
            let [rbps, wbps, riops, wiops] = lists.map(|l| Some(l).filter(|l| !l.is_empty()));
            let mut b = LinuxBlockIo::default();
            b.set_throttle_read_bps_device(rbps);
            b.set_throttle_write_bps_device(wbps);
            b.set_throttle_read_iops_device(riops);
            b.set_throttle_write_iops_device(wiops);
            out.set_block_io(Some(b));
        }

        let mut hugepages = Vec::new();
        for (size, limit) in &self.hugetlb_max {
            match limit.to_oci() {
                Some(v) => {
                    let mut h = LinuxHugepageLimit::default();
                    h.set_page_size(size.clone());
                    h.set_limit(v);
                    hugepages.push(h);
                }
                None => raw(&format!("hugetlb.{size}.max")),
            }
        }
        if !hugepages.is_empty() {
            out.set_hugepage_limits(Some(hugepages));
        }

        if let Some(rules) = &self.devices {
            if rules.rules().is_empty() {
                // OCI reads an empty list as no device program at all.
                return Err(invalid(
                    "linux.resources.devices",
                    "an empty rule list has no OCI form",
                ));
            }
            out.set_devices(Some(rules.to_oci()));
        }
        if !unified.is_empty() {
            out.set_unified(Some(unified));
        }
        Ok(out)
    }
}
