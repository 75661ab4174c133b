//! Registry settings from the machine config (`/var/lib/berth/machine.toml`).
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
//! berth-init parses the whole file with its own types; this module reads only this section
//! and ignores the rest of the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Error, Result};

/// The system CA bundle Berth ships.
pub const DEFAULT_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
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
}

#[derive(Clone, Deserialize, PartialEq)]
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
    fn empty_file_is_default() {
        assert_eq!(
            RegistriesConfig::parse("").unwrap(),
            RegistriesConfig::default()
        );
    }
}
