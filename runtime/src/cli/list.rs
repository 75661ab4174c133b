//! `list [--format table|json] [--quiet]`

use super::{flag, opt, parse, CliResult, Global};

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[opt(&["format", "f"]), flag(&["quiet", "q"])], false)?;
    let containers = g.runtime().list()?;
    if p.is_set("quiet") {
        for c in &containers {
            println!("{}", c.id());
        }
    } else if p.get("format") == Some("json") {
        let states: Vec<_> = containers.iter().map(|c| c.state().oci()).collect();
        println!("{}", serde_json::to_string(&states)?);
    } else {
        println!(
            "{:<12} {:<10} {:<10} {:<40} {:<30} OWNER",
            "ID", "PID", "STATUS", "BUNDLE", "CREATED"
        );
        for c in &containers {
            let s = c.state();
            let pid = if c.status() == berth_runtime::state::Status::Stopped {
                0
            } else {
                s.pid
            };
            println!(
                "{:<12} {:<10} {:<10} {:<40} {:<30} {}",
                s.id,
                pid,
                s.status,
                s.bundle.display(),
                s.created,
                if s.owner.is_empty() { "root" } else { &s.owner }
            );
        }
    }
    Ok(0)
}
