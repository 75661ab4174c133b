//! `start ID`

use super::{parse, CliResult, Global};

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[], false)?;
    g.runtime().load(p.id()?)?.start()?;
    Ok(0)
}
