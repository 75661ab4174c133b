use std::time::Duration;

use proptest::prelude::*;

use super::*;

const FULL: &str = r#"
[unit]
description = "Web server"
after = ["network"]
requires = ["network"]
critical = true

[container]
image = "docker.io/library/nginx:alpine"
command = ["nginx", "-g", "daemon off;"]
env = { TZ = "UTC" }
user = "101:101"
network = "bridge"
ports = ["8080:80/tcp"]
volumes = ["web-data:/usr/share/nginx/html:ro"]
read_only = true
privileged = false
pid = "container"

[resources]
memory_max = "64M"
cpu_max = 0.5
pids_max = 128

[service]
restart = "on-failure"
restart_delay = "500ms"
restart_delay_max = "8s"
start_limit_burst = 3
start_limit_interval = "1m"
stop_signal = "SIGTERM"
stop_timeout = "10s"

[health]
exec = ["wget", "-q", "-O-", "http://127.0.0.1/"]
interval = "5s"
retries = 3
"#;

#[test]
fn design_example_parses_fully() {
    let u = parse("web", "web.toml", FULL).unwrap();
    assert_eq!(u.name, "web");
    assert!(u.critical && !u.is_system());
    assert_eq!(
        u.container.image.as_ref().unwrap().to_string(),
        "docker.io/library/nginx:alpine"
    );
    assert_eq!(u.container.command, ["nginx", "-g", "daemon off;"]);
    assert_eq!(u.container.env.get("TZ").map(String::as_str), Some("UTC"));
    assert!(!u.container.privileged);
    assert_eq!(u.container.pid, PidMode::Container);
    assert_eq!(u.resources.memory_max, Some(64 << 20));
    assert_eq!(u.resources.cpu_max, Some(0.5));
    assert_eq!(u.resources.pids_max, Some(128));
    assert_eq!(u.service.restart, Restart::OnFailure);
    assert_eq!(u.service.restart_delay, Duration::from_millis(500));
    assert_eq!(u.service.restart_delay_max, Duration::from_secs(8));
    assert_eq!(u.service.start_limit_burst, 3);
    assert_eq!(u.service.start_limit_interval, Duration::from_secs(60));
    let h = u.health.unwrap();
    assert_eq!((h.interval, h.retries), (Duration::from_secs(5), 3));
}

#[test]
fn system_unit_defaults() {
    let u = parse(
        "sleeper",
        "s.toml",
        "[container]\ncommand = [\"sleep\", \"1\"]\n",
    )
    .unwrap();
    assert!(u.is_system());
    assert_eq!(u.container.network, NetworkMode::Host);
    assert_eq!(u.service, Service::default());
    assert!(u.health.is_none());
}

fn errors(text: &str) -> Vec<(usize, String)> {
    let errs = parse("u", "u.toml", text).unwrap_err().0;
    errs.into_iter().map(|d| (d.line, d.key)).collect()
}

#[test]
fn all_semantic_errors_are_reported_at_once() {
    let text = "[container]\ncommand = [\"x\"]\nports = [\"80:80\"]\nuser = \"a b\"\n\
                [service]\nrestart = \"sometimes\"\nrestart_delay = \"5\"\nstop_signal = \"SIGNOPE\"\n\
                [resources]\ncpu_max = 0\n[health]\nretries = 0\n";
    let got = errors(text);
    let keys: Vec<&str> = got.iter().map(|(_, k)| k.as_str()).collect();
    for want in [
        "container.ports",
        "container.user",
        "service.restart",
        "service.restart_delay",
        "service.stop_signal",
        "resources.cpu_max",
        "health.exec",
        "health.retries",
    ] {
        assert!(keys.contains(&want), "missing {want} in {got:?}");
    }
    assert!(got.contains(&(4, "container.user".to_string())));
}

#[test]
fn unknown_keys_and_types_are_reported_with_lines() {
    let got = errors("[unit]\nbogus = 1\n[container]\ncommand = \"sleep\"\n[extra]\n");
    assert_eq!(
        got,
        vec![
            (2, "unit.bogus".into()),
            (4, "container.command".into()),
            (5, "extra".into())
        ]
    );
}

#[test]
fn missing_container_and_bad_names() {
    assert!(errors("").iter().any(|(_, k)| k == "container"));
    let got = errors("[unit]\nafter = [\"u\", \"../x\"]\n[container]\ncommand = [\"x\"]\n");
    assert_eq!(
        got,
        vec![(2, "unit.after[0]".into()), (2, "unit.after[1]".into())]
    );
    assert!(parse("bad name", "f", "[container]\ncommand=[\"x\"]").is_err());
}

