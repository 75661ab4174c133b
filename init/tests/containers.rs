//! The container launcher in host mode: a unit with an image runs as a container (overlay
//! root from the image store, unit settings merged with the image config, named volume,
//! read-only root, exec health check), its output lands in the unit log, and stopping
//! berth-init deletes the container and unmounts its root. A missing image is pulled by a
//! child process before start, from a real registry on loopback; a pull that fails fails
//! the start with the reason in the log. A privileged container on the host's pid namespace
//! has the host's powers and processes, and still leaves nothing behind when it stops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
// The runtime's registry fixtures (docker-registry on loopback, umoci images, skopeo push).
#[path = "../../runtime/tests/support/registry.rs"]
mod registry;

use std::path::Path;
use std::process::Command;

use berth_store::Store;
use common::{import_layout, new_umoci_image, run, temp_dir, Host};

/// A busybox image tagged `berth.test/web:1`, imported into `DIR/state/images`.
fn import_busybox_image(dir: &Path) {
    let layout = dir.join("layout");
    let bundle = dir.join("image-bundle");
    let image = new_umoci_image(&layout, &bundle);
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("www")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for a in [
        "sh", "echo", "id", "hostname", "test", "httpd", "sleep", "cat",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    std::fs::write(rootfs.join("www/index.html"), "hello\n").unwrap();
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/www:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nwww:x:33:\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "FROM_IMAGE=yes",
        "--config.cmd",
        "sh",
    ]));
    import_layout(dir, &layout, "berth.test/web:1");
}

const WEB: &str = r#"
[unit]
description = "busybox web server in a container"

[container]
image = "berth.test/web:1"
command = ["sh", "-c", "echo started as $(id -u) on $(hostname) image=$FROM_IMAGE unit=$GREETING; echo kept > /data/file; touch /rootfile 2>/dev/null || echo root-is-read-only; exec httpd -f -p 8080 -h /www"]
env = { GREETING = "hi" }
network = "none"
volumes = ["webdata:/data"]
read_only = true

[health]
exec = ["test", "-f", "/www/index.html"]
interval = "1s"
"#;

#[test]
fn a_unit_with_an_image_runs_as_a_container() {
    let dir = temp_dir("containers");
    import_busybox_image(&dir);
    let mut host = Host::start_in(dir.clone(), &[("web", WEB)]);
    host.wait_state("web", &["healthy"]);
    host.wait_for("the container's output in the unit log", || {
        host.read("state/logs/web.log")
            .contains("root-is-read-only")
    });
    let log = host.read("state/logs/web.log");
    assert!(
        log.contains("started as 0 on web image=yes unit=hi"),
        "{log}"
    );
    // The setup's step timings (bench/boot.sh tabulates this line from the kernel log).
    let setup = log.lines().find(|l| l.contains("unit web: setup total "));
    assert!(
        setup.is_some_and(|l| [
            "leftovers: container ",
            "image lookup ",
            "OCI spec ",
            "network: "
        ]
        .iter()
        .all(|step| l.contains(step))),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("state/volumes/webdata/file")).unwrap(),
        "kept\n"
    );
    let rootfs = dir.join("state/containers/web/rootfs");
    assert!(
        rootfs.join("www/index.html").exists(),
        "overlay root mounted"
    );
    assert!(dir.join("state/run/runtime/web/state.json").exists());
    // The container's own process tree: httpd is pid 1 of its namespace.
    let pid = host.unit("web")["pid"].as_i64().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "httpd");
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap(),
        std::fs::read_link("/proc/self/ns/pid").unwrap()
    );

    host.signal(libc::SIGTERM);
    assert_eq!(host.wait_exit(), Some(0));
    assert!(
        !dir.join("state/run/runtime/web").exists(),
        "container deleted"
    );
    assert!(!rootfs.join("www").exists(), "overlay unmounted");
    assert!(
        dir.join("state/containers/web/upper").exists(),
        "the upper directory is kept"
    );
}

/// A container that rewrites a file of its image, in a writable root.
fn rewriter(image: &str) -> String {
    format!(
        "[container]\nimage = \"{image}\"\n\
         command = [\"sh\", \"-c\", \"echo run www=$(cat /www/index.html); \
         echo changed > /www/index.html; trap 'exit 0' TERM; sleep 60 & wait\"]\n\
         network = \"none\"\n"
    )
}

