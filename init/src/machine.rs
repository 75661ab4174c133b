//! Machine configuration (`machine.toml` on the state partition). Unknown keys are errors
//! naming file, line and key; more sections come with the features that need them.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::tomlfile::{self, Diagnostics, Source};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineFile {
    hostname: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineConfig {
    pub hostname: Option<String>,
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
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    Ok(MachineConfig {
        hostname: raw.hostname.map(Spanned::into_inner),
    })
}

/// Reads `path`; a missing file is the default configuration.
pub fn load(path: &Path) -> Result<MachineConfig, Diagnostics> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&path.display().to_string(), &text),
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
            "m.toml:2:1: key `flavour`: unknown field `flavour`, expected `hostname`"
        );
        let err = parse("m.toml", "hostname = \"-bad\"\n").unwrap_err().0;
        assert_eq!((err[0].line, err[0].key.as_str()), (1, "hostname"));
    }
}
