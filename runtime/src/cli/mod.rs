//! The runc-compatible command line: global flags, then a verb, each verb in its own file.
//! Flags are parsed the way runc's (Go) parser takes them: `-f`, `--flag`, `-flag`,
//! `--flag=value`, options before the container id.

mod create;
mod delete;
mod events;
mod exec;
mod features;
mod fetch;
pub mod image;
mod kill;
mod list;
mod pause;
mod ps;
mod resume;
mod run;
mod spec;
mod start;
mod state;
mod update;

use berth_runtime::container::DEFAULT_ROOT;
use berth_runtime::Runtime;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

pub type CliResult = Result<i32, Box<dyn std::error::Error>>;

/// A verb: its name, a one-line summary and its entry point.
pub struct Verb {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Global, &[String]) -> CliResult,
    /// The verb starts processes inside a container: it runs from a sealed executable
    /// (see `berth_runtime::sealed`).
    pub sealed: bool,
}

/// Every verb. A new one is one line here and one file.
const VERBS: &[Verb] = &[
    Verb {
        name: "create",
        about: "create a container",
        run: create::run,
        sealed: true,
    },
    Verb {
        name: "start",
        about: "start a created container",
        run: start::run,
        sealed: false,
    },
    Verb {
        name: "state",
        about: "print the state of a container",
        run: state::run,
        sealed: false,
    },
    Verb {
        name: "kill",
        about: "send a signal to a container's init (or all its processes)",
        run: kill::run,
        sealed: false,
    },
    Verb {
        name: "delete",
        about: "delete a container",
        run: delete::run,
        sealed: false,
    },
    Verb {
        name: "run",
        about: "create and start a container",
        run: run::run,
        sealed: true,
    },
    Verb {
        name: "update",
        about: "change the resource limits and device rules of a container",
        run: update::run,
        sealed: false,
    },
    Verb {
        name: "exec",
        about: "run a process in a running container",
        run: exec::run,
        sealed: true,
    },
    Verb {
        name: "pause",
        about: "freeze every process of a container",
        run: pause::run,
        sealed: false,
    },
    Verb {
        name: "resume",
        about: "thaw a paused container",
        run: resume::run,
        sealed: false,
    },
    Verb {
        name: "events",
        about: "print resource usage (--stats once, else every --interval) and OOM events",
        run: events::run,
        sealed: false,
    },
    Verb {
        name: "features",
        about: "print the runtime's features (OCI features document)",
        run: features::run,
        sealed: false,
    },
    Verb {
        name: "spec",
        about: "write a default config.json",
        run: spec::run,
        sealed: false,
    },
    Verb {
        name: "list",
        about: "list containers",
        run: list::run,
        sealed: false,
    },
    Verb {
        name: "ps",
        about: "list the processes of a container",
        run: ps::run,
        sealed: false,
    },
    Verb {
        name: "fetch",
        about: "stream an OS update bundle from a URL or a registry to stdout",
        run: fetch::run,
        sealed: false,
    },
    Verb {
        name: "image",
        about: "manage images: pull, ls, inspect, rm, import, export, prune, push-bundle",
        run: image_verb,
        sealed: false,
    },
];

/// `image ...` has its own argument handling (runtime/src/cli/image.rs). Of the global flags,
/// `--log` and `--log-format` apply to it (errors are logged); `--root`, the runtime's state
/// directory, would silently mean nothing and is refused.
fn image_verb(g: &Global, args: &[String]) -> CliResult {
    if g.root_given {
        return Err(Usage(
            "`--root` is the runtime state directory and does not apply to `image`; \
             the image store is chosen with `image --store DIR`"
                .into(),
        )
        .into());
    }
    image::main(args)?;
    Ok(0)
}

/// Global flags.
pub struct Global {
    pub root: PathBuf,
    /// `--root` was given (not the default).
    pub root_given: bool,
    pub log: Option<PathBuf>,
    pub log_json: bool,
}

impl Global {
    pub fn runtime(&self) -> Runtime {
        Runtime::new(&self.root)
    }
}

/// A usage mistake.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// One flag a verb takes.
pub struct Flag {
    pub names: &'static [&'static str],
    pub value: bool,
}

pub const fn flag(names: &'static [&'static str]) -> Flag {
    Flag {
        names,
        value: false,
    }
}

pub const fn opt(names: &'static [&'static str]) -> Flag {
    Flag { names, value: true }
}

/// Parsed flags of a verb: values by the flag's first name, then the positional arguments.
#[derive(Debug, Default)]
pub struct Parsed {
    values: HashMap<&'static str, Vec<String>>,
    pub args: Vec<String>,
}

impl Parsed {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map(Vec::as_slice).unwrap_or_default()
    }
    pub fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v != "false")
    }
    /// The one required positional argument (the container id).
    pub fn id(&self) -> Result<&str, Usage> {
        match self.args.first() {
            Some(id) => Ok(id),
            None => Err(Usage("a container id is required".into())),
        }
    }
}

