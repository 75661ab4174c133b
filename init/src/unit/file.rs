//! The unit file exactly as written: serde types with `deny_unknown_fields` whose leaves keep
//! their source span, so validation can name line, column and key. `validate` turns this into
//! the typed [`super::Unit`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitFile {
    pub unit: Option<UnitSection>,
    pub container: Option<ContainerSection>,
    pub resources: Option<ResourcesSection>,
    pub service: Option<ServiceSection>,
    pub health: Option<HealthSection>,
}

pub type Text = Spanned<String>;
pub type TextList = Spanned<Vec<Text>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSection {
    pub description: Option<Text>,
    pub after: Option<TextList>,
    pub requires: Option<TextList>,
    pub critical: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSection {
    pub image: Option<Text>,
    pub command: Option<TextList>,
    pub env: Option<Spanned<BTreeMap<String, Text>>>,
    pub user: Option<Text>,
    pub network: Option<Text>,
    pub ports: Option<TextList>,
    pub volumes: Option<TextList>,
    pub read_only: Option<Spanned<bool>>,
    pub privileged: Option<Spanned<bool>>,
    pub pid: Option<Text>,
}

/// A number written as TOML integer or float (`cpu_max = 1` and `cpu_max = 0.5`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged, expecting = "a number")]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// A size written as a string with suffix (`"64M"`) or a plain integer of bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a size such as \"64M\" or a number of bytes")]
pub enum SizeValue {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSection {
    pub memory_max: Option<Spanned<SizeValue>>,
    pub cpu_max: Option<Spanned<Number>>,
    pub pids_max: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub restart: Option<Text>,
    pub restart_delay: Option<Text>,
    pub restart_delay_max: Option<Text>,
    pub start_limit_burst: Option<Spanned<i64>>,
    pub start_limit_interval: Option<Text>,
    pub stop_signal: Option<Text>,
    pub stop_timeout: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    pub exec: Option<TextList>,
    pub interval: Option<Text>,
    pub retries: Option<Spanned<i64>>,
}
