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
