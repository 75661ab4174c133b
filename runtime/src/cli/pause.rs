//! `pause ID`: freeze every process of the container (cgroup v2 freezer).

use super::{parse, CliResult, Global};

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[], false)?;
    g.runtime().load(p.id()?)?.pause()?;
    Ok(0)
}
