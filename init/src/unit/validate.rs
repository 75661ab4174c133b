//! Turns a [`UnitFile`] into a typed [`Unit`], collecting every semantic error of the file.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::file::{self, Number, SizeValue, Text, TextList, UnitFile};
use super::model::*;
use super::value;
use crate::tomlfile::{Diagnostic, Diagnostics, Source};

struct Checker<'a> {
    src: &'a Source<'a>,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        self.errors
            .push(self.src.diagnostic(span, key, message.into()));
    }

    /// Applies `parse` to an optional text value; errors are recorded, `None` returned.
    fn text<T>(
        &mut self,
        v: &Option<Text>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let v = v.as_ref()?;
        match parse(v.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(Some(v.span()), key, e);
                None
            }
        }
    }

    fn duration(&mut self, v: &Option<Text>, key: &str, default: Duration) -> Duration {
        self.text(v, key, value::parse_duration).unwrap_or(default)
    }

    fn list<T>(
        &mut self,
        v: &Option<TextList>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for (i, item) in v.iter().flat_map(|l| l.get_ref()).enumerate() {
            match parse(item.get_ref()) {
                Ok(t) => out.push(t),
                Err(e) => self.error(Some(item.span()), &format!("{key}[{i}]"), e),
            }
        }
        out
    }

    fn int_in(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        range: Range<i64>,
        default: i64,
    ) -> i64 {
        match v {
            Some(n) if range.contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                let (lo, hi) = (range.start, range.end - 1);
                self.error(
                    Some(n.span()),
                    key,
                    format!("must be between {lo} and {hi}"),
                );
                default
            }
            None => default,
        }
    }

    fn unit_names(&mut self, v: &Option<TextList>, key: &str, own: &str) -> Vec<String> {
        let names = self.list(v, key, |n| {
            if !value::is_name(n) {
                Err(format!("`{n}` is not a unit name"))
            } else if n == own {
                Err("a unit cannot depend on itself".to_string())
            } else {
                Ok(n.to_string())
            }
        });
        let mut unique = Vec::new();
        for n in names {
            if !unique.contains(&n) {
                unique.push(n);
            }
        }
        unique
    }
}

fn span_of<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
    v.as_ref().map(Spanned::span)
}

/// Validates a parsed file for the unit called `name`.
pub fn validate(name: &str, file: UnitFile, src: &Source<'_>) -> Result<Unit, Diagnostics> {
    let mut c = Checker {
        src,
        errors: Vec::new(),
    };
    if !value::is_name(name) {
        c.error(
            None,
            "",
            format!("unit name `{name}` may hold only letters, digits, `-`, `_`, `.`"),
        );
    }

    let u = file.unit.unwrap_or_default();
    let description = u.description.map(Spanned::into_inner).unwrap_or_default();
    let after = c.unit_names(&u.after, "unit.after", name);
    let requires = c.unit_names(&u.requires, "unit.requires", name);
    let critical = u.critical.map(Spanned::into_inner).unwrap_or(false);

    let container = match &file.container {
        Some(section) => container(&mut c, section),
        None => {
            c.error(
                None,
                "container",
                "missing [container] section (a command or an image)",
            );
            None
        }
    };
    let resources = resources(&mut c, &file.resources.unwrap_or_default());
    let service = service(&mut c, &file.service.unwrap_or_default());
    let health = file.health.as_ref().and_then(|h| health(&mut c, h));

    let unit = container.map(|container| Unit {
        name: name.to_string(),
        path: src.file.to_string(),
        description,
        after,
        requires,
        critical,
        container,
        resources,
        service,
        health,
    });
    match unit {
        Some(unit) if c.errors.is_empty() => Ok(unit),
        _ => {
            c.errors.sort_by_key(|d| (d.line, d.column));
            Err(Diagnostics(c.errors))
        }
    }
}

