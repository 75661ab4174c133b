//! berth-init: PID 1 of a Berth machine, or with `--root-dir DIR` the same supervisor on a
//! development host. Boot is a list of named phases (see `boot`); then supervision runs
//! until an ordered shutdown.

use std::path::PathBuf;

use berth_init::boot::{self, emergency, Boot, Mode};
use berth_init::log::Logger;
use berth_init::run::{Init, VERSION};
use berth_init::shutdown;

const USAGE: &str = "usage: berth-init                 (as PID 1)
       berth-init --root-dir DIR  (host mode: units in DIR/units, state in DIR/state,
                                   control socket DIR/api.sock)
       berth-init --version
       berth-init update-apply SOURCE [--allow-downgrade] [--keys DIR]
                                  (writes a signed update bundle into the other slot;
                                   SOURCE: a file, - for stdin, an http(s):// URL, or an
                                   OCI reference, fetched by berth-runtime)";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Run(Mode),
    Version,
    Help,
}

/// Parses berth-init's arguments (without the program name); `pid1` when running as PID 1.
fn parse_args(args: &[String], pid1: bool) -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut root = None;
    loop {
        let arg = match parser.next() {
            Ok(Some(arg)) => arg,
            Ok(None) => break,
            // The kernel passes unknown command-line words to init; PID 1 ignores them.
            Err(e) if pid1 => {
                log::debug!("ignoring argument: {e}");
                continue;
            }
            Err(e) => return Err(format!("{e}\n{USAGE}")),
        };
        match arg {
            Long("root-dir") => {
                root = Some(parser.value().map_err(|_| "--root-dir needs a directory")?)
            }
            Long("version") => return Ok(Command::Version),
            Long("help") | Short('h') => return Ok(Command::Help),
            other if pid1 => log::debug!("ignoring argument {other:?}"),
            Value(v) => {
                let v = v.to_string_lossy();
                return Err(format!("unknown argument `{v}`\n{USAGE}"));
            }
            Short(c) => return Err(format!("unknown argument `-{c}`\n{USAGE}")),
            Long(name) => return Err(format!("unknown argument `--{name}`\n{USAGE}")),
        }
    }
    match (pid1, root) {
        (true, _) => Ok(Command::Run(Mode::Pid1)),
        (false, Some(dir)) => {
            let dir = PathBuf::from(dir);
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            Ok(Command::Run(Mode::Host { root: dir }))
        }
        (false, None) => Err(format!(
            "not running as PID 1: use --root-dir DIR for host mode\n{USAGE}"
        )),
    }
}

