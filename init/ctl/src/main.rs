//! berthctl: the command-line client of Berth, a thin client of the control API (plus `check`,
//! which validates unit files offline with the same code berth-init uses).
//!
//! [`client`] speaks HTTP over the unix socket or mutual TLS; [`commands`] maps each command
//! to API calls; [`table`] prints for people (`--json` prints the API's JSON for scripts).

mod client;
mod commands;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use berth_init::machine::Pem;
use client::{Client, Endpoint};

pub const DEFAULT_SOCKET: &str = "/run/berth/api.sock";

pub const USAGE: &str = "usage: berthctl [OPTIONS] COMMAND [ARGS]
commands:
  status                      system facts: version, slot, uptime, units
  units | ps                  list units
  show UNIT                   one unit in detail
  start | stop | restart UNIT [--no-wait]
  apply FILE [--no-start]     install or replace the unit FILE (named by its file stem)
  rm UNIT                     stop and remove a unit
  logs [-f] [--tail N] UNIT   a unit's output (-f: keep following)
  metrics [UNIT]              Prometheus metrics (of one unit)
  image pull REF | image ls | image rm REF
  update status               A/B slots: state, version, build, which runs, which boots next
  update apply FILE|URL|REF [--reboot] [--allow-downgrade] [--no-wait]
                              apply an update bundle: a local FILE is sent, a URL or
                              registry reference is fetched by the machine
  update rollback [--reboot]  boot the other slot next (only when it is good)
  reboot | poweroff           ordered shutdown
  check [--cache FILE] FILE... validate unit files (offline); --cache: when all are valid,
                              write their unit cache (a disk image's state/units.cache)
options:
  --json                      print the API's JSON
  --socket PATH               control socket (default /run/berth/api.sock, env BERTH_SOCKET)
  --host HOST:PORT            remote API over mutual TLS (env BERTH_HOST), with
    --cert FILE --key FILE    client certificate and key (env BERTH_CERT, BERTH_KEY)
    --ca FILE                 CA of the server certificate (env BERTH_CA)
    --tls-name NAME           name the server certificate must carry (default: HOST)
  --timeout SECONDS           how long start/stop/restart/rm/pull wait (default 60;
                              update apply: 3600)";

/// Options before or after the command.
#[derive(Debug, Default)]
pub struct Options {
    pub json: bool,
    pub socket: Option<String>,
    pub host: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub ca: Option<String>,
    pub tls_name: Option<String>,
    pub follow: bool,
    pub tail: Option<String>,
    pub no_wait: bool,
    pub no_start: bool,
    pub reboot: bool,
    pub allow_downgrade: bool,
    pub timeout: Option<u64>,
    /// `check --cache FILE`.
    pub cache: Option<String>,
    /// The command and its arguments.
    pub words: Vec<String>,
}

/// Parses the command line (without the program name). `Err("")` asks for the usage text.
pub fn parse(args: &[String]) -> Result<Options, String> {
    use lexopt::prelude::*;
    let mut o = Options::default();
    let mut parser = lexopt::Parser::from_args(args);
    let value = |parser: &mut lexopt::Parser, name: &str| {
        parser
            .value()
            .map_err(|_| format!("{name} needs a value"))?
            .string()
            .map_err(|e| format!("{name}: {e}"))
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("json") => o.json = true,
            Short('f') | Long("follow") => o.follow = true,
            Long("no-wait") => o.no_wait = true,
            Long("no-start") => o.no_start = true,
            Long("reboot") => o.reboot = true,
            Long("allow-downgrade") => o.allow_downgrade = true,
            Long("socket") => o.socket = Some(value(&mut parser, "--socket")?),
            Long("host") => o.host = Some(value(&mut parser, "--host")?),
            Long("cert") => o.cert = Some(value(&mut parser, "--cert")?),
            Long("key") => o.key = Some(value(&mut parser, "--key")?),
            Long("ca") => o.ca = Some(value(&mut parser, "--ca")?),
            Long("tls-name") => o.tls_name = Some(value(&mut parser, "--tls-name")?),
            Long("tail") | Short('n') => o.tail = Some(value(&mut parser, "--tail")?),
            Long("cache") => o.cache = Some(value(&mut parser, "--cache")?),
            Long("timeout") => {
                let v = value(&mut parser, "--timeout")?;
                o.timeout = Some(
                    v.parse()
                        .map_err(|_| format!("--timeout: `{v}` is not a number of seconds"))?,
                );
            }
            Short('h') | Long("help") => return Err(String::new()),
            Value(word) => o.words.push(word.string().map_err(|e| e.to_string())?),
            Short(c) => return Err(format!("unknown option -{c}")),
            Long(name) => return Err(format!("unknown option --{name}")),
        }
    }
    Ok(o)
}

