//! The container's program and `exec`'s options resolve as with runc: relative program paths,
//! environment overrides, user and group, exit statuses (root, busybox bundle).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::json;

/// An image's `WORKDIR /app` with `CMD ["./start.sh"]`: the program is found in the working
/// directory, not at the root nor on PATH.
fn app_fixture() -> Fixture {
    let f = Fixture::new();
    let app = f.rootfs().join("app");
    std::fs::create_dir_all(app.join("bin")).unwrap();
    for (path, text) in [
        ("start.sh", "#!/bin/sh\necho start in $(pwd)\n"),
        ("bin/tool", "#!/bin/sh\necho tool in $(pwd)\n"),
    ] {
        std::fs::write(app.join(path), text).unwrap();
        let mut perm = std::fs::metadata(app.join(path)).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(app.join(path), perm).unwrap();
    }
    f
}

#[test]
fn relative_programs_are_found_from_the_working_directory() {
    let mut f = app_fixture();
    f.args(&["./start.sh"]);
    f.config["process"]["cwd"] = json!("/app");
    let out = f.run(&unique("relprog"));
    assert_eq!(ok(&out), "start in /app\n");
    f.args(&["bin/tool"]);
    let out = f.run(&unique("relprog"));
    assert_eq!(ok(&out), "tool in /app\n");
    // From another directory the same path is missing, and the error names it.
    f.args(&["./start.sh"]);
    f.config["process"]["cwd"] = json!("/");
    let out = f.run(&unique("relprog"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("./start.sh"), "{}", stderr(&out));
}

#[test]
fn exec_finds_relative_programs_from_its_cwd() {
    let mut f = app_fixture();
    f.args(&["sleep", "60"]);
    let id = unique("relexec");
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    let out = f.cli(&["exec", "--cwd", "/app", &id, "./start.sh"]);
    assert_eq!(ok(&out), "start in /app\n");
    let out = f.cli(&["exec", "--cwd", "/app/bin", &id, "../start.sh"]);
    assert_eq!(ok(&out), "start in /app/bin\n");
    ok(&f.cli(&["delete", "--force", &id]));
}

/// A running container whose config sets FOO and the group 42.
fn running_with_env_and_group(f: &mut Fixture, id: &str) {
    f.args(&["sleep", "60"]);
    f.config["process"]["env"]
        .as_array_mut()
        .unwrap()
        .extend([json!("FOO=config"), json!("BAR=kept")]);
    f.config["process"]["user"] = json!({"uid": 0, "gid": 42});
    f.create(id);
    ok(&f.cli(&["start", id]));
}

#[test]
fn exec_env_overrides_the_containers() {
    let mut f = Fixture::new();
    let id = unique("execenv");
    running_with_env_and_group(&mut f, &id);
    // `env` itself, not a shell: a shell would hide a duplicate by keeping the last entry.
    let out = ok(&f.cli(&["exec", "-e", "FOO=exec", "-e", "NEW=1", &id, "env"]));
    let foo: Vec<&str> = out.lines().filter(|l| l.starts_with("FOO=")).collect();
    assert_eq!(foo, ["FOO=exec"], "{out}");
    assert!(out.lines().any(|l| l == "BAR=kept") && out.lines().any(|l| l == "NEW=1"));
    ok(&f.cli(&["delete", "--force", &id]));
}

#[test]
fn exec_user_without_group_keeps_the_containers_group() {
    let mut f = Fixture::new();
    let id = unique("execuser");
    running_with_env_and_group(&mut f, &id);
    let out = f.cli(&["exec", "-u", "1000", &id, "sh", "-c", "id -u; id -g"]);
    assert_eq!(ok(&out), "1000\n42\n");
    let out = f.cli(&["exec", "-u", "1000:7", &id, "sh", "-c", "id -u; id -g"]);
    assert_eq!(ok(&out), "1000\n7\n");
    ok(&f.cli(&["delete", "--force", &id]));
}

#[test]
fn the_last_entry_of_a_name_in_the_config_wins() {
    let mut f = Fixture::new();
    f.args(&["env"]);
    f.config["process"]["env"] = json!(["PATH=/bin", "A=1", "B=2", "A=3"]);
    let out = ok(&f.run(&unique("envdup")));
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with("HOME=")).collect();
    assert_eq!(lines, ["PATH=/bin", "A=3", "B=2"]);
}

/// runc's `exec` exits 255 when it cannot run the process, so that its callers tell that from
/// the process's own status; a command line without a command is a usage error (1).
#[test]
fn exec_failures_exit_255_as_with_runc() {
    let mut f = Fixture::new();
    f.args(&["sleep", "60"]);
    let id = unique("exec255");
    f.create(&id);
    ok(&f.cli(&["start", &id]));
    let code = |args: &[&str]| {
        let out = f.cli(args);
        (out.status.code(), stderr(&out))
    };
    let (c, err) = code(&["exec", &id, "no-such-program"]);
    assert_eq!(c, Some(255), "{err}");
    assert!(err.contains("no-such-program"), "{err}");
    let (c, err) = code(&["exec", "--cwd", "/no/such/dir", &id, "true"]);
    assert_eq!(c, Some(255), "{err}");
    assert!(err.contains("/no/such/dir"), "{err}");
    let (c, err) = code(&["exec", &format!("{id}-missing"), "true"]);
    assert_eq!(c, Some(255), "{err}");
    let (c, err) = code(&["exec", &id]);
    assert_eq!(c, Some(1), "{err}");
    assert!(err.contains("exec needs a command"), "{err}");
    assert_eq!(code(&["exec", &id, "sh", "-c", "exit 3"]).0, Some(3));
    ok(&f.cli(&["pause", &id]));
    let (c, err) = code(&["exec", &id, "true"]);
    assert_eq!(c, Some(255), "{err}");
    assert!(err.contains("paused"), "{err}");
    ok(&f.cli(&["resume", &id]));
    ok(&f.cli(&["delete", "--force", &id]));
}
