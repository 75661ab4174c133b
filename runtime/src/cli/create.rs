//! `create [-b DIR] [--console-socket PATH] [--pid-file PATH] [--no-pivot] ID`

use super::{flag, opt, parse, CliResult, Flag, Global, Parsed};
use berth_runtime::{Bundle, CreateOptions, StartMode};
use std::path::Path;

pub const FLAGS: &[Flag] = &[
    opt(&["bundle", "b"]),
    opt(&["console-socket"]),
    opt(&["pid-file"]),
    flag(&["no-pivot"]),
    flag(&["no-new-keyring"]),
    opt(&["preserve-fds"]),
];

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, FLAGS, false)?;
    let (bundle, opts) = load(&p, StartMode::Fifo)?;
    g.runtime().create(&bundle, &opts)?;
    Ok(0)
}

/// The bundle and create options from the flags `create` and `run` share.
pub fn load(
    p: &Parsed,
    start: StartMode,
) -> Result<(Bundle, CreateOptions<'_>), Box<dyn std::error::Error>> {
    let bundle = Bundle::load(Path::new(p.get("bundle").unwrap_or(".")))?;
    let opts = CreateOptions {
        id: p.id()?,
        console_socket: p.get("console-socket").map(Path::new),
        pid_file: p.get("pid-file").map(Path::new),
        no_pivot: p.is_set("no-pivot"),
        stdio: None,
        start,
    };
    Ok((bundle, opts))
}
