//! Processes as /proc shows them: the fields of `/proc/PID/stat` the runtime checks (start
//! time, zombie state) and the rows `ps` prints in runc's (`ps -ef`) columns, read without
//! the host's ps(1), which a Berth machine does not have.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;

/// The fields of `/proc/PID/stat` Berth uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    /// Controlling terminal (`major << 8 | minor`, minor's high bits above bit 20), 0 = none.
    pub tty_nr: u64,
    /// CPU time in user and kernel mode, clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// Start time after boot, clock ticks.
    pub start_time: u64,
}

impl ProcStat {
    /// Parses the text of `/proc/PID/stat`.
    pub fn parse(text: &str) -> Option<ProcStat> {
        // The command name may hold spaces and parentheses: it ends at the last ')'.
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
        // fields[0] is field 3 of proc(5) (state).
        let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
        Some(ProcStat {
            comm,
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            tty_nr: num(4)?,
            utime: num(11)?,
            stime: num(12)?,
            start_time: num(19)?,
        })
    }

    pub fn read(pid: i32) -> Option<ProcStat> {
        ProcStat::parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// The clock `ps` needs: the time now, when the machine booted (both seconds since the epoch)
/// and the length of a clock tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub now: i64,
    pub boot_time: i64,
    pub ticks_per_second: u64,
}

impl Clock {
    /// This machine's clock: `btime` from /proc/stat, `_SC_CLK_TCK`.
    pub fn host() -> Option<Clock> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let boot_time = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Some(Clock {
            now: i64::try_from(now).ok()?,
            boot_time,
            ticks_per_second: u64::try_from(ticks).ok().filter(|t| *t > 0)?,
        })
    }
}

/// One line of `ps -ef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsRow {
    pub user: String,
    pub pid: i32,
    pub ppid: i32,
    /// CPU use over the process's lifetime, percent (procps caps it at 99).
    pub cpu: u64,
    /// Start time: `HH:MM` within the last day, else `MonDD`, else the year.
    pub start: String,
    pub tty: String,
    /// Cumulative CPU time, `[DD-]HH:MM:SS`.
    pub time: String,
    pub cmd: String,
}

impl PsRow {
    /// Builds a row from a process's stat, effective uid and command line.
    pub fn new(
        pid: i32,
        stat: &ProcStat,
        euid: u32,
        cmdline: &[u8],
        clock: &Clock,
        users: &HashMap<u32, String>,
    ) -> PsRow {
        let tick = clock.ticks_per_second.max(1);
        let cpu_ticks = stat.utime + stat.stime;
        let started = clock.boot_time + i64::try_from(stat.start_time / tick).unwrap_or(0);
        let elapsed = u64::try_from(clock.now - started).unwrap_or(0);
        let cpu = (cpu_ticks * 100 / tick)
            .checked_div(elapsed)
            .unwrap_or(0)
            .min(99);
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        PsRow {
            user: users
                .get(&euid)
                .cloned()
                .unwrap_or_else(|| euid.to_string()),
            pid,
            ppid: stat.ppid,
            cpu,
            start: start_time(started, clock.now),
            tty: tty_name(stat.tty_nr),
            time: cpu_time(cpu_ticks / tick),
            cmd: if args.is_empty() {
                format!("[{}]", stat.comm)
            } else {
                args.join(" ")
            },
        }
    }

    /// Reads a live process; `None` when it is gone.
    pub fn read(pid: i32, clock: &Clock, users: &HashMap<u32, String>) -> Option<PsRow> {
        let stat = ProcStat::read(pid)?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        Some(PsRow::new(pid, &stat, euid, &cmdline, clock, users))
    }
}

/// `uid → name` from a passwd file's text.
pub fn users(passwd: &str) -> HashMap<u32, String> {
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
        })
        .collect()
}

/// The table in procps' `ps -ef` layout.
pub fn table(rows: &[PsRow]) -> String {
    let pid_width = rows
        .iter()
        .map(|r| r.pid.max(r.ppid).to_string().len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = format!(
        "{:<8} {:>w$} {:>w$}  C STIME TTY          TIME CMD\n",
        "UID",
        "PID",
        "PPID",
        w = pid_width
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<8} {:>w$} {:>w$} {:>2} {:<5} {:<8} {:>8} {}",
            r.user,
            r.pid,
            r.ppid,
            r.cpu,
            r.start,
            r.tty,
            r.time,
            r.cmd,
            w = pid_width
        );
    }
    out
}

