//! OCI hooks: each runs with the container state as JSON on stdin, within its timeout.

use oci_spec::runtime::{Hook, Hooks};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Deprecated alias run with createRuntime, as runc does.
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    pub fn of(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            HookKind::Prestart => hooks.prestart(),
            HookKind::CreateRuntime => hooks.create_runtime(),
            HookKind::CreateContainer => hooks.create_container(),
            HookKind::StartContainer => hooks.start_container(),
            HookKind::Poststart => hooks.poststart(),
            HookKind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {index} ({path}): cannot start: {source}")]
    Spawn {
        kind: &'static str,
        index: usize,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} hook {index} ({path}) failed: {status}")]
    Failed {
        kind: &'static str,
        index: usize,
        path: String,
        status: String,
    },
    #[error("{kind} hook {index} ({path}) timed out after {seconds}s and was killed")]
    Timeout {
        kind: &'static str,
        index: usize,
        path: String,
        seconds: i64,
    },
}

/// Runs the hooks of `kind` in order; the first failure stops the rest.
pub fn run(hooks: Option<&Hooks>, kind: HookKind, state_json: &[u8]) -> Result<(), HookError> {
    let Some(hooks) = hooks else { return Ok(()) };
    for (index, hook) in kind.of(hooks).iter().enumerate() {
        run_one(hook, kind, index, state_json)?;
    }
    Ok(())
}

fn run_one(hook: &Hook, kind: HookKind, index: usize, state: &[u8]) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let spawn_err = |source| HookError::Spawn {
        kind: kind.name(),
        index,
        path: path.clone(),
        source,
    };
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((argv0, rest)) = args.split_first() {
            cmd.arg0(argv0).args(rest);
        }
    }
    cmd.env_clear();
    for e in hook.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state);
    }
    let timeout = hook.timeout().filter(|t| *t > 0);
    if let Some(seconds) = timeout {
        if !wait_exit(child.id() as i32, seconds) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::Timeout {
                kind: kind.name(),
                index,
                path,
                seconds,
            });
        }
    }
    let status = child.wait().map_err(spawn_err)?;
    if status.success() {
        return Ok(());
    }
    let status = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    };
    Err(HookError::Failed {
        kind: kind.name(),
        index,
        path,
        status,
    })
}

/// Waits up to `seconds` for a child to exit (pidfd + poll; no sleeping loop). True if it did.
fn wait_exit(pid: i32, seconds: i64) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return true; // cannot watch: fall back to an unbounded wait
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(seconds.saturating_mul(1000)).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return r != 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(json: &str) -> Hooks {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn hooks_get_state_on_stdin_and_run_in_order() {
        let dir = std::env::temp_dir().join(format!("berth-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let json = format!(
            r#"{{"poststart":[
                {{"path":"/bin/sh","args":["sh","-c","cat >> {0}; echo >> {0}; echo one >> {0}"]}},
                {{"path":"/bin/sh","args":["sh","-c","echo $X >> {0}"],"env":["X=two"]}}]}}"#,
            out.display()
        );
        run(Some(&hooks(&json)), HookKind::Poststart, br#"{"id":"c1"}"#).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"id\":\"c1\"}\none\ntwo\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failure_and_timeout_are_reported() {
        let h = hooks(r#"{"createRuntime":[{"path":"/bin/false"},{"path":"/bin/true"}]}"#);
        let e = run(Some(&h), HookKind::CreateRuntime, b"{}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("createRuntime hook 0 (/bin/false) failed: exit status 1"),
            "{e}"
        );
        let h = hooks(r#"{"poststop":[{"path":"/bin/sleep","args":["sleep","30"],"timeout":1}]}"#);
        assert!(matches!(
            run(Some(&h), HookKind::Poststop, b"{}"),
            Err(HookError::Timeout { .. })
        ));
        let h = hooks(r#"{"poststop":[{"path":"/nonexistent/hook"}]}"#);
        assert!(matches!(
            run(Some(&h), HookKind::Poststop, b"{}"),
            Err(HookError::Spawn { .. })
        ));
    }
}