fn command(c: &mut Checker<'_>, v: &Option<TextList>, key: &str) -> Vec<String> {
    let args = c.list(v, key, |a| {
        if a.contains('\0') {
            Err("contains a NUL byte".to_string())
        } else {
            Ok(a.to_string())
        }
    });
    if let Some(list) = v {
        if args.first().is_some_and(String::is_empty) || list.get_ref().is_empty() {
            c.error(Some(list.span()), key, "needs a non-empty program name");
        }
    }
    args
}

fn container(c: &mut Checker<'_>, s: &file::ContainerSection) -> Option<Container> {
    let image = c.text(&s.image, "container.image", value::parse_image);
    let is_system = s.image.is_none();
    let command = command(c, &s.command, "container.command");
    if is_system && s.command.is_none() {
        c.error(
            None,
            "container.command",
            "a unit without `image` (a system unit) needs `command`",
        );
    }

    let mut env = BTreeMap::new();
    if let Some(map) = &s.env {
        for (k, v) in map.get_ref() {
            let valid_key = k.bytes().enumerate().all(|(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            }) && !k.is_empty();
            if !valid_key {
                c.error(
                    Some(v.span()),
                    &format!("container.env.{k}"),
                    "not a valid variable name",
                );
            } else if v.get_ref().contains('\0') {
                c.error(
                    Some(v.span()),
                    &format!("container.env.{k}"),
                    "contains a NUL byte",
                );
            } else {
                env.insert(k.clone(), v.get_ref().clone());
            }
        }
    }

    let user = c.text(&s.user, "container.user", value::parse_user);
    let default_network = if is_system {
        NetworkMode::Host
    } else {
        NetworkMode::Bridge
    };
    let network = c
        .text(&s.network, "container.network", |n| match n {
            "bridge" => Ok(NetworkMode::Bridge),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            _ => Err(format!("unknown network `{n}` (bridge, host or none)")),
        })
        .unwrap_or(default_network);
    let ports = c.list(&s.ports, "container.ports", value::parse_port);
    for (i, p) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|q| (q.host_port, q.protocol) == (p.host_port, p.protocol))
        {
            let span = s
                .ports
                .as_ref()
                .and_then(|l| l.get_ref().get(i))
                .map(Spanned::span);
            c.error(
                span,
                &format!("container.ports[{i}]"),
                "host port published twice",
            );
        }
    }
    let volumes = c.list(&s.volumes, "container.volumes", value::parse_volume);
    let read_only = s.read_only.as_ref().is_some_and(|r| *r.get_ref());
    let privileged = s.privileged.as_ref().is_some_and(|p| *p.get_ref());
    let pid = c
        .text(&s.pid, "container.pid", |p| match p {
            "container" => Ok(PidMode::Container),
            "host" => Ok(PidMode::Host),
            _ => Err(format!("unknown pid namespace `{p}` (container or host)")),
        })
        .unwrap_or(PidMode::Container);

    if !privileged {
        if let Some(i) = volumes
            .iter()
            .position(|v| v.propagation == value::Propagation::Rshared)
        {
            c.error(
                span_of(&s.volumes),
                &format!("container.volumes[{i}]"),
                "rshared needs privileged = true (only a privileged container can mount there)",
            );
        }
    }
    if is_system {
        // A system unit runs on the host's own root and namespaces.
        let only_containers: [(&str, Option<Range<usize>>); 5] = [
            ("container.ports", span_of(&s.ports)),
            ("container.volumes", span_of(&s.volumes)),
            ("container.read_only", span_of(&s.read_only)),
            ("container.privileged", span_of(&s.privileged)),
            ("container.pid", span_of(&s.pid)),
        ];
        for (key, span) in only_containers {
            if span.is_some() {
                c.error(
                    span,
                    key,
                    "only container units (with `image`) can use this key",
                );
            }
        }
        if network != NetworkMode::Host {
            c.error(
                span_of(&s.network),
                "container.network",
                "a system unit always uses the host network",
            );
        }
    } else if network != NetworkMode::Bridge && !ports.is_empty() {
        c.error(
            span_of(&s.ports),
            "container.ports",
            "publishing ports needs network = \"bridge\"",
        );
    }

    Some(Container {
        image,
        command,
        env,
        user,
        network,
        ports,
        volumes,
        read_only,
        privileged,
        pid,
    })
}