/// `pts/3`, `tty1`, `ttyS0`, or `?` without a terminal.
fn tty_name(tty_nr: u64) -> String {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match (major, minor) {
        (0, _) => "?".into(),
        (136..=143, m) => format!("pts/{}", (major - 136) * 256 + m),
        (4, m) if m < 64 => format!("tty{m}"),
        (4, m) => format!("ttyS{}", m - 64),
        (5, 1) => "console".into(),
        (major, minor) => format!("{major}:{minor}"),
    }
}

/// Cumulative CPU seconds as `HH:MM:SS`, with `DD-` past a day.
fn cpu_time(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let hms = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    if days > 0 {
        format!("{days}-{hms}")
    } else {
        hms
    }
}

/// procps' STIME: local `HH:MM` when started within a day, else `MonDD`, else the year.
fn start_time(started: i64, now: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (Some(s), Some(n)) = (local_time(started), local_time(now)) else {
        return "?".into();
    };
    if now - started < 86_400 {
        format!("{:02}:{:02}", s.tm_hour, s.tm_min)
    } else if s.tm_year == n.tm_year {
        let month = usize::try_from(s.tm_mon).unwrap_or(0).min(11);
        format!("{}{:02}", MONTHS[month], s.tm_mday)
    } else {
        (1900 + s.tm_year).to_string()
    }
}

fn local_time(t: i64) -> Option<libc::tm> {
    let t: libc::time_t = t;
    // SAFETY: an all-zero tm is a valid value to be overwritten.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    (!r.is_null()).then_some(tm)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (my (odd) cmd) S 4200 4242 4200 34817 4242 4194304 100 0 0 0 \
                        250 150 0 0 20 0 1 0 1000 12345678 300 18446744073709551615";

    #[test]
    fn stat_fields_after_an_odd_command_name() {
        let s = ProcStat::parse(STAT).unwrap();
        assert_eq!(s.comm, "my (odd) cmd");
        assert_eq!((s.state, s.ppid, s.tty_nr), ('S', 4200, 34817));
        assert_eq!((s.utime, s.stime, s.start_time), (250, 150, 1000));
        assert!(!s.is_zombie());
        assert!(ProcStat::parse("12 (x) Z 1").is_none(), "truncated");
        let z = STAT.replace(") S ", ") Z ");
        assert!(ProcStat::parse(&z).unwrap().is_zombie());
    }

    #[test]
    fn rows_in_runc_columns() {
        let stat = ProcStat::parse(STAT).unwrap();
        // Started 10 s after boot (1000 ticks at 100 Hz), 410 s ago, 4 s of CPU.
        let clock = Clock {
            now: 1_700_000_420,
            boot_time: 1_700_000_000,
            ticks_per_second: 100,
        };
        let users = users("root:x:0:0::/root:/bin/sh\nwww:x:33:33::/:/bin/sh\nbad line\n");
        let row = PsRow::new(4242, &stat, 33, b"sleep\x0030\x00", &clock, &users);
        assert_eq!(row.user, "www");
        assert_eq!(row.tty, "pts/1");
        assert_eq!(row.time, "00:00:04");
        assert_eq!(row.cpu, 0, "4 s over 410 s is under 1%");
        assert_eq!(row.cmd, "sleep 30");
        assert_eq!(row.start.len(), 5, "HH:MM: {}", row.start);
        let kernel = PsRow::new(2, &stat, 1000, b"", &clock, &users);
        assert_eq!(
            (kernel.user.as_str(), kernel.cmd.as_str()),
            ("1000", "[my (odd) cmd]")
        );

        let text = table(&[row]);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "UID        PID  PPID  C STIME TTY          TIME CMD"
        );
        let line = lines.next().unwrap();
        assert!(
            line.starts_with("www       4242  4200  0 ")
                && line.ends_with(" pts/1    00:00:04 sleep 30"),
            "{line:?}"
        );
    }

    #[test]
    fn ttys_times_and_dates() {
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name(4 << 8 | 1), "tty1");
        assert_eq!(tty_name(4 << 8 | 64), "ttyS0");
        assert_eq!(tty_name(136 << 8 | 5), "pts/5");
        // pts/300: minor 300 = 0x12c, low byte in bits 0-7, the rest from bit 20.
        assert_eq!(tty_name((136 << 8) | 0x2c | (0x100 << 12)), "pts/300");
        assert_eq!(cpu_time(3 * 86_400 + 3661), "3-01:01:01");
        assert_eq!(cpu_time(59), "00:00:59");
        let now = 1_763_900_000; // 2025-11-23
        assert_eq!(start_time(now - 400 * 86_400, now), "2024");
        let same_year = start_time(now - 30 * 86_400, now);
        assert!(
            same_year.starts_with("Oct") || same_year.starts_with("Nov"),
            "{same_year}"
        );
    }
}
