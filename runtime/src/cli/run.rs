//! `run [-b DIR] [--detach] [--keep] [--pid-file PATH] [--console-socket PATH] ID`:
//! create and start; in the foreground, wait, forward signals, delete, exit with its status.

use super::{create, flag, parse, CliResult, Flag, Global};
use berth_runtime::container::wait_forwarding_signals;
use berth_runtime::StartMode;

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let mut flags: Vec<Flag> = Vec::new();
    flags.extend(create::FLAGS.iter().map(|f| Flag {
        names: f.names,
        value: f.value,
    }));
    flags.push(flag(&["detach", "d"]));
    flags.push(flag(&["keep"]));
    let p = parse(args, &flags, false)?;
    let (bundle, opts) = create::load(&p, StartMode::Channel)?;
    let runtime = g.runtime();
    let mut container = runtime.create(&bundle, &opts)?;
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        return Err(e.into());
    }
    if p.is_set("detach") {
        return Ok(0);
    }
    let code = wait_forwarding_signals(container.pid())?;
    if !p.is_set("keep") {
        container.delete(true)?;
    }
    Ok(code)
}