#[test]
fn container_keys_are_checked_for_image_units() {
    let got = errors(
        "[container]\nimage = \"Bad//Ref\"\nnetwork = \"host\"\nports = [\"1:1\", \"1:2\"]\n\
         volumes = [\"x:rel\"]\nenv = { \"1A\" = \"v\" }\n",
    );
    let keys: Vec<&str> = got.iter().map(|(_, k)| k.as_str()).collect();
    assert!(keys.contains(&"container.image"), "{got:?}");
    assert!(keys.contains(&"container.ports[1]"), "{got:?}");
    assert!(keys.contains(&"container.ports"), "{got:?}");
    assert!(keys.contains(&"container.volumes[0]"), "{got:?}");
    assert!(keys.contains(&"container.env.1A"), "{got:?}");
}

#[test]
fn privileged_and_host_pid_containers() {
    let u = parse(
        "kubelet",
        "kubelet.toml",
        "[container]\nimage = \"kubelet:1\"\nnetwork = \"host\"\nprivileged = true\n\
         pid = \"host\"\n",
    )
    .unwrap();
    assert!(u.container.privileged);
    assert_eq!(u.container.pid, PidMode::Host);
    // Neither by default.
    let u = parse("web", "web.toml", "[container]\nimage = \"web:1\"\n").unwrap();
    assert!(!u.container.privileged);
    assert_eq!(u.container.pid, PidMode::Container);
    let u = parse(
        "web",
        "web.toml",
        "[container]\nimage = \"web:1\"\npid = \"container\"\n",
    )
    .unwrap();
    assert_eq!(u.container.pid, PidMode::Container);
}

#[test]
fn a_shared_volume_needs_a_privileged_container() {
    let text = "[container]\nimage = \"kubelet:1\"\n\
                volumes = [\"/var/lib/berth/kubelet:/var/lib/kubelet:rshared\"]\n";
    let err = parse("u", "u.toml", text).unwrap_err().to_string();
    assert!(
        err.contains("u.toml:3:11: key `container.volumes[0]`: rshared needs privileged = true"),
        "{err}"
    );
    let u = parse("u", "u.toml", &format!("{text}privileged = true\n")).unwrap();
    assert_eq!(
        u.container.volumes[0].propagation,
        value::Propagation::Rshared
    );
    // Host mounts seen inside: any container.
    let text = "[container]\nimage = \"x:1\"\nvolumes = [\"/:/host:ro,rslave\"]\n";
    let u = parse("u", "u.toml", text).unwrap();
    assert_eq!(
        u.container.volumes[0].propagation,
        value::Propagation::Rslave
    );
}

#[test]
fn bad_privileged_and_pid_values_are_named() {
    let err = parse(
        "u",
        "u.toml",
        "[container]\nimage = \"web:1\"\npid = \"shared\"\nprivileged = \"yes\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "u.toml:3:7: key `container.pid`: unknown pid namespace `shared` (container or host)"
        ),
        "{err}"
    );
    assert!(
        err.contains("u.toml:4:14: key `container.privileged`"),
        "{err}"
    );
}

#[test]
fn system_units_refuse_privileged_and_pid() {
    let err = parse(
        "u",
        "u.toml",
        "[container]\ncommand = [\"x\"]\nprivileged = true\npid = \"host\"\n",
    )
    .unwrap_err()
    .to_string();
    for (line, key) in [(3, "privileged"), (4, "pid")] {
        let want = format!("u.toml:{line}:");
        let found = err.lines().any(|l| {
            l.starts_with(&want)
                && l.contains(&format!(
                    "key `container.{key}`: only container units (with `image`) can use this key"
                ))
        });
        assert!(found, "{key}: {err}");
    }
    // Written as false or as the default, they are still refused: a system unit has no
    // such choice.
    let got = errors("[container]\ncommand = [\"x\"]\nprivileged = false\npid = \"container\"\n");
    assert_eq!(
        got,
        vec![
            (3, "container.privileged".into()),
            (4, "container.pid".into())
        ]
    );
}

#[test]
fn load_dirs_keeps_bad_units_beside_good_ones_and_later_dirs_override() {
    let base = std::env::temp_dir().join(format!("berth-unit-load-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("one.toml"), "[container]\ncommand = [\"a\"]\n").unwrap();
    std::fs::write(b.join("one.toml"), "[container]\ncommand = [\"b\"]\n").unwrap();
    std::fs::write(
        b.join("two.toml"),
        "[container]\ncommand = [\"x\"]\nnope = 1\n",
    )
    .unwrap();
    std::fs::write(b.join("ignored.txt"), "x").unwrap();
    let loaded = load_dirs(&[a, b, base.join("missing")]);
    std::fs::remove_dir_all(&base).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].unit.as_ref().unwrap().container.command, ["b"]);
    let err = loaded[1].unit.as_ref().unwrap_err().to_string();
    assert!(err.contains("two.toml:3:1: key `container.nope`"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse("p", "p.toml", &text);
    }

    #[test]
    fn arbitrary_toml_never_panics(doc in toml_doc()) {
        let _ = parse("p", "p.toml", &doc);
    }

    #[test]
    fn mutated_valid_units_never_panic(cut in 0usize..FULL.len(), insert in "[\\[\\]=\"a-z0-9 .,:\n{}]{0,12}") {
        let mut text = FULL.to_string();
        let at = (0..=cut).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &insert);
        let _ = parse("p", "p.toml", &text);
    }
}

