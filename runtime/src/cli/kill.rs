//! `kill [--all] ID [SIGNAL]` (SIGTERM by default).

use super::{flag, parse, CliResult, Global, Usage};
use berth_runtime::container::parse_signal;

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[flag(&["all", "a"])], false)?;
    let id = p.id()?;
    let name = p.args.get(1).map(String::as_str).unwrap_or("SIGTERM");
    let signal = parse_signal(name).ok_or_else(|| Usage(format!("unknown signal `{name}`")))?;
    g.runtime().load(id)?.kill(signal, p.is_set("all"))?;
    Ok(0)
}