#[test]
fn a_writable_root_lasts_across_restarts_and_a_new_image_starts_a_new_one() {
    let dir = temp_dir("writable-root");
    import_busybox_image(&dir);
    // Version 2 of the image: one more layer, with a new index.html.
    std::fs::write(
        dir.join("image-bundle/rootfs/www/index.html"),
        "version 2\n",
    )
    .unwrap();
    let layout = dir.join("layout");
    run(Command::new("umoci")
        .args(["repack", "--image", &format!("{}:1", layout.display())])
        .arg(dir.join("image-bundle")));
    import_layout(&dir, &layout, "berth.test/web:2");

    let mut host = Host::start_in(dir.clone(), &[("keeper", &rewriter("berth.test/web:1"))]);
    let log = || host.read("state/logs/keeper.log");
    host.wait_for("the first run", || log().contains("run www=hello"));
    // A restart over the same image keeps what the container wrote.
    let restart = "POST /v1/units/keeper/restart HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(host.request(restart), Some((200..=299, _))));
    host.wait_for("the restarted run", || log().contains("run www=changed"));

    // The unit replaced with the new image: the container's copy of version 1's file would
    // hide version 2's, so the root starts new.
    let v2 = rewriter("berth.test/web:2");
    let put = format!(
        "PUT /v1/units/keeper HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{v2}",
        v2.len()
    );
    assert!(matches!(host.request(&put), Some((200..=299, _))));
    host.wait_for("the run over the new image", || {
        log().contains("run www=version 2")
    });
    assert!(
        log().contains("the image's layers changed (berth.test/web:2)"),
        "{}",
        log()
    );
    assert_eq!(log().matches("run www=changed").count(), 1, "{}", log());
    // The old root is deleted once the new container runs.
    let containers = dir.join("state/containers");
    host.wait_for("the old root deleted", || {
        std::fs::read_dir(&containers)
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.'))
    });
    host.signal(libc::SIGTERM);
    assert_eq!(host.wait_exit(), Some(0));
}

#[test]
fn a_container_start_holds_off_a_prune_from_the_image_lookup_to_the_lease() {
    let dir = temp_dir("gc-lock");
    import_busybox_image(&dir);
    // A prune under way holds the store's GC lock exclusively.
    let store = dir.join("state/images");
    let prune = berth_store::fsutil::FileLock::exclusive(&store.join("gc.lock")).unwrap();
    let unit = "[container]\nimage = \"berth.test/web:1\"\ncommand = [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 60 & wait\"]\n\
                network = \"none\"\nread_only = true\n";
    let host = Host::start_in(dir.clone(), &[("web", unit)]);
    // The start waits: a prune now could delete the layers of the image it would find.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(host.state("web"), "starting");
    assert!(!store.join("leases/web").exists());
    drop(prune);
    host.wait_state("web", &["running"]);
    assert!(store.join("leases/web").exists());
}

#[test]
fn a_missing_image_is_pulled_from_the_registry_then_runs() {
    let reg = registry::Registry::start();
    let dir = temp_dir("registry");
    let layout = dir.join("layout");
    let image = registry::ImageBuilder::new(&layout, "web");
    image.add_busybox();
    std::os::unix::fs::symlink("busybox", image.rootfs().join("bin/sleep")).unwrap();
    image.repack();
    image.write("www/index.html", "served from the registry\n");
    image.repack();
    image.config(&["--config.env", "FROM_REGISTRY=yes", "--config.cmd", "sh"]);
    registry::push(&layout, "web", &reg.addr, "berth/web:1", &[]);
    // The registry speaks plain HTTP: machine config marks it insecure.
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(
        dir.join("state/machine.toml"),
        format!("[registries]\ninsecure = [\"{}\"]\n", reg.addr),
    )
    .unwrap();
    let reference = format!("{}/berth/web:1", reg.addr);
    let unit = format!(
        "[container]\nimage = \"{reference}\"\n\
         command = [\"sh\", \"-c\", \"echo registry=$FROM_REGISTRY; cat /www/index.html; exec sleep 60\"]\n\
         network = \"none\"\n"
    );
    let mut host = Host::start_in(dir.clone(), &[("pulled", &unit)]);
    host.wait_state("pulled", &["running"]);
    host.wait_for("the container's output in the unit log", || {
        host.read("state/logs/pulled.log")
            .contains("served from the registry")
    });
    let log = host.read("state/logs/pulled.log");
    assert!(log.contains("registry=yes"), "{log}");
    assert!(
        log.contains(&format!("pull {reference}:")) && log.contains("downloaded"),
        "pull progress in the unit log: {log}"
    );
    let store = Store::open(dir.join("state/images")).unwrap();
    let pulled = store.resolve(&reference).unwrap();
    assert!(pulled.layers.len() >= 2);
    assert!(dir
        .join("state/containers/pulled/rootfs/www/index.html")
        .exists());

    host.signal(libc::SIGTERM);
    assert_eq!(host.wait_exit(), Some(0));
    assert!(!dir
        .join("state/containers/pulled/rootfs/www/index.html")
        .exists());
}

