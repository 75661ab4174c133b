//! `update --resources FILE|- ID`: new limits and device rules for a created or running
//! container, given as OCI `linux.resources` JSON (runc's `--resources`).

use super::{opt, parse, CliResult, Global, Usage};
use oci_spec::runtime::LinuxResources;
use std::io::Read;

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[opt(&["resources", "r"])], false)?;
    let id = p.id()?;
    let source = p
        .get("resources")
        .ok_or_else(|| Usage("update needs --resources FILE (or - for stdin)".into()))?;
    let mut text = Vec::new();
    if source == "-" {
        std::io::stdin().read_to_end(&mut text)?;
    } else {
        text = std::fs::read(source).map_err(|e| Usage(format!("{source}: {e}")))?;
    }
    let resources: LinuxResources = berth_runtime::spec::from_json(&text).map_err(|e| {
        let field = berth_runtime::json_path::at(&text, e.line(), e.column());
        Usage(format!("{source}: malformed at `{field}`: {e}"))
    })?;
    g.runtime().load(id)?.update(&resources)?;
    Ok(0)
}
