//! The software bill of materials written beside the image (`sbom.spdx.json`, SPDX 2.3): the
//! system components (kernel, busybox, GRUB) and every crate compiled into Berth's binaries,
//! with versions and declared licenses.
//!
//! Crates come from `cargo metadata`: everything the binaries' packages reach through normal
//! (not dev, not build-script) dependencies on the target platform. Procedural macros run in
//! the compiler and put none of their own code into a binary, so they and what only they
//! depend on are left out.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::derive;

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("cargo metadata: {0}")]
    Metadata(#[from] serde_json::Error),
    #[error("cargo metadata has no resolve graph (run it without --no-deps)")]
    NoResolve,
    #[error("package {0:?} is not in the cargo metadata")]
    UnknownRoot(String),
    #[error("component {0:?}: expected NAME=VERSION=LICENSE")]
    BadComponent(String),
}

/// A non-crate part of the system, e.g. `linux=6.12.57=GPL-2.0-only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub version: String,
    pub license: String,
}

impl Component {
    pub fn parse(text: &str) -> Result<Component, SbomError> {
        let mut it = text.splitn(3, '=');
        match (it.next(), it.next(), it.next()) {
            (Some(n), Some(v), Some(l)) if !n.is_empty() && !v.is_empty() && !l.is_empty() => {
                Ok(Component {
                    name: n.into(),
                    version: v.into(),
                    license: l.into(),
                })
            }
            _ => Err(SbomError::BadComponent(text.into())),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    resolve: Option<Resolve>,
}

#[derive(Debug, Deserialize)]
struct Package {
    id: String,
    name: String,
    version: String,
    license: Option<String>,
    source: Option<String>,
    targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
struct Target {
    kind: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Resolve {
    nodes: Vec<Node>,
}

#[derive(Debug, Deserialize)]
struct Node {
    id: String,
    deps: Vec<NodeDep>,
}

#[derive(Debug, Deserialize)]
struct NodeDep {
    pkg: String,
    dep_kinds: Vec<DepKind>,
}

#[derive(Debug, Deserialize)]
struct DepKind {
    kind: Option<String>,
}

/// A crate compiled into the binaries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// SPDX expression as the crate declares it (`MIT/Apache-2.0` read as `MIT OR Apache-2.0`).
    pub license: Option<String>,
    pub from_crates_io: bool,
}

/// The crates the packages named `roots` compile into their binaries, sorted.
pub fn crates(metadata_json: &str, roots: &[&str]) -> Result<Vec<Crate>, SbomError> {
    let meta: Metadata = serde_json::from_str(metadata_json)?;
    let resolve = meta.resolve.ok_or(SbomError::NoResolve)?;
    let by_id: BTreeMap<&str, &Package> =
        meta.packages.iter().map(|p| (p.id.as_str(), p)).collect();
    let nodes: BTreeMap<&str, &Node> = resolve.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let is_proc_macro = |id: &str| {
        by_id.get(id).is_some_and(|p| {
            p.targets
                .iter()
                .any(|t| t.kind.iter().any(|k| k == "proc-macro"))
        })
    };

    let mut seen = BTreeSet::new();
    let mut todo = Vec::new();
    for root in roots {
        let p = meta
            .packages
            .iter()
            .find(|p| p.name == *root && p.source.is_none())
            .ok_or_else(|| SbomError::UnknownRoot(root.to_string()))?;
        todo.push(p.id.as_str());
    }
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = nodes.get(id) else { continue };
        for dep in &node.deps {
            let normal = dep.dep_kinds.iter().any(|k| k.kind.is_none());
            if normal && !is_proc_macro(&dep.pkg) {
                todo.push(dep.pkg.as_str());
            }
        }
    }
    let mut out: Vec<Crate> = seen
        .iter()
        .filter_map(|id| by_id.get(id))
        .map(|p| Crate {
            name: p.name.clone(),
            version: p.version.clone(),
            license: p.license.as_ref().map(|l| l.replace('/', " OR ")),
            from_crates_io: p
                .source
                .as_deref()
                .is_some_and(|s| s.contains("crates.io-index")),
        })
        .collect();
    out.sort();
    Ok(out)
}

/// What the document describes.
#[derive(Debug, Clone)]
pub struct Describe<'a> {
    pub version: &'a str,
    pub epoch: u64,
    pub source_commit: Option<&'a str>,
}

/// The SPDX 2.3 JSON document. Deterministic: its time is the build's epoch and its namespace
/// is derived from its content.
pub fn spdx(what: &Describe<'_>, components: &[Component], crates: &[Crate]) -> String {
    let mut packages = vec![json!({
        "SPDXID": "SPDXRef-berth-image",
        "name": "berth",
        "versionInfo": what.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "Apache-2.0",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": match what.source_commit {
            Some(c) => format!("Berth disk image built from source commit {c}"),
            None => "Berth disk image".to_string(),
        },
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-berth-image",
    })];
    let mut contains = |id: &str| {
        relationships.push(json!({
            "spdxElementId": "SPDXRef-berth-image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }))
    };
    for c in components {
        let id = format!("SPDXRef-component-{}", spdx_id(&c.name));
        contains(&id);
        packages.push(json!({
            "SPDXID": id,
            "name": c.name,
            "versionInfo": c.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": c.license,
        }));
    }
    for c in crates {
        let id = format!("SPDXRef-crate-{}-{}", spdx_id(&c.name), spdx_id(&c.version));
        contains(&id);
        let download = if c.from_crates_io {
            format!(
                "https://crates.io/api/v1/crates/{}/{}/download",
                c.name, c.version
            )
        } else {
            "NOASSERTION".to_string()
        };
        packages.push(json!({
            "SPDXID": id,
            "name": c.name,
            "versionInfo": c.version,
            "downloadLocation": download,
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": c.license.as_deref().unwrap_or("NOASSERTION"),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:cargo/{}@{}", c.name, c.version),
            }],
        }));
    }
    let body = Value::Array(packages.clone()).to_string();
    let doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("berth-{}", what.version),
        "documentNamespace": format!(
            "https://example.invalid/berth/spdx/berth-{}-{}",
            what.version,
            &derive::sha256(body.as_bytes())[..16]
        ),
        "creationInfo": {
            "created": rfc3339(what.epoch),
            "creators": [format!("Tool: berth-image-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

/// SPDX IDs allow letters, digits, `.` and `-`.
fn spdx_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `YYYY-MM-DDThh:mm:ssZ` of a Unix time (days to civil date: Howard Hinnant's algorithm).
fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = r#"{
      "packages": [
        {"id": "root", "name": "berth-init", "version": "0.1.0", "license": "Apache-2.0", "source": null, "targets": [{"kind": ["bin"]}]},
        {"id": "a", "name": "serde", "version": "1.0.0", "license": "MIT/Apache-2.0", "source": "registry+https://github.com/rust-lang/crates.io-index", "targets": [{"kind": ["lib"]}]},
        {"id": "b", "name": "itoa", "version": "1.0.1", "license": "MIT OR Apache-2.0", "source": "registry+https://github.com/rust-lang/crates.io-index", "targets": [{"kind": ["lib"]}]},
        {"id": "pm", "name": "serde_derive", "version": "1.0.0", "license": "MIT", "source": "registry+https://github.com/rust-lang/crates.io-index", "targets": [{"kind": ["proc-macro"]}]},
        {"id": "syn", "name": "syn", "version": "2.0.0", "license": "MIT", "source": "registry+https://github.com/rust-lang/crates.io-index", "targets": [{"kind": ["lib"]}]},
        {"id": "dev", "name": "tempfile", "version": "3.0.0", "license": "MIT", "source": "registry+https://github.com/rust-lang/crates.io-index", "targets": [{"kind": ["lib"]}]},
        {"id": "cc", "name": "cc", "version": "1.0.0", "license": "MIT", "source": "registry+https://github.com/rust-lang/crates.io-index", "targets": [{"kind": ["lib"]}]}
      ],
      "resolve": {"nodes": [
        {"id": "root", "deps": [
          {"pkg": "a", "dep_kinds": [{"kind": null}]},
          {"pkg": "pm", "dep_kinds": [{"kind": null}]},
          {"pkg": "dev", "dep_kinds": [{"kind": "dev"}]},
          {"pkg": "cc", "dep_kinds": [{"kind": "build"}]}
        ]},
        {"id": "a", "deps": [{"pkg": "b", "dep_kinds": [{"kind": null}]}]},
        {"id": "pm", "deps": [{"pkg": "syn", "dep_kinds": [{"kind": null}]}]},
        {"id": "b", "deps": []}, {"id": "syn", "deps": []}, {"id": "dev", "deps": []}, {"id": "cc", "deps": []}
      ]}
    }"#;

    #[test]
    fn only_crates_compiled_into_the_binaries_are_listed() {
        let c = crates(META, &["berth-init"]).unwrap();
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["berth-init", "itoa", "serde"]);
        assert_eq!(c[2].license.as_deref(), Some("MIT OR Apache-2.0"));
        assert!(c[2].from_crates_io && !c[0].from_crates_io);
        assert!(matches!(
            crates(META, &["nope"]),
            Err(SbomError::UnknownRoot(_))
        ));
    }

    #[test]
    fn document_is_spdx_and_deterministic() {
        let c = crates(META, &["berth-init"]).unwrap();
        let comps = [Component::parse("busybox=1:1.35.0-4+b3=GPL-2.0-only").unwrap()];
        assert_eq!(comps[0].version, "1:1.35.0-4+b3");
        let what = Describe {
            version: "0.1.0",
            epoch: 1_700_000_000,
            source_commit: Some("abc"),
        };
        let doc = spdx(&what, &comps, &c);
        assert_eq!(doc, spdx(&what, &comps, &c));
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["spdxVersion"], "SPDX-2.3");
        assert_eq!(v["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        let pkgs = v["packages"].as_array().unwrap();
        assert_eq!(pkgs.len(), 1 + 1 + 3);
        assert!(pkgs
            .iter()
            .any(|p| p["name"] == "busybox" && p["licenseDeclared"] == "GPL-2.0-only"));
        let rels = v["relationships"].as_array().unwrap();
        assert_eq!(rels.len(), 1 + 1 + 3);
        assert!(Component::parse("linux=6.12").is_err());
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_859_651), "2026-11-28T09:54:11Z");
    }
}
