//! `spec [-b DIR]`: write a default config.json.

use super::{flag, opt, parse, CliResult, Global};
use std::path::Path;

pub fn run(_g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[opt(&["bundle", "b"]), flag(&["rootless"])], false)?;
    let dir = Path::new(p.get("bundle").unwrap_or("."));
    berth_runtime::spec::write_default(dir, &berth_runtime::spec::default_spec())?;
    Ok(0)
}
