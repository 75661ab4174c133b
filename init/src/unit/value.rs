//! Parsers for the typed values inside unit files: durations, sizes, signals, port mappings,
//! volume mounts, user specs and image references. Each returns a message (no position): the
//! caller knows where the value came from and attaches file, line, column and key.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use berth_store::registry::Reference;

/// Parses a human duration: an integer or decimal number followed by `ms`, `s`, `m` or `h`
/// (`500ms`, `10s`, `1.5s`, `2m`). A bare number is refused: units make files readable.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration `{text}` needs a unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let millis_per_unit: f64 = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        _ => {
            return Err(format!(
                "duration `{text}`: unknown unit `{unit}` (use ms, s, m, h)"
            ))
        }
    };
    let value = parse_number(number).ok_or_else(|| format!("duration `{text}`: bad number"))?;
    let millis = value * millis_per_unit;
    // A week is far beyond any restart delay or timeout; it keeps arithmetic far from overflow.
    if millis > 7.0 * 24.0 * 3_600_000.0 {
        return Err(format!("duration `{text}` is longer than a week"));
    }
    Ok(Duration::from_micros((millis * 1000.0).round() as u64))
}

/// Formats a duration the way unit files write it (for messages and the API).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses a size in bytes: an integer with an optional binary suffix `K`, `M`, `G`, `T`
/// (`64M`, `1G`, `512K`, `4096`). `Ki`/`KiB`/`KB` style suffixes mean the same powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("size `{text}` must start with a number"));
    }
    let shift = match suffix
        .trim_end_matches("iB")
        .trim_end_matches('i')
        .trim_end_matches('B')
    {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => {
            return Err(format!(
                "size `{text}`: unknown suffix `{suffix}` (use K, M, G, T)"
            ))
        }
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("size `{text}`: number too large"))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

