//! Finding a unit's processes without a cgroup. Every process a system unit starts carries
//! `BERTH_INVOCATION=<supervisor>.<start>` in its environment (inherited through fork, exec,
//! setsid and double forks), and berth-init is a child subreaper, so whatever a unit leaves
//! behind is re-parented to berth-init. A sweep walks `/proc` once, reads the environment of
//! berth-init's children that are no unit's main process, and kills those whose invocation has
//! ended, with everything below them.
//!
//! The marker is what is left when cgroups are not: a process that clears its environment and
//! then leaves its parent escapes it. With cgroup v2 controllers the unit's cgroup is used as
//! well.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The environment variable that marks a unit's processes.
pub const MARK_VAR: &str = "BERTH_INVOCATION";

/// Rounds of one sweep: killing a process re-parents its children to berth-init, which the
/// next round then sees; a few rounds also catch a fork racing the kill.
const ROUNDS: usize = 8;

/// This supervisor's part of every invocation id: pid and start time, so two berth-inits on one
/// host never match each other's processes.
pub fn supervisor_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("{:x}-{:x}", std::process::id(), nanos)
    })
}

/// `(pid, ppid)` of every live (not zombie) process in `/proc`.
fn processes() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split after the
        // last `)`.
        let Some(close) = stat.iter().rposition(|&b| b == b')') else {
            continue;
        };
        let mut fields = stat[close + 1..]
            .split(|&b| b == b' ')
            .filter(|f| !f.is_empty());
        let state = fields.next();
        let ppid = fields
            .next()
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| f.parse().ok());
        if let (Some(state), Some(ppid)) = (state, ppid) {
            if state != b"Z" && state != b"X" {
                out.push((pid, ppid));
            }
        }
    }
    out
}

/// The value of `BERTH_INVOCATION` in the environment of `pid`, if any.
fn invocation_of(pid: i32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{MARK_VAR}=");
    env.split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_string)
}

/// Which processes a sweep looks at.
pub enum Scope<'a> {
    /// Children of this process (the subreaper) and their descendants, except the pids in
    /// `skip` (live main processes, whose environment need not be read).
    Children { skip: &'a HashSet<i32> },
    /// Every process on the host (after berth-init is gone its orphans went elsewhere).
    All,
}

/// Kills (SIGKILL) every process whose invocation `ended` accepts, with its descendants.
/// Returns how many processes were signalled. Bounded: a few passes over `/proc`.
pub fn kill_marked(scope: Scope<'_>, ended: &dyn Fn(&str) -> bool) -> usize {
    let me = std::process::id() as i32;
    // Signalled already: SIGKILL takes effect when the process next runs, so it may still be
    // listed in the next pass.
    let mut killed: HashSet<i32> = HashSet::new();
    for _ in 0..ROUNDS {
        let procs = processes();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for &(pid, ppid) in &procs {
            children.entry(ppid).or_default().push(pid);
        }
        let candidates: Vec<i32> = match &scope {
            Scope::Children { skip } => children
                .get(&me)
                .map(|c| c.iter().copied().filter(|p| !skip.contains(p)).collect())
                .unwrap_or_default(),
            Scope::All => procs
                .iter()
                .map(|&(pid, _)| pid)
                .filter(|&p| p != me)
                .collect(),
        };
        let mut doomed = Vec::new();
        for pid in candidates {
            if invocation_of(pid).is_some_and(|inv| ended(&inv)) {
                // The whole subtree: what it started may have cleared its environment.
                let mut stack = vec![pid];
                while let Some(p) = stack.pop() {
                    if !killed.contains(&p) {
                        doomed.push(p);
                    }
                    if let Some(c) = children.get(&p) {
                        stack.extend(c.iter().copied().filter(|&c| c != me));
                    }
                }
            }
        }
        if doomed.is_empty() {
            break;
        }
        for pid in doomed {
            // ESRCH: gone meanwhile. Never signal ourselves or a group.
            if pid > 1 && pid != me && killed.insert(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    killed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_orphans_and_their_children_are_killed_and_others_are_not() {
        let token = format!("{}.test", supervisor_token());
        let other = format!("{}.other", supervisor_token());
        let spawn = |inv: &str| {
            // `sh` leaves a grandchild (with a cleared environment) and exits: the grandchild
            // is this test process's child only if it is a subreaper, so look by marker.
            std::process::Command::new("sleep")
                .arg("300")
                .env(MARK_VAR, inv)
                .spawn()
                .unwrap()
        };
        let mut doomed = spawn(&token);
        let mut spared = spawn(&other);
        let killed = kill_marked(
            Scope::Children {
                skip: &HashSet::new(),
            },
            &|inv| inv == token,
        );
        assert_eq!(killed, 1);
        let status = doomed.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(spared.try_wait().unwrap().is_none());
        spared.kill().unwrap();
        spared.wait().unwrap();
    }
}
