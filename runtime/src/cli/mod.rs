//! The runc-compatible command line: global flags, then a verb, each verb in its own file.
//! Flags are parsed the way runc's (Go) parser takes them: `-f`, `--flag`, `-flag`,
//! `--flag=value`, options before the container id. lexopt lexes the arguments; [`next_token`]
//! adds the two forms Go reads differently (`-flag` as one long option, and `--`).

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

/// An error and its causes on one line, each said once (some errors already print their
/// cause).
fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.contains(&cause) {
            text.push_str(&format!(": {cause}"));
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

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

/// An error reported as any other but with its own exit code: runc's `exec` exits 255 when
/// it cannot run the process, which its callers tell apart from the process's own status.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ExitWith {
    pub code: i32,
    pub error: Box<dyn std::error::Error>,
}

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
    parse_flags(args, flags, stop_at_positional, "flag")
}

/// [`parse`], naming the kind of flag (`flag`, `global flag`) in errors.
fn parse_flags(
    args: &[String],
    flags: &[Flag],
    stop_at_positional: bool,
    kind: &str,
) -> Result<Parsed, Usage> {
    let mut p = Parsed::default();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(token) = next_token(&mut parser)? {
        let (shown, name, inline) = match token {
            Token::Option {
                shown,
                name,
                inline,
            } => (shown, name, inline),
            Token::Positional(a) => {
                p.args.push(a);
                if stop_at_positional {
                    p.args.extend(rest(&mut parser)?);
                    break;
                }
                continue;
            }
            Token::AfterDashes(rest) => {
                p.args.extend(rest);
                break;
            }
        };
        let f = flags
            .iter()
            .find(|f| f.names.contains(&name.as_str()))
            .ok_or_else(|| Usage(format!("unknown {kind} `{shown}`")))?;
        let value = match (f.value, inline) {
            (_, Some(v)) => v,
            (false, None) => "true".to_string(),
            (true, None) => parser
                .value()
                .map_err(|_| Usage(format!("{kind} `{shown}` needs a value")))
                .and_then(|v| utf8(v, &shown))?,
        };
        p.values.entry(f.names[0]).or_default().push(value);
    }
    Ok(p)
}

/// One command-line token as runc's (Go) flag parser reads it.
enum Token {
    /// `--name`, `-name`, `-n`, each maybe with `=value`: `shown` is the option as written
    /// without its value, for messages.
    Option {
        shown: String,
        name: String,
        inline: Option<String>,
    },
    Positional(String),
    /// The arguments after `--`.
    AfterDashes(Vec<String>),
}

/// The next token, lexed by lexopt, except the two forms Go's flags read differently:
/// `-name` is one long option (lexopt would read the letters n, a, m, e) and `--` ends the
/// options (kept apart so that a `-name` after it stays positional).
fn next_token(parser: &mut lexopt::Parser) -> Result<Option<Token>, Usage> {
    if let Some(mut raw) = parser.try_raw_args() {
        let peeked = raw.peek().and_then(|a| a.to_str());
        if peeked == Some("--") {
            raw.next();
            return Ok(Some(Token::AfterDashes(rest(parser)?)));
        }
        if let Some(token) = peeked.and_then(go_long) {
            raw.next();
            return Ok(Some(token));
        }
    }
    let token = match parser.next().map_err(|e| Usage(e.to_string()))? {
        None => return Ok(None),
        Some(lexopt::Arg::Value(v)) => Token::Positional(utf8(v, "argument")?),
        Some(lexopt::Arg::Long(name)) => {
            let name = name.to_string();
            option(parser, format!("--{name}"), name)?
        }
        Some(lexopt::Arg::Short(c)) => option(parser, format!("-{c}"), c.to_string())?,
    };
    Ok(Some(token))
}

/// An option token, with the value written into it (`--root=/x`, `-d=1`), if any.
fn option(parser: &mut lexopt::Parser, shown: String, name: String) -> Result<Token, Usage> {
    let inline = parser
        .optional_value()
        .map(|v| utf8(v, &shown))
        .transpose()?;
    Ok(Token::Option {
        shown,
        name,
        inline,
    })
}

/// `-name` or `-name=value` with a name of two or more characters: Go's long option.
fn go_long(arg: &str) -> Option<Token> {
    let body = arg.strip_prefix('-').filter(|b| !b.starts_with('-'))?;
    let (name, inline) = match body.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (body, None),
    };
    (name.chars().count() > 1).then(|| Token::Option {
        shown: format!("-{name}"),
        name: name.to_string(),
        inline,
    })
}

/// The remaining arguments, unparsed.
fn rest(parser: &mut lexopt::Parser) -> Result<Vec<String>, Usage> {
    parser
        .raw_args()
        .map_err(|e| Usage(e.to_string()))?
        .map(|a| utf8(a, "argument"))
        .collect()
}

/// An option as lexopt found it, as written (without its value), for messages.
pub fn option_text(arg: &lexopt::Arg) -> String {
    match arg {
        lexopt::Arg::Short(c) => format!("-{c}"),
        lexopt::Arg::Long(name) => format!("--{name}"),
        lexopt::Arg::Value(v) => v.to_string_lossy().into_owned(),
    }
}