fn resources(c: &mut Checker<'_>, s: &file::ResourcesSection) -> Resources {
    let memory_max = s.memory_max.as_ref().and_then(|m| {
        let parsed = match m.get_ref() {
            SizeValue::Bytes(b) => {
                u64::try_from(*b).map_err(|_| "must not be negative".to_string())
            }
            SizeValue::Text(t) => value::parse_size(t),
        };
        match parsed {
            Ok(b) if b >= 1 << 20 => Some(b),
            Ok(_) => {
                c.error(
                    Some(m.span()),
                    "resources.memory_max",
                    "must be at least 1M",
                );
                None
            }
            Err(e) => {
                c.error(Some(m.span()), "resources.memory_max", e);
                None
            }
        }
    });
    let cpu_max = s.cpu_max.as_ref().and_then(|n| {
        let cpus = Number::as_f64(*n.get_ref());
        if (0.01..=4096.0).contains(&cpus) {
            Some(cpus)
        } else {
            c.error(
                Some(n.span()),
                "resources.cpu_max",
                "must be between 0.01 and 4096 CPUs",
            );
            None
        }
    });
    let pids_max = s
        .pids_max
        .as_ref()
        .map(|_| c.int_in(&s.pids_max, "resources.pids_max", 1..(1 << 22), 1) as u64);
    Resources {
        memory_max,
        cpu_max,
        pids_max,
    }
}

fn service(c: &mut Checker<'_>, s: &file::ServiceSection) -> Service {
    let d = Service::default();
    let restart = c
        .text(&s.restart, "service.restart", |r| match r {
            "always" => Ok(Restart::Always),
            "on-failure" => Ok(Restart::OnFailure),
            "never" => Ok(Restart::Never),
            _ => Err(format!(
                "unknown restart policy `{r}` (always, on-failure or never)"
            )),
        })
        .unwrap_or(d.restart);
    let restart_delay = c.duration(&s.restart_delay, "service.restart_delay", d.restart_delay);
    let max_default = d.restart_delay_max.max(restart_delay);
    let restart_delay_max = c.duration(
        &s.restart_delay_max,
        "service.restart_delay_max",
        max_default,
    );
    if restart_delay_max < restart_delay {
        c.error(
            span_of(&s.restart_delay_max),
            "service.restart_delay_max",
            "must not be shorter than restart_delay",
        );
    }
    let burst = c.int_in(
        &s.start_limit_burst,
        "service.start_limit_burst",
        1..10_001,
        5,
    ) as u32;
    let interval = c.duration(
        &s.start_limit_interval,
        "service.start_limit_interval",
        d.start_limit_interval,
    );
    let stop_signal = c.text(&s.stop_signal, "service.stop_signal", value::parse_signal);
    let stop_timeout = c.duration(&s.stop_timeout, "service.stop_timeout", d.stop_timeout);
    Service {
        restart,
        restart_delay,
        restart_delay_max,
        start_limit_burst: burst,
        start_limit_interval: interval,
        stop_signal: stop_signal.unwrap_or(d.stop_signal),
        stop_timeout,
    }
}

fn health(c: &mut Checker<'_>, s: &file::HealthSection) -> Option<Health> {
    if s.exec.is_none() {
        c.error(None, "health.exec", "a [health] section needs `exec`");
    }
    let exec = command(c, &s.exec, "health.exec");
    let interval = c.duration(&s.interval, "health.interval", DEFAULT_HEALTH_INTERVAL);
    if interval < Duration::from_millis(10) {
        c.error(
            span_of(&s.interval),
            "health.interval",
            "must be at least 10ms",
        );
    }
    let retries = c.int_in(&s.retries, "health.retries", 1..1001, 3) as u32;
    Some(Health {
        exec,
        interval,
        retries,
    })
}
