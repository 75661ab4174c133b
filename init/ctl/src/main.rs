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
  check FILE...               validate unit files (offline)
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
    /// The command and its arguments.
    pub words: Vec<String>,
}

/// Parses the command line (without the program name).
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--json" => o.json = true,
            "-f" | "--follow" => o.follow = true,
            "--no-wait" => o.no_wait = true,
            "--no-start" => o.no_start = true,
            "--reboot" => o.reboot = true,
            "--allow-downgrade" => o.allow_downgrade = true,
            "--socket" => o.socket = Some(value(arg)?),
            "--host" => o.host = Some(value(arg)?),
            "--cert" => o.cert = Some(value(arg)?),
            "--key" => o.key = Some(value(arg)?),
            "--ca" => o.ca = Some(value(arg)?),
            "--tls-name" => o.tls_name = Some(value(arg)?),
            "--tail" | "-n" => o.tail = Some(value(arg)?),
            "--timeout" => {
                let v = value(arg)?;
                o.timeout = Some(
                    v.parse()
                        .map_err(|_| format!("--timeout: `{v}` is not a number of seconds"))?,
                );
            }
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("unknown option {flag}"))
            }
            _ => o.words.push(arg.clone()),
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
        return commands::check(&opts.words[1..]);
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

    #[test]
    fn options_go_before_or_after_the_command() {
        let args: Vec<String> = ["--json", "logs", "web", "-f", "--tail", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = parse(&args).unwrap();
        assert!(o.json && o.follow);
        assert_eq!(o.tail.as_deref(), Some("5"));
        assert_eq!(o.words, ["logs", "web"]);
        assert!(parse(&["--tail".to_string()]).is_err());
        assert!(parse(&["--bogus".to_string()]).is_err());
    }
}
