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
    let de = &mut serde_json::Deserializer::from_slice(&text);
    let resources: LinuxResources = serde_path_to_error::deserialize(de).map_err(|e| {
        Usage(format!(
            "{source}: malformed at `{}`: {}",
            e.path(),
            e.inner()
        ))
    })?;
    g.runtime().load(id)?.update(&resources)?;
    Ok(0)
}
