//! `ps [--format table|json] ID [PS_ARGS...]`: the container's processes. The table has
//! runc's columns (those of `ps -ef`) and is read from /proc; given PS_ARGS, runc's way is
//! kept: the host's ps(1) runs with them and its lines are filtered to the container.

use super::{opt, parse, CliResult, Global, Usage};
use berth_runtime::procfs::{self, Clock, PsRow};
use std::process::Command;

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[opt(&["format", "f"])], true)?;
    let c = g.runtime().load(p.id()?)?;
    let pids = c.pids()?;
    match p.get("format") {
        Some("json") => {
            println!("{}", serde_json::to_string(&pids)?);
            return Ok(0);
        }
        None | Some("table") => {}
        Some(other) => {
            return Err(Usage(format!("unknown --format `{other}` (table or json)")).into())
        }
    }
    if p.args.len() > 1 {
        return host_ps(&p.args[1..], &pids);
    }
    let clock =
        Clock::host().ok_or_else(|| Usage("cannot read the clock from /proc/stat".into()))?;
    let users = procfs::users(&std::fs::read_to_string("/etc/passwd").unwrap_or_default());
    // A process may exit between listing and reading: it is left out.
    let rows: Vec<PsRow> = pids
        .iter()
        .filter_map(|pid| PsRow::read(*pid, &clock, &users))
        .collect();
    print!("{}", procfs::table(&rows));
    Ok(0)
}

/// `ps PS_ARGS` on the host, keeping the header and the container's lines.
fn host_ps(ps_args: &[String], pids: &[i32]) -> CliResult {
    let out = Command::new("ps")
        .args(ps_args)
        .output()
        .map_err(|e| Usage(format!("ps options need the host's ps(1): {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| Usage("ps output has no PID column".into()))?;
    println!("{header}");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(col)
            .and_then(|s| s.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(0)
}
