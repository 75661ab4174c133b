//! `state ID`: the OCI state as JSON.

use super::{parse, CliResult, Global};

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[], false)?;
    let c = g.runtime().load(p.id()?)?;
    println!("{}", serde_json::to_string_pretty(&c.state().oci())?);
    Ok(0)
}
