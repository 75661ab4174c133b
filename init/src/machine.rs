//! Machine configuration (`machine.toml` on the state partition). Unknown keys are errors
//! naming file, line and key; more sections come with the features that need them.
//!
//! ```toml
//! hostname = "berth-1"
//!
//! [api]                        # remote administration over mutual TLS (optional)
//! listen = "0.0.0.0:7443"
//! cert = "tls/server.crt"      # PEM files, relative to this file's directory,
//! key = "tls/server.key"       # or the PEM text itself
//! client_ca = "tls/clients.crt"
//!
//! [syslog]                     # forward logs to a remote syslog server (optional)
//! server = "udp://10.0.0.2:514"   # or tcp://IP:PORT (RFC 5424; octet-counted over TCP)
//! units = true                 # also forward unit output, one message per line
//!
//! [update]
//! health_deadline = "5m"       # a new slot's critical units must be healthy this soon after
//!                              # PID 1 starts, or it is retired and the other slot boots
//!
//! [registries]                 # image pulls and update fetches (read by berth-runtime too)
//! pull_timeout = "1h"          # also bounds image jobs (plus a grace): see `api::jobs`
//! min_rate = "1K"
//! min_rate_window = "30s"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_store::registry::config::ConfigDuration;
use berth_store::registry::RegistriesConfig;
use serde::Deserialize;
use toml::Spanned;

use crate::tomlfile::{self, Diagnostics, Source};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineFile {
    hostname: Option<Spanned<String>>,
    api: Option<ApiSection>,
    syslog: Option<SyslogSection>,
    update: Option<UpdateSection>,
    registries: Option<RegistriesConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiSection {
    listen: Spanned<String>,
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyslogSection {
    server: Spanned<String>,
    units: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateSection {
    health_deadline: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineConfig {
    pub hostname: Option<String>,
    pub remote_api: Option<RemoteApi>,
    pub syslog: Option<SyslogTarget>,
    pub update: UpdateSettings,
    /// `[registries]`: berth-init bounds image jobs with its `pull_timeout`; the pulls and
    /// update fetches, berth-runtime processes, read the section from the file themselves.
    pub registries: RegistriesConfig,
}

/// `[update]`: how a newly installed slot proves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateSettings {
    /// Time from PID 1's start within which every critical unit must be healthy on a new
    /// slot's boot; past it the slot is retired and the machine reboots into the other one.
    pub health_deadline: Duration,
}

pub const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(5 * 60);

impl Default for UpdateSettings {
    fn default() -> Self {
        UpdateSettings {
            health_deadline: DEFAULT_HEALTH_DEADLINE,
        }
    }
}

/// PEM data: a file (relative paths are taken from the machine config's directory) or the
/// text itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl Pem {
    fn parse(value: &str) -> Pem {
        if value.trim_start().starts_with("-----BEGIN") {
            Pem::Inline(value.to_string())
        } else {
            Pem::File(PathBuf::from(value))
        }
    }

    fn relative_to(self, dir: &Path) -> Pem {
        match self {
            Pem::File(p) if p.is_relative() => Pem::File(dir.join(p)),
            other => other,
        }
    }

    /// The PEM bytes.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Pem::File(p) => std::fs::read(p),
            Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
        }
    }

    /// What to call it in messages.
    pub fn describe(&self) -> String {
        match self {
            Pem::File(p) => p.display().to_string(),
            Pem::Inline(_) => "(inline PEM)".to_string(),
        }
    }
}

/// `[api]`: the mutual-TLS TCP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteApi {
    pub listen: SocketAddr,
    pub cert: Pem,
    pub key: Pem,
    /// Only clients with a certificate issued by this CA are served.
    pub client_ca: Pem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    Udp,
    Tcp,
}

/// `[syslog]`: where logs are forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    pub transport: SyslogTransport,
    /// An address, not a name: PID 1 never waits for DNS.
    pub addr: SocketAddr,
    /// Unit output is forwarded too (default), not only berth-init's own messages.
    pub units: bool,
}

fn parse_syslog_server(text: &str) -> Result<(SyslogTransport, SocketAddr), String> {
    let (transport, rest) = if let Some(rest) = text.strip_prefix("udp://") {
        (SyslogTransport::Udp, rest)
    } else if let Some(rest) = text.strip_prefix("tcp://") {
        (SyslogTransport::Tcp, rest)
    } else {
        return Err("must be udp://IP:PORT or tcp://IP:PORT".to_string());
    };
    let addr = rest
        .parse()
        .map_err(|_| format!("`{rest}` is not IP:PORT (names are not resolved)"))?;
    Ok((transport, addr))
}

