//! `berth-runtime fetch [--config MACHINE_TOML] SOURCE`: streams an OS update bundle from an
//! HTTP(S) URL or an OCI registry to stdout, for `berth-init update-apply`, with the machine
//! config's `[registries]` settings (as `image pull`).

use std::io::{self, Write};
use std::path::PathBuf;

use berth_store::osupdate::{self, Source};
use berth_store::registry::{Client, RegistriesConfig};

use lexopt::Arg::{Long, Short, Value};

use super::{option_text, CliResult, Global};

const USAGE: &str = "usage: berth-runtime fetch [--config FILE] SOURCE
  SOURCE: an http:// or https:// URL, or an OCI reference (registry/repo:tag or @digest) of an
  update pushed with `berth-runtime image push-bundle`; the bundle goes to stdout.
defaults: --config /var/lib/berth/machine.toml";

/// Failed fetch: the source and the reason, on one line.
#[derive(Debug, thiserror::Error)]
#[error("fetch {source_text}: {reason}")]
struct FetchFailed {
    source_text: String,
    reason: String,
}

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let mut config = PathBuf::from("/var/lib/berth/machine.toml");
    let mut source = None;
    let usage = |problem: &str| {
        let _ = writeln!(io::stderr(), "berth-runtime fetch: {problem}\n{USAGE}");
        Ok(2)
    };
    if g.root_given {
        return usage("`--root` does not apply to fetch");
    }
    let mut parser = lexopt::Parser::from_args(args);
    loop {
        let arg = match parser.next() {
            Ok(Some(arg)) => arg,
            Ok(None) => break,
            Err(e) => return usage(&e.to_string()),
        };
        match arg {
            Long("config") => match parser.value() {
                Ok(v) => config = PathBuf::from(v),
                Err(_) => return usage("--config needs a file"),
            },
            Short('h') | Long("help") => {
                println!("{USAGE}");
                return Ok(0);
            }
            Value(s) if source.is_none() => match s.into_string() {
                Ok(s) => source = Some(s),
                Err(s) => return usage(&format!("{s:?} is not UTF-8")),
            },
            Value(extra) => return usage(&format!("unexpected argument {extra:?}")),
            other => return usage(&format!("unknown option {}", option_text(&other))),
        }
    }
    let Some(text) = source else {
        return usage("a SOURCE is required");
    };
    let failed = |e: &dyn std::error::Error| FetchFailed {
        source_text: text.clone(),
        reason: without_prefix(super::one_line(e), &text),
    };
    let source = match Source::parse(&text) {
        Ok(s) => s,
        Err(e) => return usage(&e.to_string()),
    };
    let client = Client::new(RegistriesConfig::load(&config).map_err(|e| failed(&e))?);
    let mut out = io::stdout().lock();
    osupdate::fetch(&client, &source, &mut out).map_err(|e| failed(&e))?;
    Ok(0)
}

/// `reason` without leading repetitions of `source` (the CLI names it once).
fn without_prefix(reason: String, source: &str) -> String {
    let prefix = format!("{source}: ");
    let mut rest = reason.as_str();
    while let Some(r) = rest.strip_prefix(&prefix) {
        rest = r;
    }
    rest.to_string()
}