/// Parses `args` against `flags`. With `stop_at_positional`, everything after the first
/// positional argument is positional (the command of `exec`).
pub fn parse(args: &[String], flags: &[Flag], stop_at_positional: bool) -> Result<Parsed, Usage> {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            p.args.extend(args[i..].iter().cloned());
            break;
        }
        let Some(stripped) = a
            .strip_prefix("--")
            .or_else(|| a.strip_prefix('-'))
            .filter(|s| !s.is_empty() && a != "-")
        else {
            p.args.push(a.clone());
            if stop_at_positional {
                p.args.extend(args[i..].iter().cloned());
                break;
            }
            continue;
        };
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (stripped, None),
        };
        let f = flags
            .iter()
            .find(|f| f.names.contains(&name))
            .ok_or_else(|| Usage(format!("unknown flag `{a}`")))?;
        let value = match (f.value, inline) {
            (_, Some(v)) => v,
            (false, None) => "true".to_string(),
            (true, None) => {
                let v = args
                    .get(i)
                    .ok_or_else(|| Usage(format!("flag `{a}` needs a value")))?;
                i += 1;
                v.clone()
            }
        };
        p.values.entry(f.names[0]).or_default().push(value);
    }
    Ok(p)
}

const GLOBAL_FLAGS: &[Flag] = &[
    opt(&["root"]),
    opt(&["log"]),
    opt(&["log-format"]),
    flag(&["debug"]),
    flag(&["systemd-cgroup"]),
    opt(&["rootless"]),
    opt(&["criu"]),
    flag(&["help", "h"]),
    flag(&["version", "v"]),
];

fn usage() -> String {
    let mut s = String::from("usage: berth-runtime [--root DIR] [--log FILE] [--log-format text|json] COMMAND [OPTIONS] ID\n\ncommands:\n");
    for v in VERBS {
        s.push_str(&format!("  {:8} {}\n", v.name, v.about));
    }
    s
}

/// Runs the command line; returns the process exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    // Global flags come before the verb: the verb is the first argument that is neither a
    // global flag nor the value of one.
    let verb_at = match global_end(args) {
        Ok(i) => i,
        Err(e) => return fail(None, &e),
    };
    let (global_args, rest) = args.split_at(verb_at);
    let global = match parse(global_args, GLOBAL_FLAGS, false) {
        Ok(g) => g,
        Err(e) => return fail(None, &e),
    };
    let g = Global {
        root: global
            .get("root")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
        root_given: global.get("root").is_some(),
        log: global.get("log").map(PathBuf::from),
        log_json: global.get("log-format") == Some("json"),
    };
    // Containers' cgroups are always created as cgroupfs paths; a client that manages them
    // through systemd would find its `slice:prefix:name` paths misread.
    if global.is_set("systemd-cgroup") {
        return fail(
            Some(&g),
            &Usage(
                "--systemd-cgroup is not supported: berth-runtime manages cgroups directly \
                 (use the cgroupfs cgroup driver of the client)"
                    .into(),
            ),
        );
    }
    if global.is_set("version") {
        println!(
            "berth-runtime version {}\nspec: 1.2.0",
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    }
    let Some((verb_name, verb_args)) = rest.split_first() else {
        if global.is_set("help") {
            print!("{}", usage());
            return 0;
        }
        return fail(Some(&g), &Usage(format!("no command given\n{}", usage())));
    };
    let Some(verb) = VERBS.iter().find(|v| v.name == verb_name) else {
        return fail(
            Some(&g),
            &Usage(format!("unknown command `{verb_name}`\n{}", usage())),
        );
    };
    if verb.sealed {
        if let Err(e) = berth_runtime::sealed::ensure_sealed() {
            return fail(Some(&g), &e);
        }
    }
    match (verb.run)(&g, verb_args) {
        Ok(code) => code,
        Err(e) => fail(Some(&g), e.as_ref()),
    }
}

/// Index of the first argument after the global flags (and their values).
fn global_end(args: &[String]) -> Result<usize, Usage> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        let Some(name) = a
            .strip_prefix("--")
            .or_else(|| a.strip_prefix('-'))
            .filter(|s| !s.is_empty())
        else {
            return Ok(i);
        };
        let (name, inline) = match name.split_once('=') {
            Some((n, _)) => (n, true),
            None => (name, false),
        };
        let f = GLOBAL_FLAGS
            .iter()
            .find(|f| f.names.contains(&name))
            .ok_or_else(|| Usage(format!("unknown global flag `{a}`")))?;
        i += if f.value && !inline { 2 } else { 1 };
    }
    Ok(args.len())
}

/// Reports an error on stderr and in the `--log` file; exit code 1.
fn fail(g: Option<&Global>, e: &dyn std::error::Error) -> i32 {
    let msg = e.to_string();
    let _ = writeln!(std::io::stderr(), "berth-runtime: {msg}");
    if let Some(Global {
        log: Some(path),
        log_json,
        ..
    }) = g
    {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let time = berth_runtime::state::now_rfc3339();
            let line = if *log_json {
                serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
            } else {
                format!("time=\"{time}\" level=error msg=\"{msg}\"")
            };
            let _ = writeln!(f, "{line}");
        }
    }
    1
}