#[test]
fn a_missing_image_is_pulled_first_and_a_failed_pull_fails_the_start() {
    common::runtime_bin();
    let dir = temp_dir("pull");
    // A registry address on loopback where nothing listens: the pull fails at once.
    let unit = "[container]\nimage = \"127.0.0.1:9/berth/none:1\"\ncommand = [\"true\"]\nnetwork = \"none\"\n\n[service]\nrestart = \"never\"\n";
    let host = Host::start_in(dir, &[("ghost", unit)]);
    host.wait_state("ghost", &["failed"]);
    host.wait_for("the pull's output in the unit log", || {
        host.read("state/logs/ghost.log").contains("127.0.0.1:9")
    });
    // The API names the failed step, not just an exit status.
    let error = host.unit("ghost")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("image pull 127.0.0.1:9/berth/none:1"),
        "{error}"
    );
}

/// What a container reports about itself into `/out` of its volume, then it leaves a
/// `sleep 86401` in the background (with the host's pid namespace, nothing kills that along
/// with the container's init) and runs another as its main process.
const REPORT: &str = "busybox readlink /proc/self/ns/pid > /out/pidns; \
    busybox grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status > /out/status; \
    if busybox dd if=/dev/loop-control of=/dev/null count=0 2>/dev/null; \
    then echo opened > /out/loop-control; fi; \
    sleep 86401 & echo $! > /out/background; echo done > /out/done; exec sleep 86401";

/// `key:\tvalue` of a /proc status text.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

/// A `sleep 86401` of these tests, alive (not a zombie) as `pid`.
fn background_sleep(pid: i32) -> bool {
    common::alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x0086401\x00")
}

#[test]
fn a_privileged_container_on_the_host_pid_namespace_has_the_hosts_powers() {
    let dir = temp_dir("privileged");
    import_busybox_image(&dir);
    let unit = |extra: &str, out: &str| {
        format!(
            "[container]\nimage = \"berth.test/web:1\"\ncommand = [\"sh\", \"-c\", {REPORT:?}]\n\
             volumes = [\"{{dir}}/{out}:/out\"]\n{extra}"
        )
    };
    let privileged = unit(
        "network = \"host\"\npid = \"host\"\nprivileged = true\n",
        "out-kubelet",
    );
    let plain = unit("network = \"none\"\n", "out-plain");
    for out in ["out-kubelet", "out-plain"] {
        std::fs::create_dir_all(dir.join(out)).unwrap();
    }
    let mut host = Host::start_in(dir.clone(), &[("kubelet", &privileged), ("plain", &plain)]);
    for name in ["kubelet", "plain"] {
        host.wait_state(name, &["running"]);
        host.wait_for(&format!("{name}'s report"), || {
            host.read(&format!("out-{name}/done")) == "done\n"
        });
    }
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let our_pidns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let report = |name: &str, file: &str| host.read(&format!("out-{name}/{file}"));

    // The host's pid namespace, every capability berth-init could hand on (its bounding set
    // is this test's), no seccomp filter, no_new_privs off, the host's devices.
    assert_eq!(
        report("kubelet", "pidns").trim(),
        our_pidns.to_str().unwrap()
    );
    let status = report("kubelet", "status");
    assert_eq!(
        status_field(&status, "CapEff"),
        status_field(&ours, "CapBnd"),
        "{status}"
    );
    assert_eq!(status_field(&status, "Seccomp"), "0", "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs"), "0", "{status}");
    assert_eq!(report("kubelet", "loop-control"), "opened\n");
    let main = host.unit("kubelet")["pid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{main}/ns/pid")).unwrap(),
        our_pidns
    );

    // A default container has none of that.
    assert_ne!(report("plain", "pidns").trim(), our_pidns.to_str().unwrap());
    let status = report("plain", "status");
    assert_ne!(
        status_field(&status, "CapEff"),
        status_field(&ours, "CapBnd")
    );
    assert_eq!(status_field(&status, "Seccomp"), "2", "{status}");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{status}");
    assert_eq!(report("plain", "loop-control"), "");

    // The privileged container's background process is the host's to see; stopping
    // berth-init kills it with the rest of the container (through its cgroup).
    let background: i32 = report("kubelet", "background").trim().parse().unwrap();
    // (The shell writes `$!` right after its fork, maybe before the child executed sleep.)
    host.wait_for(&format!("pid {background} running sleep"), || {
        background_sleep(background)
    });
    host.signal(libc::SIGTERM);
    assert_eq!(host.wait_exit(), Some(0));
    assert!(
        !background_sleep(background),
        "pid {background} outlived its container"
    );
    assert!(!common::alive(main as i32));
}