pub fn parse(file: &str, text: &str) -> Result<MachineConfig, Diagnostics> {
    let src = Source { file, text };
    let raw: MachineFile = tomlfile::parse(&src)?;
    let mut errors = Vec::new();
    if let Some(h) = &raw.hostname {
        if !valid_hostname(h.get_ref()) {
            let msg =
                "must be 1-64 letters, digits, `-` and `.`, not starting or ending with `-` or `.`";
            errors.push(src.diagnostic(Some(h.span()), "hostname", msg.to_string()));
        }
    }
    let remote_api = raw
        .api
        .and_then(|api| match api.listen.get_ref().parse::<SocketAddr>() {
            Ok(listen) => Some(RemoteApi {
                listen,
                cert: Pem::parse(api.cert.get_ref()),
                key: Pem::parse(api.key.get_ref()),
                client_ca: Pem::parse(api.client_ca.get_ref()),
            }),
            Err(_) => {
                let msg = format!("`{}` is not IP:PORT", api.listen.get_ref());
                errors.push(src.diagnostic(Some(api.listen.span()), "api.listen", msg));
                None
            }
        });
    let syslog = raw
        .syslog
        .and_then(|s| match parse_syslog_server(s.server.get_ref()) {
            Ok((transport, addr)) => Some(SyslogTarget {
                transport,
                addr,
                units: s.units.unwrap_or(true),
            }),
            Err(msg) => {
                errors.push(src.diagnostic(Some(s.server.span()), "syslog.server", msg));
                None
            }
        });
    let mut update = UpdateSettings::default();
    if let Some(d) = raw.update.and_then(|u| u.health_deadline) {
        match ConfigDuration::parse(d.get_ref()) {
            Ok(ConfigDuration(v)) => update.health_deadline = v,
            Err(msg) => errors.push(src.diagnostic(Some(d.span()), "update.health_deadline", msg)),
        }
    }
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    Ok(MachineConfig {
        hostname: raw.hostname.map(Spanned::into_inner),
        remote_api,
        syslog,
        update,
        registries: raw.registries.unwrap_or_default(),
    })
}

/// Reads `path`; a missing file is the default configuration.
pub fn load(path: &Path) -> Result<MachineConfig, Diagnostics> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut config = parse(&path.display().to_string(), &text)?;
            let dir = path.parent().unwrap_or(Path::new("/"));
            if let Some(api) = &mut config.remote_api {
                for pem in [&mut api.cert, &mut api.key, &mut api.client_ca] {
                    *pem = pem.clone().relative_to(dir);
                }
            }
            Ok(config)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MachineConfig::default()),
        Err(e) => Err(Diagnostics(vec![tomlfile::Diagnostic {
            file: path.display().to_string(),
            line: 1,
            column: 1,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])),
    }
}

pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !h.starts_with(['-', '.'])
        && !h.ends_with(['-', '.'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_and_unknown_keys() {
        assert_eq!(
            parse("m", "hostname = \"berth-1\"\n")
                .unwrap()
                .hostname
                .as_deref(),
            Some("berth-1")
        );
        assert_eq!(parse("m", "").unwrap(), MachineConfig::default());
        let err = parse("m.toml", "hostname = \"a\"\nflavour = 1\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "m.toml:2:1: key `flavour`: unknown field `flavour`, expected one of `hostname`, `api`, `syslog`, `update`, `registries`"
        );
        let err = parse("m.toml", "hostname = \"-bad\"\n").unwrap_err().0;
        assert_eq!((err[0].line, err[0].key.as_str()), (1, "hostname"));
    }

    #[test]
    fn update_health_deadline() {
        assert_eq!(
            parse("m", "").unwrap().update.health_deadline,
            DEFAULT_HEALTH_DEADLINE
        );
        let c = parse("m", "[update]\nhealth_deadline = \"45s\"\n").unwrap();
        assert_eq!(c.update.health_deadline, Duration::from_secs(45));
        let err = parse("m.toml", "[update]\nhealth_deadline = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("m.toml:2:19: key `update.health_deadline`: duration \"0s\""),
            "{err}"
        );
    }

    #[test]
    fn registry_limits_are_checked_at_boot() {
        let config = parse(
            "m",
            "[registries]\npull_timeout = \"10m\"\nmin_rate = \"4K\"\nmin_rate_window = \"1m\"\n",
        )
        .unwrap();
        // Kept for berth-init's image jobs, which need not read the file again.
        assert_eq!(config.registries.pull_timeout(), Duration::from_secs(600));
        assert_eq!(
            config.registries.min_rate(),
            Some((4096, Duration::from_secs(60)))
        );
        let err = parse("m.toml", "[registries]\npull_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "m.toml:2:16: key `registries.pull_timeout`: duration \"soon\": unknown unit (use ms, s, m, h)"
        );
    }

    #[test]
    fn api_and_syslog_sections() {
        let dir = crate::testutil::scratch_dir("machine");
        let path = dir.join("machine.toml");
        std::fs::write(
            &path,
            "[api]\nlisten = \"127.0.0.1:7443\"\ncert = \"tls/s.crt\"\nkey = \"/etc/s.key\"\n\
             client_ca = \"-----BEGIN CERTIFICATE-----\\nAA==\\n-----END CERTIFICATE-----\"\n\
             [syslog]\nserver = \"tcp://127.0.0.1:601\"\n\
             [registries]\ninsecure = [\"127.0.0.1:5000\"]\n",
        )
        .unwrap();
        let config = load(&path).unwrap();
        let api = config.remote_api.unwrap();
        assert_eq!(api.listen, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(api.cert, Pem::File(dir.join("tls/s.crt")));
        assert_eq!(api.key, Pem::File("/etc/s.key".into()));
        assert!(matches!(api.client_ca, Pem::Inline(_)));
        assert_eq!(
            config.syslog,
            Some(SyslogTarget {
                transport: SyslogTransport::Tcp,
                addr: "127.0.0.1:601".parse().unwrap(),
                units: true
            })
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = parse(
            "m.toml",
            "[api]\nlisten = \"anywhere\"\ncert = \"a\"\nkey = \"b\"\nclient_ca = \"c\"\n\
             [syslog]\nserver = \"udp://logs.example:514\"\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "m.toml:2:10: key `api.listen`: `anywhere` is not IP:PORT\n\
             m.toml:7:10: key `syslog.server`: `logs.example:514` is not IP:PORT (names are not resolved)"
        );
        let err = parse("m.toml", "[api]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("missing field `cert`"), "{err}");
    }
}
