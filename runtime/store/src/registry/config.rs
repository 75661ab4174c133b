//! Registry settings from the machine config (`/var/lib/berth/machine.toml`). They apply to
//! image pulls and to OS update fetches alike (`berth-runtime fetch`, see
//! [`crate::osupdate`]): for an update URL, `insecure` lists the hosts that may be reached over
//! plain HTTP and `ca_bundle`, `pull_timeout` and `min_rate` apply as to registries.
//!
//! Proposed `[registries]` section (every key optional):
//!
//! ```toml
//! [registries]
//! # Registries reached over plain HTTP (host[:port] as written in references).
//! insecure = ["10.0.0.5:5000"]
//! # CA bundle for HTTPS; defaults to the system bundle shipped in the image.
//! ca_bundle = "/etc/ssl/certs/ca-certificates.crt"
//!
//! # Pull-through mirrors, tried in order before the registry itself.
//! [registries.mirrors]
//! "docker.io" = ["https://mirror.example.com", "10.0.0.5:5000"]
//!
//! # Credentials, used for basic auth and to obtain bearer tokens.
//! [registries.auth."ghcr.io"]
//! username = "me"
//! password = "ghp_..."
//! ```
//!
//! Limits that keep a slow or hostile registry from holding a pull forever (top-level keys
//! of `[registries]`, written before its sub-tables):
//!
//! ```toml
//! [registries]
//! pull_timeout = "1h"        # the whole pull: every request and every body
//! min_rate = "1K"            # bytes per second a transfer must keep up ("0": no floor) ...
//! min_rate_window = "30s"    # ... measured over this window
//! ```
//!
//! berth-init parses the whole file with its own types; this module reads only this section
//! and ignores the rest of the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Error, Result};

/// The system CA bundle Berth ships.
pub const DEFAULT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Default of `pull_timeout`: a few GiB over a slow link, far beyond a healthy pull.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default of `min_rate` (bytes per second).
pub const DEFAULT_MIN_RATE: u64 = 1024;
/// Default of `min_rate_window`.
pub const DEFAULT_MIN_RATE_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Hosts (with port) that are spoken to over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// CA bundle (PEM) trusted for HTTPS.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Registry host → mirror endpoints (`https://host`, `http://host`, or `host[:port]`).
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registry host → credentials.
    #[serde(default)]
    pub auth: BTreeMap<String, Credentials>,
    /// Longest a whole pull may take.
    #[serde(default)]
    pub pull_timeout: Option<ConfigDuration>,
    /// Slowest transfer accepted, in bytes per second (0: no floor).
    #[serde(default)]
    pub min_rate: Option<ConfigSize>,
    /// The window `min_rate` is measured over.
    #[serde(default)]
    pub min_rate_window: Option<ConfigDuration>,
}

/// A duration written as a number and a unit: `500ms`, `30s`, `10m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn parse(text: &str) -> std::result::Result<ConfigDuration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {text:?} needs a unit (ms, s, m, h)"))?;
        let (number, unit) = text.split_at(split);
        let millis: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(format!("duration {text:?}: unknown unit (use ms, s, m, h)")),
        };
        let value: u64 = number
            .parse()
            .map_err(|_| format!("duration {text:?}: bad number"))?;
        match value.checked_mul(millis) {
            // A week: beyond any pull, and far from overflowing `Instant` arithmetic.
            Some(ms) if ms > 0 && ms <= 7 * 24 * 3_600_000 => {
                Ok(ConfigDuration(Duration::from_millis(ms)))
            }
            _ => Err(format!(
                "duration {text:?}: must be above 0 and at most a week"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ConfigDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A byte count with an optional binary suffix: `512`, `1K`, `2M`, `1G`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigSize(pub u64);

impl ConfigSize {
    pub fn parse(text: &str) -> std::result::Result<ConfigSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(split);
        let shift = match suffix {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            _ => return Err(format!("size {text:?}: unknown suffix (use K, M, G)")),
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .map(ConfigSize)
            .ok_or_else(|| format!("size {text:?}: bad number"))
    }
}

impl<'de> Deserialize<'de> for ConfigSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ConfigSize::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <hidden> }}",
            self.username
        )
    }
}

