//! `ps [--format table|json] ID [PS_ARGS...]`: like runc, `ps -ef` filtered to the container.

use super::{opt, parse, CliResult, Global, Usage};
use std::process::Command;

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[opt(&["format", "f"])], true)?;
    let c = g.runtime().load(p.id()?)?;
    let pids = c.pids()?;
    if p.get("format") == Some("json") {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    let ps_args: Vec<String> = if p.args.len() > 1 {
        p.args[1..].to_vec()
    } else {
        vec!["-ef".into()]
    };
    let out = Command::new("ps").args(&ps_args).output()?;
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