/// The `(line number, section.key)` of every `key = value` line of [`FULL`].
fn value_lines() -> Vec<(usize, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (n, line) in FULL.lines().enumerate() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, _)) = line.split_once(" = ") {
            out.push((n + 1, format!("{section}.{key}")));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A valid unit with one value replaced by arbitrary TOML: it parses, or every error names
    /// the file, a line of it, and a key of the schema (or none, for a syntax error), and one
    /// of them is on the changed line.
    #[test]
    fn errors_in_mutated_units_name_file_line_and_key(
        pick in any::<prop::sample::Index>(),
        value in prop_oneof![
            "\"[ -~]{0,10}\"",
            "-?[0-9]{1,12}",
            "[0-9]{1,3}\\.[0-9]{1,3}",
            Just("true".to_string()),
            "\\[(\"[a-z0-9:/.-]{0,6}\", ?){0,3}\\]",
            "\\{ ?[a-z]{1,4} = \"[a-z]{0,3}\" ?\\}",
            "[a-z\"\\[{=]{1,4}",
        ],
    ) {
        let lines = value_lines();
        let (line_no, key) = &lines[pick.index(lines.len())];
        let text: String = FULL
            .lines()
            .enumerate()
            .map(|(n, l)| match l.split_once(" = ") {
                Some((k, _)) if n + 1 == *line_no => format!("{k} = {value}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        let schema = [
            "unit.", "container.", "resources.", "service.", "health.",
        ];
        if let Err(d) = parse("p", "p.toml", &text) {
            prop_assert!(!d.0.is_empty());
            let last_line = text.lines().count() + 1;
            for e in &d.0 {
                prop_assert_eq!(e.file.as_str(), "p.toml");
                prop_assert!((1..=last_line).contains(&e.line) && e.column >= 1, "{}", e);
                prop_assert!(
                    e.key.is_empty() || schema.iter().any(|s| e.key.starts_with(s)),
                    "{}", e
                );
                let prefix = format!("p.toml:{}:", e.line);
                prop_assert!(e.to_string().starts_with(&prefix), "{}", e);
            }
            let section = key.split('.').next().unwrap_or_default();
            let syntax = d.0.iter().filter(|e| e.key.is_empty()).collect::<Vec<_>>();
            if syntax.is_empty() {
                // A bad value is reported at its line under its key; a value that clashes
                // with another (`network` and `ports`) at least within its section.
                prop_assert!(
                    d.0.iter().any(|e| (e.line == *line_no && e.key.starts_with(key.as_str()))
                        || e.key.starts_with(&format!("{section}."))),
                    "changed {} (line {}) to {}: {}", key, line_no, value, d
                );
            } else {
                // Nothing before the change can be a syntax error.
                prop_assert!(
                    syntax.iter().all(|e| e.line >= *line_no),
                    "changed {} (line {}) to {}: {}", key, line_no, value, d
                );
            }
        }
    }
}

/// Random TOML documents over the unit schema's own section and key names (and a few others),
/// with values of every TOML type, so the validator sees well-formed but wrong input.
fn toml_doc() -> impl Strategy<Value = String> {
    let sections = prop_oneof![
        Just("unit"),
        Just("container"),
        Just("resources"),
        Just("service"),
        Just("health"),
        Just("x")
    ];
    let keys = prop_oneof![
        Just("description"),
        Just("after"),
        Just("requires"),
        Just("critical"),
        Just("image"),
        Just("command"),
        Just("env"),
        Just("user"),
        Just("network"),
        Just("ports"),
        Just("volumes"),
        Just("read_only"),
        Just("privileged"),
        Just("pid"),
        Just("memory_max"),
        Just("cpu_max"),
        Just("pids_max"),
        Just("restart"),
        Just("restart_delay"),
        Just("restart_delay_max"),
        Just("start_limit_burst"),
        Just("start_limit_interval"),
        Just("stop_signal"),
        Just("stop_timeout"),
        Just("exec"),
        Just("interval"),
        Just("retries"),
        Just("zz")
    ];
    let scalar = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[ -~]{0,16}".prop_map(|s| format!("{:?}", s)),
        Just("\"64M\"".to_string()),
        Just("\"500ms\"".to_string()),
        Just("\"8080:80/tcp\"".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ];
    let value = scalar.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(", "))),
            proptest::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,5}", inner), 0..3).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    });
    let entry = (keys, value).prop_map(|(k, v)| format!("{k} = {v}\n"));
    let section = (sections, proptest::collection::vec(entry, 0..6))
        .prop_map(|(s, entries)| format!("[{s}]\n{}", entries.concat()));
    proptest::collection::vec(section, 0..5).prop_map(|s| s.concat())
}