fn env_or(value: &Option<String>, var: &str) -> Option<String> {
    value
        .clone()
        .or_else(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
}

/// The API endpoint the options (and environment) name.
pub fn endpoint(o: &Options) -> Result<Endpoint, String> {
    if let Some(host) = env_or(&o.host, "BERTH_HOST") {
        let need = |v: &Option<String>, var: &str, flag: &str| {
            env_or(v, var)
                .map(|p| Pem::File(PathBuf::from(p)))
                .ok_or_else(|| format!("--host needs {flag} (or {var})"))
        };
        let ca = need(&o.ca, "BERTH_CA", "--ca")?;
        let cert = need(&o.cert, "BERTH_CERT", "--cert")?;
        let key = need(&o.key, "BERTH_KEY", "--key")?;
        let config =
            berth_init::api::tls::client_config(&ca, &cert, &key).map_err(|e| e.to_string())?;
        let name = env_or(&o.tls_name, "BERTH_TLS_NAME");
        return Endpoint::tls(&host, config, name.as_deref()).map_err(|e| e.to_string());
    }
    let socket = env_or(&o.socket, "BERTH_SOCKET").unwrap_or_else(|| DEFAULT_SOCKET.into());
    Ok(Endpoint::Unix(PathBuf::from(socket)))
}

/// Runs berthctl with `args` (without the program name); returns the exit code: 0 success,
/// 1 failure, 2 usage error.
fn run(args: &[String]) -> ExitCode {
    let opts = match parse(args) {
        Ok(o) if !o.words.is_empty() => o,
        Ok(_) => return usage(""),
        Err(e) => return usage(&e),
    };
    if opts.words[0] == "check" {
        return commands::check(&opts.words[1..], opts.cache.as_deref());
    }
    let client = match endpoint(&opts) {
        Ok(e) => Client::new(e),
        Err(e) => {
            eprintln!("berthctl: {e}");
            return ExitCode::from(2);
        }
    };
    match commands::run(&client, &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(commands::Failure::Usage(e)) => usage(&e),
        Err(commands::Failure::Failed(e)) => {
            if !e.is_empty() {
                // Error details quote unit names and server messages.
                eprintln!("berthctl: {}", berth_init::log::escape_control(&e));
            }
            ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    if problem.is_empty() {
        println!("{USAGE}");
        return ExitCode::from(2);
    }
    eprintln!("berthctl: {problem}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(a: &[&str]) -> Result<Options, String> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_go_before_or_after_the_command() {
        let o = parsed(&["--json", "logs", "web", "-f", "--tail", "5"]).unwrap();
        assert!(o.json && o.follow);
        assert_eq!(o.tail.as_deref(), Some("5"));
        assert_eq!(o.words, ["logs", "web"]);
        assert!(parsed(&["--tail"]).is_err());
        assert!(parsed(&["--bogus"]).is_err());
    }

    #[test]
    fn values_inline_empty_repeated_and_after_dashes() {
        let o = parsed(&[
            "--socket=/s",
            "-n",
            "-1",
            "update",
            "apply",
            "-",
            "--timeout=9",
        ]);
        let o = o.unwrap();
        assert_eq!(o.socket.as_deref(), Some("/s"));
        // A value is taken as given, even when it starts with a dash.
        assert_eq!(o.tail.as_deref(), Some("-1"));
        assert_eq!(o.timeout, Some(9));
        assert_eq!(o.words, ["update", "apply", "-"]);
        let o = parsed(&["--host", "a:1", "--host=b:2", "--tls-name=", "status"]).unwrap();
        assert_eq!(o.host.as_deref(), Some("b:2"));
        assert_eq!(o.tls_name.as_deref(), Some(""));
        let o = parsed(&["check", "--", "--odd.toml", "-f"]).unwrap();
        assert_eq!(o.words, ["check", "--odd.toml", "-f"]);
        assert!(!o.follow);
    }

    #[test]
    fn usage_errors_name_the_option() {
        let err = |a: &[&str]| parsed(a).err().unwrap_or_default();
        assert_eq!(err(&["status", "--bogus"]), "unknown option --bogus");
        assert_eq!(err(&["status", "-x"]), "unknown option -x");
        assert_eq!(err(&["logs", "web", "-n"]), "--tail needs a value");
        assert_eq!(
            err(&["--timeout", "soon"]),
            "--timeout: `soon` is not a number of seconds"
        );
        assert!(err(&["--json=yes", "status"]).contains("--json"));
        assert_eq!(err(&["-h"]), "");
    }
}
