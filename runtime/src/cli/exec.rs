//! `exec [options] ID COMMAND [ARGS...]` or `exec --process process.json ID`.

use super::{flag, opt, parse, CliResult, ExitWith, Flag, Global, Parsed, Usage};
use berth_runtime::container::wait_forwarding_signals;
use berth_runtime::ExecOptions;
use oci_spec::runtime::{Capabilities, Capability, Process};
use std::path::{Path, PathBuf};
use std::str::FromStr;

const FLAGS: &[Flag] = &[
    opt(&["console-socket"]),
    opt(&["cwd"]),
    opt(&["env", "e"]),
    flag(&["tty", "t"]),
    opt(&["user", "u"]),
    opt(&["additional-gids", "g"]),
    opt(&["process", "p"]),
    flag(&["detach", "d"]),
    opt(&["pid-file"]),
    opt(&["process-label"]),
    opt(&["apparmor"]),
    flag(&["no-new-privs"]),
    opt(&["cap", "c"]),
    opt(&["preserve-fds"]),
    flag(&["ignore-paused"]),
];

fn parse_id(s: &str, what: &str) -> Result<u32, Usage> {
    s.parse()
        .map_err(|_| Usage(format!("{what} `{s}` is not a number")))
}

/// `--user UID[:GID]`; `UID` alone keeps the container's group, as with runc.
fn user_ids(u: &str) -> Result<(u32, Option<u32>), Usage> {
    match u.split_once(':') {
        Some((uid, gid)) => Ok((parse_id(uid, "uid")?, Some(parse_id(gid, "gid")?))),
        None => Ok((parse_id(u, "uid")?, None)),
    }
}

/// A command line that does not say what to run exits 1; once it does, every failure to
/// run it exits 255, as with runc, so that it differs from the process's own status.
pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, FLAGS, true)?;
    let id = p.id()?;
    if p.get("process").is_none() && p.args.get(1..).is_none_or(<[String]>::is_empty) {
        return Err(Usage("exec needs a command".into()).into());
    }
    exec(g, &p, id).map_err(|error| ExitWith { code: 255, error }.into())
}

fn exec(g: &Global, p: &Parsed, id: &str) -> CliResult {
    let mut container = g.runtime().load(id)?;
    let process = match p.get("process") {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| Usage(format!("{path}: {e}")))?;
            berth_runtime::spec::from_json::<Process>(&text).map_err(|e| {
                let field = berth_runtime::json_path::at(&text, e.line(), e.column());
                Usage(format!("{path}: malformed at `{field}`: {e}"))
            })?
        }
        None => {
            let cmd = p
                .args
                .get(1..)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| Usage("exec needs a command".into()))?;
            // Defaults from the container's own process, as runc does.
            let mut proc_ = container
                .state()
                .config
                .process()
                .clone()
                .unwrap_or_default();
            proc_.set_args(Some(cmd.to_vec()));
            proc_.set_terminal(Some(p.is_set("tty")));
            if let Some(cwd) = p.get("cwd") {
                proc_.set_cwd(PathBuf::from(cwd));
            }
            // Appended: the process's environment keeps the last entry of each name, so
            // these override the container's.
            let mut env = proc_.env().clone().unwrap_or_default();
            env.extend(p.all("env").iter().cloned());
            proc_.set_env(Some(berth_runtime::process::merge_env(&env)));
            let mut user = proc_.user().clone();
            if let Some(u) = p.get("user") {
                let (uid, gid) = user_ids(u)?;
                user.set_uid(uid);
                if let Some(gid) = gid {
                    user.set_gid(gid);
                }
            }
            if !p.all("additional-gids").is_empty() {
                let gids = p
                    .all("additional-gids")
                    .iter()
                    .map(|s| parse_id(s, "gid"))
                    .collect::<Result<Vec<_>, _>>()?;
                user.set_additional_gids(Some(gids));
            }
            proc_.set_user(user);
            if p.is_set("no-new-privs") {
                proc_.set_no_new_privileges(Some(true));
            }
            if !p.all("cap").is_empty() {
                let mut caps = proc_.capabilities().clone().unwrap_or_default();
                let extra: Capabilities = p
                    .all("cap")
                    .iter()
                    .map(|c| {
                        Capability::from_str(c.trim_start_matches("CAP_"))
                            .map_err(|_| Usage(format!("unknown capability `{c}`")))
                    })
                    .collect::<Result<_, _>>()?;
                let add = |s: &Option<Capabilities>| {
                    Some(
                        s.clone()
                            .unwrap_or_default()
                            .union(&extra)
                            .copied()
                            .collect(),
                    )
                };
                caps.set_bounding(add(caps.bounding()));
                caps.set_effective(add(caps.effective()));
                caps.set_permitted(add(caps.permitted()));
                proc_.set_capabilities(Some(caps));
            }
            proc_
        }
    };
    let opts = ExecOptions {
        process,
        console_socket: p.get("console-socket").map(Path::new),
        pid_file: p.get("pid-file").map(Path::new),
        stdio: None,
        preserve_fds: super::create::preserve_fds(p)?,
    };
    let pid = container.exec(&opts)?;
    if p.is_set("detach") {
        return Ok(0);
    }
    Ok(wait_forwarding_signals(pid)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_without_group_keeps_the_containers() {
        assert_eq!(user_ids("1000").unwrap(), (1000, None));
        assert_eq!(user_ids("1000:42").unwrap(), (1000, Some(42)));
        assert_eq!(user_ids("0:0").unwrap(), (0, Some(0)));
        assert!(user_ids("web").unwrap_err().0.contains("uid `web`"));
        assert!(user_ids("1:").unwrap_err().0.contains("gid"));
    }
}
