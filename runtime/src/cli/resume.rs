//! `resume ID`: thaw a paused container.

use super::{parse, CliResult, Global};

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[], false)?;
    g.runtime().load(p.id()?)?.resume()?;
    Ok(0)
}