fn parse_number(text: &str) -> Option<f64> {
    if text.is_empty() || text.starts_with('.') || text.ends_with('.') {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    value.is_finite().then_some(value)
}

/// Parses a signal name (`SIGTERM`, `TERM`) or number into a signal number.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    const NAMES: &[(&str, i32)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("USR2", libc::SIGUSR2),
        ("TERM", libc::SIGTERM),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("WINCH", libc::SIGWINCH),
        ("PWR", libc::SIGPWR),
    ];
    let name = text.trim().trim_start_matches("SIG");
    if let Some((_, n)) = NAMES.iter().find(|(n, _)| *n == name) {
        return Ok(*n);
    }
    match text.parse::<i32>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(format!("unknown signal `{text}`")),
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A published port: `[hostip:]host:container[/tcp|udp]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

pub fn parse_port(text: &str) -> Result<PortMapping, String> {
    let (addr, protocol) = match text.rsplit_once('/') {
        Some((a, "tcp")) => (a, Protocol::Tcp),
        Some((a, "udp")) => (a, Protocol::Udp),
        Some((_, p)) => {
            return Err(format!(
                "port `{text}`: unknown protocol `{p}` (tcp or udp)"
            ))
        }
        None => (text, Protocol::Tcp),
    };
    let (rest, container) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("port `{text}` must be `[hostip:]host:container[/tcp|udp]`"))?;
    let (host_ip, host) = match rest.rsplit_once(':') {
        Some((ip, host)) => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("port `{text}`: bad host address `{ip}`"))?;
            (Some(ip), host)
        }
        None => (None, rest),
    };
    let port = |p: &str, what: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("port `{text}`: bad {what} port `{p}` (1-65535)")),
        }
    };
    Ok(PortMapping {
        host_ip,
        host_port: port(host, "host")?,
        container_port: port(container, "container")?,
        protocol,
    })
}

/// Where a volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeSource {
    /// A named volume under the state partition's `volumes/<name>`.
    Named(String),
    /// A host path (bind mount).
    Host(String),
}

/// How mounts made later under a volume travel between the host and the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Neither way (the default).
    #[default]
    Private,
    /// Both ways (`rshared`): what the container mounts there appears on the host, as
    /// kubelet's pod volumes must for containerd.
    Rshared,
    /// From the host into the container only (`rslave`).
    Rslave,
}

/// A volume: `name-or-/abs:/path[:OPTIONS]`, OPTIONS a comma-separated list of `ro` or `rw`
/// and `rshared` or `rslave`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    pub source: VolumeSource,
    pub target: String,
    pub read_only: bool,
    pub propagation: Propagation,
}

pub fn parse_volume(text: &str) -> Result<Volume, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [s, t] => (*s, *t, None),
        [s, t, o] => (*s, *t, Some(*o)),
        _ => {
            return Err(format!(
                "volume `{text}` must be `name-or-/abs:/path[:OPTIONS]` (OPTIONS: ro or rw, \
                 rshared or rslave, comma-separated)"
            ))
        }
    };
    let (mut mode, mut propagation) = (None, None);
    for option in options.map(|o| o.split(',')).into_iter().flatten() {
        let twice = match option {
            "ro" | "rw" => mode.replace(option == "ro").is_some(),
            "rshared" => propagation.replace(Propagation::Rshared).is_some(),
            "rslave" => propagation.replace(Propagation::Rslave).is_some(),
            _ => {
                return Err(format!(
                    "volume `{text}`: unknown option `{option}` (ro, rw, rshared, rslave)"
                ))
            }
        };
        if twice {
            return Err(format!(
                "volume `{text}`: at most one of ro and rw, and one of rshared and rslave"
            ));
        }
    }
    let read_only = mode.unwrap_or(false);
    let propagation = propagation.unwrap_or_default();
    if !is_clean_absolute(target) {
        return Err(format!(
            "volume `{text}`: target `{target}` must be an absolute path"
        ));
    }
    let source = if source.starts_with('/') {
        if !is_clean_absolute(source) {
            return Err(format!(
                "volume `{text}`: source `{source}` must be a clean path"
            ));
        }
        VolumeSource::Host(source.to_string())
    } else {
        if !is_name(source) {
            return Err(format!(
                "volume `{text}`: name `{source}` may hold only letters, digits, `-`, `_`, `.`"
            ));
        }
        VolumeSource::Named(source.to_string())
    };
    Ok(Volume {
        source,
        target: target.to_string(),
        read_only,
        propagation,
    })
}

fn is_clean_absolute(path: &str) -> bool {
    path.starts_with('/') && !path.split('/').any(|c| c == "..") && !path.contains('\0')
}

/// Unit, volume and user names: a safe file name.
pub fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The identity a unit's process runs as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum UserSpec {
    /// Numeric `uid[:gid]`; without a gid the uid's number is used as gid.
    Id { uid: u32, gid: Option<u32> },
    /// A user (and optional group) name, resolved when the unit starts.
    Name { user: String, group: Option<String> },
}

pub fn parse_user(text: &str) -> Result<UserSpec, String> {
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let valid = |s: &str| is_name(s) && !s.contains('.');
    if let Ok(uid) = user.parse::<u32>() {
        let gid = match group {
            Some(g) => Some(g.parse::<u32>().map_err(|_| {
                format!("user `{text}`: with a numeric uid the gid must be numeric too")
            })?),
            None => None,
        };
        return Ok(UserSpec::Id { uid, gid });
    }
    if !valid(user) || group.is_some_and(|g| !valid(g)) {
        return Err(format!(
            "user `{text}` must be `uid[:gid]` or `name[:group]`"
        ));
    }
    Ok(UserSpec::Name {
        user: user.to_string(),
        group: group.map(str::to_string),
    })
}

/// An image reference (`[registry/]repository[:tag][@digest]`), parsed and normalised by the
/// runtime's registry code, so a unit is accepted exactly when its image can be pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(pub Reference);

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// The reference as written back by [`Serialize`](serde::Serialize), parsed again.
impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse_image(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses an image reference with Docker's defaults (registry `docker.io`, `library/` for
/// single-component names, tag `latest` when neither a tag nor a digest is given).
pub fn parse_image(text: &str) -> Result<ImageRef, String> {
    Reference::parse(text)
        .map(ImageRef)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "1.s", ".5s", "10x", "-1s", "1e3s", "9999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(3)), "3s");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        for bad in [
            "",
            "M",
            "64X",
            "1.5G",
            "99999999999999999999",
            "99999999999T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("INT"), Ok(libc::SIGINT));
        assert_eq!(parse_signal("9"), Ok(9));
        assert!(parse_signal("SIGFOO").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn ports() {
        let p = parse_port("8080:80/tcp").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.protocol),
            (None, 8080, 80, Protocol::Tcp)
        );
        let p = parse_port("127.0.0.1:53:5353/udp").unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(p.protocol, Protocol::Udp);
        let p = parse_port("[::1]:8443:443").unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
        for bad in [
            "80",
            "0:80",
            "8080:70000",
            "a:80",
            "8080:80/sctp",
            "1.2.3:80:80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes() {
        let v = parse_volume("web-data:/usr/share/nginx/html:ro").unwrap();
        assert_eq!(v.source, VolumeSource::Named("web-data".into()));
        assert!(v.read_only);
        assert_eq!(v.propagation, Propagation::Private);
        let v = parse_volume("/srv/x:/data").unwrap();
        assert_eq!(v.source, VolumeSource::Host("/srv/x".into()));
        assert!(!v.read_only);
        let v = parse_volume("/var/lib/kubelet:/var/lib/kubelet:rshared").unwrap();
        assert_eq!((v.read_only, v.propagation), (false, Propagation::Rshared));
        let v = parse_volume("/:/host:ro,rslave").unwrap();
        assert_eq!((v.read_only, v.propagation), (true, Propagation::Rslave));
        for bad in [
            "data",
            "data:rel",
            "data:/x:rx",
            "../x:/x",
            "/a/../b:/x",
            "a:/x:ro:rw",
            "a:/x:ro,rw",
            "a:/x:rshared,rslave",
            "a:/x:ro,",
            "a:/x:shared",
        ] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users() {
        assert_eq!(
            parse_user("101:102"),
            Ok(UserSpec::Id {
                uid: 101,
                gid: Some(102)
            })
        );
        assert_eq!(parse_user("0"), Ok(UserSpec::Id { uid: 0, gid: None }));
        assert_eq!(
            parse_user("nobody:nogroup"),
            Ok(UserSpec::Name {
                user: "nobody".into(),
                group: Some("nogroup".into())
            })
        );
        for bad in ["", "1:x", "a b", "a:", ":1"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images() {
        let i = parse_image("docker.io/library/nginx:alpine").unwrap();
        assert_eq!(i.to_string(), "docker.io/library/nginx:alpine");
        assert_eq!(
            parse_image("nginx").unwrap().to_string(),
            "docker.io/library/nginx:latest"
        );
        let i = parse_image("localhost:5000/berth/demo:1.0").unwrap();
        assert_eq!(
            (i.0.registry.as_str(), i.0.repository.as_str()),
            ("localhost:5000", "berth/demo")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let i = parse_image(&format!("quay.io/x/y@{d}")).unwrap();
        assert_eq!(i.0.tag, None);
        assert_eq!(i.0.digest.map(|d| d.to_string()), Some(d));
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "a//b",
            "x@sha256:zz",
            "-a/b",
            "a__-b",
        ] {
            assert!(parse_image(bad).is_err(), "{bad}");
        }
    }
}
