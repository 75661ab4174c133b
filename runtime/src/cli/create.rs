//! `create [-b DIR] [--console-socket PATH] [--pid-file PATH] [--no-pivot] [--no-new-keyring]
//! [--preserve-fds N] ID`

use super::{flag, opt, parse, CliResult, Flag, Global, Parsed, Usage};
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
    let mut bundle = Bundle::load(Path::new(p.get("bundle").unwrap_or(".")))?;
    let listen = listen_fds();
    if listen > 0 {
        // As runc does: the activated sockets come first, and the program finds them with
        // the usual variables (it is PID 1 of its namespace).
        if let Some(proc_) = bundle.spec.process_mut() {
            let mut env = proc_.env().clone().unwrap_or_default();
            env.push(format!("LISTEN_FDS={listen}"));
            env.push("LISTEN_PID=1".to_string());
            proc_.set_env(Some(env));
        }
    }
    let preserve_fds = listen
        .checked_add(preserve_fds(p)?)
        .ok_or_else(|| Usage("--preserve-fds: too many descriptors".into()))?;
    let opts = CreateOptions {
        id: p.id()?,
        console_socket: p.get("console-socket").map(Path::new),
        pid_file: p.get("pid-file").map(Path::new),
        no_pivot: p.is_set("no-pivot"),
        no_new_keyring: p.is_set("no-new-keyring"),
        stdio: None,
        start,
        preserve_fds,
    };
    Ok((bundle, opts))
}

/// `--preserve-fds N`: descriptors 3 to 3+N-1 (after any socket-activated ones) go to the
/// container's process.
pub fn preserve_fds(p: &Parsed) -> Result<u32, Usage> {
    p.get("preserve-fds").map_or(Ok(0), |n| {
        n.parse().map_err(|_| {
            Usage(format!(
                "--preserve-fds `{n}` is not a number of descriptors"
            ))
        })
    })
}

/// Socket activation (sd_listen_fds): the number of descriptors from 3 handed to this very
/// process (`LISTEN_PID`), which runc passes on to the container before the preserved ones.
fn listen_fds() -> u32 {
    let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    if var("LISTEN_PID") != Some(std::process::id()) {
        return 0;
    }
    var("LISTEN_FDS").unwrap_or(0)
}