#[derive(Deserialize)]
struct MachineFile {
    #[serde(default)]
    registries: RegistriesConfig,
}

impl RegistriesConfig {
    /// Reads the `[registries]` section of a machine config; a missing file means defaults.
    pub fn load(path: &Path) -> Result<RegistriesConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        Self::parse(&text).map_err(|reason| Error::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses the `[registries]` section out of a whole machine config.
    pub fn parse(text: &str) -> std::result::Result<RegistriesConfig, String> {
        toml::from_str::<MachineFile>(text)
            .map(|f| f.registries)
            .map_err(|e| e.to_string())
    }

    pub fn is_insecure(&self, host: &str) -> bool {
        self.insecure.iter().any(|h| h == host)
    }

    pub fn ca_bundle(&self) -> &Path {
        self.ca_bundle
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_CA_BUNDLE))
    }

    /// `pull_timeout`, or its default.
    pub fn pull_timeout(&self) -> Duration {
        self.pull_timeout.map_or(DEFAULT_PULL_TIMEOUT, |d| d.0)
    }

    /// `(bytes per second, window)` every transfer must keep up, or `None` with `min_rate = "0"`.
    pub fn min_rate(&self) -> Option<(u64, Duration)> {
        let rate = self.min_rate.map_or(DEFAULT_MIN_RATE, |r| r.0);
        let window = self
            .min_rate_window
            .map_or(DEFAULT_MIN_RATE_WINDOW, |w| w.0);
        (rate > 0).then_some((rate, window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_section_and_ignores_the_rest() {
        let c = RegistriesConfig::parse(
            r#"
            hostname = "berth"
            [network]
            mode = "dhcp"
            [registries]
            insecure = ["127.0.0.1:5000"]
            [registries.mirrors]
            "docker.io" = ["https://m.example"]
            [registries.auth."ghcr.io"]
            username = "u"
            password = "s3cret"
            "#,
        )
        .unwrap();
        assert!(c.is_insecure("127.0.0.1:5000"));
        assert!(!c.is_insecure("docker.io"));
        assert_eq!(
            c.mirrors["docker.io"],
            vec!["https://m.example".to_string()]
        );
        assert_eq!(c.auth["ghcr.io"].username, "u");
        assert!(!format!("{:?}", c.auth["ghcr.io"]).contains("s3cret"));
        assert_eq!(c.ca_bundle(), Path::new(DEFAULT_CA_BUNDLE));
    }

    #[test]
    fn rejects_unknown_keys_in_section() {
        let e = RegistriesConfig::parse("[registries]\ninsecur = []\n").unwrap_err();
        assert!(e.contains("insecur"), "{e}");
    }

    #[test]
    fn parses_limits_with_defaults() {
        let c = RegistriesConfig::parse("").unwrap();
        assert_eq!(c.pull_timeout(), DEFAULT_PULL_TIMEOUT);
        assert_eq!(
            c.min_rate(),
            Some((DEFAULT_MIN_RATE, DEFAULT_MIN_RATE_WINDOW))
        );
        let c = RegistriesConfig::parse(
            "[registries]\npull_timeout = \"1500ms\"\nmin_rate = \"2K\"\nmin_rate_window = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.pull_timeout(), Duration::from_millis(1500));
        assert_eq!(c.min_rate(), Some((2048, Duration::from_secs(2))));
        let c = RegistriesConfig::parse("[registries]\nmin_rate = \"0\"\n").unwrap();
        assert_eq!(c.min_rate(), None);
        for bad in [
            "pull_timeout = \"10\"",
            "pull_timeout = \"0s\"",
            "pull_timeout = \"8000h\"",
            "pull_timeout = \"1.5s\"",
            "min_rate = \"1X\"",
            "min_rate = \"99999999999999999999\"",
            "min_rate = 5",
        ] {
            let e = RegistriesConfig::parse(&format!("[registries]\n{bad}\n")).unwrap_err();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn empty_file_is_default() {
        assert_eq!(
            RegistriesConfig::parse("").unwrap(),
            RegistriesConfig::default()
        );
    }
}