fn main() {
    // The update child (forked by the API, or run by hand): not the supervisor.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::process::id() != 1 && args.first().map(String::as_str) == Some("update-apply") {
        std::process::exit(berth_init::update::machine::main(&args[1..]));
    }
    let mode = match parse_args(&args, std::process::id() == 1) {
        Ok(Command::Run(mode)) => mode,
        Ok(Command::Version) => {
            println!("berth-init {VERSION}");
            std::process::exit(0);
        }
        Ok(Command::Help) => {
            println!("{USAGE}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("berth-init: {e}");
            std::process::exit(2);
        }
    };
    let pid1 = mode == Mode::Pid1;
    let logger = if pid1 {
        Logger::for_pid1()
    } else {
        Logger::for_host()
    };
    // BERTH_LOG=debug shows per-process detail (e.g. every reaped orphan).
    let level = std::env::var("BERTH_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    logger.with_level(level).install();
    // Panics are logged through the facade (kmsg/syslog), then caught by the loop.
    std::panic::set_hook(Box::new(|info| log::error!("panic: {info}")));

    log::info!(
        "berth-init {VERSION} starting ({})",
        if pid1 { "PID 1" } else { "host mode" }
    );
    if !pid1 {
        // Before anything else is forked and before berth-init becomes a subreaper: the
        // guard kills the units' processes if berth-init dies without stopping them.
        if let Err(e) = berth_init::launch::guard::spawn() {
            log::warn!("cannot start the guard process: units may outlive berth-init: {e}");
        }
    }
    let mut boot = Boot::new(mode);
    let phases = if pid1 {
        boot::pid1_phases()
    } else {
        boot::host_phases()
    };
    if let Err((phase, e)) = boot::run_phases(&phases, &mut boot) {
        let reason = format!("{phase}: {e}");
        if pid1 {
            // A new slot's attempt ends in a reboot (GRUB counts it), not in a shell.
            berth_init::platform::end_failed_attempt(&reason);
        }
        boot.disarm_watchdog();
        fail(pid1, &reason);
    }
    let launchers: Vec<Box<dyn berth_init::launch::Launcher>> =
        vec![Box::new(container_launcher(&boot))];
    let mut init = match Init::start(boot, launchers) {
        Ok(init) => init,
        Err(e) => fail(pid1, &e.to_string()),
    };
    let action = init.run();
    // Close what the supervisor holds open (unit logs on the state partition, the API
    // socket) so that the state filesystem can be unmounted cleanly.
    drop(init);
    if pid1 {
        shutdown::finish_pid1(action);
    }
    log::info!("all units stopped; exiting");
}

/// A fatal boot error: PID 1 drops to an emergency shell, host mode exits.
fn fail(pid1: bool, reason: &str) -> ! {
    if pid1 {
        berth_init::platform::end_failed_attempt(reason);
        emergency::run_forever(reason);
    }
    log::error!("{reason}");
    std::process::exit(1);
}

/// Units with an image run through berth-runtime's library. Its state lives in
/// /run/berth/runtime (host mode: DIR/state/run/runtime), the bridge network's address and
/// port allocations beside it in /run/berth/network: like the links and the nftables table
/// they describe, they last until the next boot; so do the directories of read-only
/// containers (/run/berth/containers; host mode: all under DIR/state/containers). Images are
/// pulled by the berth-runtime binary (host mode: the one beside berth-init, or
/// $BERTH_RUNTIME).
fn container_launcher(boot: &Boot) -> berth_init::launch::container::ContainerLauncher {
    let run = match &boot.mode {
        Mode::Pid1 => PathBuf::from("/run/berth"),
        Mode::Host { .. } => boot.paths.state.join("run"),
    };
    let launcher = berth_init::launch::container::ContainerLauncher::new(
        &boot.paths.state,
        &boot.paths.machine_config,
        run.join("runtime"),
        run.join("network"),
        boot.paths.runtime_bin.clone(),
    );
    match boot.mode {
        // /run is a tmpfs and the mounts are PID 1's: nothing of a container outlives a boot.
        Mode::Pid1 => launcher
            .boot_scoped()
            .read_only_dirs_in(run.join("containers")),
        Mode::Host { .. } => launcher,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn network_allocations_live_on_the_run_tmpfs_not_on_the_state_partition() {
        let pid1 = Boot::new(Mode::Pid1);
        assert_eq!(
            container_launcher(&pid1).network_dir(),
            std::path::Path::new("/run/berth/network")
        );
        let host = Boot::new(Mode::Host {
            root: PathBuf::from("/tmp/berth-host"),
        });
        assert_eq!(
            container_launcher(&host).network_dir(),
            host.paths.state.join("run/network")
        );
        assert!(!container_launcher(&host)
            .network_dir()
            .starts_with(host.paths.state.join("network")));
    }

    fn parse(a: &[&str], pid1: bool) -> Result<Command, String> {
        parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>(), pid1)
    }

    #[test]
    fn host_mode_needs_a_root_dir_in_either_form() {
        let host = |dir: &str| Ok(Command::Run(Mode::Host { root: dir.into() }));
        assert_eq!(parse(&["--root-dir", "/d"], false), host("/d"));
        assert_eq!(parse(&["--root-dir=/e"], false), host("/e"));
        // A repeated option: the last one counts.
        assert_eq!(
            parse(&["--root-dir=/e", "--root-dir", "/f"], false),
            host("/f")
        );
        assert_eq!(
            parse(&["--version", "--bogus"], false),
            Ok(Command::Version)
        );
        assert_eq!(parse(&["-h"], false), Ok(Command::Help));
        let err = |a: &[&str]| parse(a, false).err().unwrap();
        assert!(err(&[]).starts_with("not running as PID 1"));
        assert_eq!(err(&["--root-dir"]), "--root-dir needs a directory");
        assert!(err(&["--bogus"]).starts_with("unknown argument `--bogus`\nusage:"));
        assert!(err(&["-x"]).starts_with("unknown argument `-x`\n"));
        assert!(err(&["word"]).starts_with("unknown argument `word`\n"));
    }

    #[test]
    fn pid1_ignores_the_kernels_words() {
        let args = ["single", "-s", "--x=1", "-ab", "--root-dir", "/d"];
        assert_eq!(parse(&args, true), Ok(Command::Run(Mode::Pid1)));
    }
}