/// A server that runs as another user than root: no capability at all, not even ambient or
/// inheritable ones, and still port 80 of its own network namespace.
const UNPRIVILEGED: &str = r#"
[container]
image = "berth.test/web:1"
user = "www"
network = "none"
volumes = ["{dir}/out:/out"]
command = ["sh", "-c", "busybox grep -E '^Cap(Inh|Prm|Eff|Amb):' /proc/self/status > /out/status; if httpd -p 80 -h /www; then echo bound > /out/port80; fi; echo done > /out/done; exec sleep 86401"]
"#;

#[test]
fn a_container_user_other_than_root_keeps_no_capability_but_binds_low_ports() {
    let dir = temp_dir("unprivileged");
    import_busybox_image(&dir);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut host = Host::start_in(dir.clone(), &[("www", UNPRIVILEGED)]);
    host.wait_state("www", &["running"]);
    host.wait_for("the container's report", || {
        host.read("out/done") == "done\n"
    });
    let status = host.read("out/status");
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(status_field(&status, set), "0000000000000000", "{status}");
    }
    assert_eq!(
        host.read("out/port80"),
        "bound\n",
        "{}",
        host.read("state/logs/www.log")
    );
    host.signal(libc::SIGTERM);
    assert_eq!(host.wait_exit(), Some(0));
}

/// A privileged container with an `rshared` volume (kubelet's pod volumes) and an `rslave`
/// one: a tmpfs it mounts under the first appears on the host; one the host mounts under the
/// second appears in the container.
const PROPAGATION: &str = r#"
[container]
image = "berth.test/web:1"
privileged = true
network = "none"
volumes = ["{dir}/kubelet:/var/lib/kubelet:rshared", "{dir}/hostview:/host:ro,rslave", "{dir}/out:/out"]
command = ["sh", "-c", "busybox mkdir -p /var/lib/kubelet/pod && busybox mount -t tmpfs pod /var/lib/kubelet/pod && echo token > /var/lib/kubelet/pod/secret; i=0; while [ $i -lt 600 ] && ! test -f /host/late/marker; do sleep 0.1; i=$((i+1)); done; test -f /host/late/marker && echo seen > /out/seen; echo done > /out/done; exec sleep 86401"]
"#;

/// Detaches the test's mounts on the host, innermost first, however the test ends.
struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn shared_and_slave_volumes_carry_mounts_between_host_and_container() {
    let dir = temp_dir("propagation");
    import_busybox_image(&dir);
    for d in ["kubelet", "hostview/late", "out"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let _unmount = Unmount(
        ["kubelet/pod", "kubelet", "hostview/late", "hostview"]
            .iter()
            .map(|p| dir.join(p))
            .collect(),
    );
    let mut host = Host::start_in(dir.clone(), &[("kubelet", PROPAGATION)]);
    host.wait_state("kubelet", &["running"]);
    // The container's tmpfs, seen from the host.
    host.wait_for("the container's mount on the host", || {
        host.read("kubelet/pod/secret") == "token\n"
    });
    // A mount of the host's, seen from the container.
    nix::mount::mount(
        Some("late"),
        &dir.join("hostview/late"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(dir.join("hostview/late/marker"), "x").unwrap();
    host.wait_for("the container's report", || {
        host.read("out/done") == "done\n"
    });
    assert_eq!(
        host.read("out/seen"),
        "seen\n",
        "{}",
        host.read("state/logs/kubelet.log")
    );
    host.signal(libc::SIGTERM);
    assert_eq!(host.wait_exit(), Some(0));
}
