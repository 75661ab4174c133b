//! First-boot configuration from a config drive: a vfat or iso9660 filesystem labelled
//! `cidata` holding a TOML `user-data`:
//!
//! ```toml
//! hostname = "web-1"
//!
//! [network]              # optional; DHCP on the first NIC when absent
//! mode = "static"        # dhcp | static
//! address = "10.0.2.15/24"
//! gateway = "10.0.2.2"
//! dns = ["10.0.2.3"]
//!
//! [machine]              # more of machine.toml ([api], [syslog], [registries]), as is
//! api = { listen = "0.0.0.0:7443", cert = "...", key = "...", client_ca = "..." }
//!
//! [units]                # unit files to install, by name
//! web = '''
//! [unit]
//! description = "..."
//! '''
//! ```
//!
//! It is applied once, into the state partition: the hostname into `machine.toml`, the
//! network into `network.env` (read by the network unit's script), units into `units/`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use serde::Deserialize;

use crate::disk::blockdev::BlockDevices;

pub const LABEL: &str = "cidata";
/// Written into the state directory once the drive has been applied.
pub const APPLIED_MARKER: &str = "cidata.applied";

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error("user-data: {0}")]
    Parse(String),
    #[error("user-data: {key}: {problem}")]
    Invalid { key: String, problem: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mount config drive {device}: {source}")]
    Mount {
        device: String,
        source: nix::errno::Errno,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigDriveError + '_ {
    move |source| ConfigDriveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `[network] mode`: how the machine's own interface gets its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AddressMode {
    #[default]
    Dhcp,
    Static,
}

/// User-data `[network]`: the machine's own uplink, handed to the network unit (not the
/// containers' bridge, which is the engine's `BridgeNetwork`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MachineNetwork {
    #[serde(default)]
    pub mode: AddressMode,
    pub address: Option<String>,
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UserData {
    pub hostname: Option<String>,
    pub network: Option<MachineNetwork>,
    /// Further sections of `machine.toml`, checked like the file itself.
    pub machine: Option<toml::Table>,
    #[serde(default)]
    pub units: BTreeMap<String, String>,
}

impl UserData {
    /// Parses and validates; every value is checked before anything is written.
    pub fn parse(text: &str) -> Result<UserData, ConfigDriveError> {
        let data: UserData =
            toml::from_str(text).map_err(|e| ConfigDriveError::Parse(e.to_string()))?;
        let invalid = |key: &str, problem: &str| ConfigDriveError::Invalid {
            key: key.into(),
            problem: problem.into(),
        };
        if let Some(h) = &data.hostname {
            if !crate::machine::valid_hostname(h) {
                return Err(invalid("hostname", "1-64 letters, digits, '-' and '.'"));
            }
        }
        if let Some(net) = &data.network {
            if let Some(a) = &net.address {
                if !valid_cidr(a) {
                    return Err(invalid("network.address", "expected ADDRESS/PREFIX"));
                }
            }
            if net.mode == AddressMode::Static && net.address.is_none() {
                return Err(invalid(
                    "network.address",
                    "required with mode = \"static\"",
                ));
            }
            if let Some(g) = &net.gateway {
                if g.parse::<IpAddr>().is_err() {
                    return Err(invalid("network.gateway", "not an IP address"));
                }
            }
            if net.dns.iter().any(|d| d.parse::<IpAddr>().is_err()) {
                return Err(invalid("network.dns", "not a list of IP addresses"));
            }
        }
        if data.machine.is_some() {
            crate::machine::parse("user-data [machine]", &data.machine_toml())
                .map_err(|e| invalid("machine", &e.to_string()))?;
        }
        for name in data.units.keys() {
            if !valid_unit_name(name) {
                return Err(invalid(
                    &format!("units.{name}"),
                    "unit names are letters, digits, '-', '_' and '.'",
                ));
            }
        }
        Ok(data)
    }

    /// The shell-sourceable network settings for the network unit (values are validated, so
    /// they need no quoting).
    pub fn network_env(&self) -> Option<String> {
        let net = self.network.as_ref()?;
        let mut s = match net.mode {
            AddressMode::Dhcp => "BERTH_NET_MODE=dhcp\n".to_string(),
            AddressMode::Static => "BERTH_NET_MODE=static\n".to_string(),
        };
        if let Some(a) = &net.address {
            s.push_str(&format!("BERTH_NET_ADDRESS={a}\n"));
        }
        if let Some(g) = &net.gateway {
            s.push_str(&format!("BERTH_NET_GATEWAY={g}\n"));
        }
        if !net.dns.is_empty() {
            s.push_str(&format!("BERTH_NET_DNS=\"{}\"\n", net.dns.join(" ")));
        }
        Some(s)
    }

    /// `machine.toml`: the hostname and the `[machine]` sections.
    pub fn machine_toml(&self) -> String {
        let mut table = self.machine.clone().unwrap_or_default();
        if let Some(h) = &self.hostname {
            table.insert("hostname".into(), toml::Value::String(h.clone()));
        }
        toml::to_string(&table).unwrap_or_default()
    }

    /// Writes the configuration into the state directory and marks it applied.
    pub fn apply(&self, state: &Path) -> Result<Vec<PathBuf>, ConfigDriveError> {
        let mut written = Vec::new();
        if self.hostname.is_some() || self.machine.is_some() {
            let path = state.join("machine.toml");
            write_atomic(&path, self.machine_toml().as_bytes())?;
            written.push(path);
        }
        if let Some(env) = self.network_env() {
            let path = state.join("network.env");
            write_atomic(&path, env.as_bytes())?;
            written.push(path);
        }
        let units = state.join("units");
        if !self.units.is_empty() {
            std::fs::create_dir_all(&units).map_err(io(&units))?;
        }
        for (name, text) in &self.units {
            let path = units.join(format!("{name}.toml"));
            write_atomic(&path, text.as_bytes())?;
            written.push(path);
        }
        write_atomic(&state.join(APPLIED_MARKER), b"")?;
        Ok(written)
    }
}

fn valid_cidr(s: &str) -> bool {
    let Some((addr, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    prefix.parse::<u8>().is_ok_and(|p| p <= max)
}

fn valid_unit_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ConfigDriveError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Finds the config drive, mounts it read-only on `mountpoint`, and returns `user-data`'s
/// text (`None` when there is no drive or no user-data on it). Unmounts before returning.
pub fn read(blocks: &BlockDevices, mountpoint: &Path) -> Result<Option<String>, ConfigDriveError> {
    let Some((dev, kind)) = blocks.labelled(LABEL) else {
        return Ok(None);
    };
    let device = blocks.dev_path(&dev);
    std::fs::create_dir_all(mountpoint).map_err(io(mountpoint))?;
    nix::mount::mount(
        Some(&device),
        mountpoint,
        Some(kind.mount_type()),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|source| ConfigDriveError::Mount {
        device: device.display().to_string(),
        source,
    })?;
    let path = mountpoint.join("user-data");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigDriveError::Io {
            path: path.display().to_string(),
            source: e,
        }),
    };
    let _ = nix::mount::umount(mountpoint);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
hostname = "web-1"

[network]
mode = "static"
address = "10.0.2.15/24"
gateway = "10.0.2.2"
dns = ["10.0.2.3", "1.1.1.1"]

[units]
web = '''
[unit]
description = "demo"
'''
"#;

    #[test]
    fn applies_hostname_network_and_units() {
        let data = UserData::parse(FULL).unwrap();
        let dir = crate::testutil::scratch_dir("cidata");
        data.apply(&dir).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
        assert_eq!(read("machine.toml"), "hostname = \"web-1\"\n");
        assert_eq!(
            read("network.env"),
            "BERTH_NET_MODE=static\nBERTH_NET_ADDRESS=10.0.2.15/24\n\
             BERTH_NET_GATEWAY=10.0.2.2\nBERTH_NET_DNS=\"10.0.2.3 1.1.1.1\"\n"
        );
        assert!(read("units/web.toml").contains("description = \"demo\""));
        assert!(dir.join(APPLIED_MARKER).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn machine_sections_go_into_machine_toml_after_the_same_checks() {
        let text = "hostname = \"h\"\n[machine.syslog]\nserver = \"udp://10.0.2.2:514\"\n";
        let data = UserData::parse(text).unwrap();
        let machine = crate::machine::parse("m", &data.machine_toml()).unwrap();
        assert_eq!(machine.hostname.as_deref(), Some("h"));
        assert_eq!(
            machine.syslog.map(|s| s.addr.to_string()).as_deref(),
            Some("10.0.2.2:514")
        );
        let err = UserData::parse("[machine.syslog]\nserver = \"logs.example:514\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("machine") && err.contains("syslog.server"),
            "{err}"
        );
    }

    #[test]
    fn empty_user_data_is_dhcp_and_nothing_else() {
        let data = UserData::parse("").unwrap();
        assert_eq!(data, UserData::default());
        assert_eq!(data.network_env(), None);
    }

    #[test]
    fn bad_values_are_rejected_naming_the_key() {
        let cases = [
            ("hostname = \"-bad\"", "hostname"),
            ("[network]\nmode = \"static\"", "network.address"),
            ("[network]\naddress = \"10.0.2.15\"", "network.address"),
            ("[network]\naddress = \"10.0.2.15/33\"", "network.address"),
            ("[network]\ngateway = \"x; rm -rf /\"", "network.gateway"),
            ("[network]\ndns = [\"$(reboot)\"]", "network.dns"),
            ("[units]\n\"../etc/passwd\" = \"\"", "units."),
            ("colour = 1", "colour"),
            ("[network]\nmode = \"ppp\"", "ppp"),
        ];
        for (text, key) in cases {
            let err = UserData::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }
}