fn utf8(s: std::ffi::OsString, what: &str) -> Result<String, Usage> {
    s.into_string()
        .map_err(|s| Usage(format!("{what}: {s:?} is not UTF-8")))
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
    // Global flags come before the verb: the verb is the first positional argument.
    let global = match parse_flags(args, GLOBAL_FLAGS, true, "global flag") {
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
    let Some((verb_name, verb_args)) = global.args.split_first() else {
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
        Err(e) => match e.downcast_ref::<ExitWith>() {
            Some(with) => {
                fail(Some(&g), with.error.as_ref());
                with.code
            }
            None => fail(Some(&g), e.as_ref()),
        },
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn exec_flags() -> Vec<Flag> {
        vec![opt(&["env", "e"]), flag(&["tty", "t"]), opt(&["cwd"])]
    }

    /// An error with an optional cause, as the CLI's errors chain them.
    #[derive(Debug)]
    struct Chained(&'static str, Option<Box<Chained>>);

    impl std::fmt::Display for Chained {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Chained {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn one_line_says_each_cause_once_on_one_line() {
        let inner = Chained("connection refused", None);
        let middle = Chained(
            "fetch http://r/v2/: connection refused",
            Some(Box::new(inner)),
        );
        let outer = Chained("pull r/a:1 failed\nsee the log", Some(Box::new(middle)));
        assert_eq!(
            one_line(&outer),
            "pull r/a:1 failed see the log: fetch http://r/v2/: connection refused"
        );
        assert_eq!(one_line(&Chained("plain", None)), "plain");
    }

    #[test]
    fn global_flags_in_every_go_form_then_the_verb() {
        let p = parse_flags(
            &args(&[
                "--root",
                "/r",
                "-log=/l",
                "-log-format",
                "json",
                "--debug",
                "state",
                "--root",
                "x",
            ]),
            GLOBAL_FLAGS,
            true,
            "global flag",
        )
        .unwrap();
        assert_eq!(p.get("root"), Some("/r"));
        assert_eq!(p.get("log"), Some("/l"));
        assert_eq!(p.get("log-format"), Some("json"));
        assert!(p.is_set("debug"));
        // Everything from the verb on is the verb's.
        assert_eq!(p.args, ["state", "--root", "x"]);
        let p = parse_flags(
            &args(&["-root=/s", "-v"]),
            GLOBAL_FLAGS,
            true,
            "global flag",
        );
        let p = p.unwrap();
        assert_eq!(p.get("root"), Some("/s"));
        assert!(p.is_set("version"));
    }

    #[test]
    fn unknown_and_valueless_flags_are_named() {
        let err = |a: &[&str]| {
            parse_flags(&args(a), GLOBAL_FLAGS, true, "global flag")
                .err()
                .unwrap()
                .0
        };
        assert_eq!(err(&["--bogus", "state"]), "unknown global flag `--bogus`");
        assert_eq!(err(&["-bogus=1", "state"]), "unknown global flag `-bogus`");
        assert_eq!(err(&["--root"]), "global flag `--root` needs a value");
        assert_eq!(err(&["-root"]), "global flag `-root` needs a value");
        let err = parse(&args(&["-x"]), &exec_flags(), false).err().unwrap().0;
        assert_eq!(err, "unknown flag `-x`");
        // Go's flags do not cluster: `-te` is one (unknown) name, not -t -e.
        let err = parse(&args(&["-te", "A"]), &exec_flags(), false)
            .err()
            .unwrap()
            .0;
        assert_eq!(err, "unknown flag `-te`");
    }

    #[test]
    fn values_inline_empty_repeated_and_dashed() {
        let p = parse(
            &args(&[
                "-e",
                "A=1",
                "--env=B=2",
                "-e=C",
                "--cwd=",
                "id",
                "--tty=false",
                "-e",
                "-D",
            ]),
            &exec_flags(),
            false,
        )
        .unwrap();
        assert_eq!(p.all("env"), ["A=1", "B=2", "C", "-D"]);
        assert_eq!(p.get("env"), Some("-D"));
        assert_eq!(p.get("cwd"), Some(""));
        assert!(!p.is_set("tty"));
        // Options after the id are taken when the verb allows it.
        assert_eq!(p.args, ["id"]);
        assert_eq!(p.id().unwrap(), "id");
    }

    #[test]
    fn command_after_the_id_and_after_dashes_stays_as_written() {
        let p = parse(
            &args(&["-t", "id", "sh", "-c", "--tty", "-", "--"]),
            &exec_flags(),
            true,
        )
        .unwrap();
        assert!(p.is_set("tty"));
        assert_eq!(p.args, ["id", "sh", "-c", "--tty", "-", "--"]);
        let p = parse(&args(&["--", "-root", "--tty"]), &exec_flags(), false).unwrap();
        assert_eq!(p.args, ["-root", "--tty"]);
        assert!(!p.is_set("tty"));
        let p = parse(&args(&["-", "id"]), &[], false).unwrap();
        assert_eq!(p.args, ["-", "id"]);
        assert!(parse(&[], &[], false).unwrap().id().is_err());
    }
}
