//! The partition layout (`configs/layout/disk.toml`): which partitions, in which order, how big.

use std::path::Path;

use serde::Deserialize;

use crate::derive::Seed;
use crate::gpt::{self, SECTOR};
use crate::guid::Guid;
use crate::host::HostError;

pub const MIB: u64 = 1 << 20;
/// Partitions start on 1 MiB boundaries, the first at 1 MiB.
const ALIGN_SECTORS: u64 = MIB / SECTOR;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("layout: {0}")]
    Invalid(String),
}

/// What the image builder puts into a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    BiosBoot,
    Esp,
    RootA,
    RootB,
    State,
}

impl Role {
    pub fn type_guid(self) -> &'static str {
        match self {
            Role::BiosBoot => gpt::types::BIOS_BOOT,
            Role::Esp => gpt::types::ESP,
            Role::RootA | Role::RootB => gpt::types::ROOT_X86_64,
            Role::State => gpt::types::LINUX_DATA,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    pub name: String,
    pub role: Role,
    #[serde(deserialize_with = "de_size")]
    pub size: u64,
    /// Filesystem label (ESP, state).
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    #[serde(rename = "partition")]
    pub partitions: Vec<PartitionSpec>,
}

/// A partition placed on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub spec: PartitionSpec,
    pub number: u32,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl Placed {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// Parses sizes like `512K`, `64M`, `1G` (binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. \"64M\")"))?;
    let mult = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("{text:?}: unit must be K, M or G")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_size(&s).map_err(serde::de::Error::custom)
}

impl Layout {
    pub fn load(path: &Path) -> Result<Layout, LayoutError> {
        let text = std::fs::read_to_string(path).map_err(HostError::io(path))?;
        Layout::parse(&text).map_err(|e| match e {
            LayoutError::Parse { message, .. } => LayoutError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Layout, LayoutError> {
        let layout: Layout = toml::from_str(text).map_err(|e| LayoutError::Parse {
            path: "layout".into(),
            message: e.to_string(),
        })?;
        layout.validate()?;
        Ok(layout)
    }

    fn validate(&self) -> Result<(), LayoutError> {
        let need = [
            Role::BiosBoot,
            Role::Esp,
            Role::RootA,
            Role::RootB,
            Role::State,
        ];
        for role in need {
            let n = self.partitions.iter().filter(|p| p.role == role).count();
            if n != 1 {
                return Err(LayoutError::Invalid(format!(
                    "role {role:?} appears {n} times, expected once"
                )));
            }
        }
        if self.partitions.last().map(|p| p.role) != Some(Role::State) {
            return Err(LayoutError::Invalid(
                "the state partition must come last (it grows to the end of the disk)".into(),
            ));
        }
        for p in &self.partitions {
            if p.size == 0 || p.size % MIB != 0 {
                return Err(LayoutError::Invalid(format!(
                    "partition {:?}: size must be a non-zero multiple of 1 MiB",
                    p.name
                )));
            }
            if p.name.is_empty() || p.name.len() > 36 || !p.name.is_ascii() {
                return Err(LayoutError::Invalid(format!(
                    "partition {:?}: names are 1 to 36 ASCII characters",
                    p.name
                )));
            }
            if self.partitions.iter().filter(|q| q.name == p.name).count() > 1 {
                return Err(LayoutError::Invalid(format!(
                    "partition name {:?} used twice",
                    p.name
                )));
            }
        }
        Ok(())
    }

    pub fn by_role(&self, role: Role) -> Option<&PartitionSpec> {
        self.partitions.iter().find(|p| p.role == role)
    }

    /// Places the partitions: 1 MiB aligned from 1 MiB on, numbered in order.
    pub fn place(&self) -> Vec<Placed> {
        let mut next = ALIGN_SECTORS;
        self.partitions
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let sectors = spec.size / SECTOR;
                let placed = Placed {
                    spec: spec.clone(),
                    number: i as u32 + 1,
                    first_lba: next,
                    last_lba: next + sectors - 1,
                };
                next += sectors;
                placed
            })
            .collect()
    }

    /// Disk size: the partitions plus 1 MiB in front and 1 MiB at the end (backup GPT).
    pub fn disk_size(&self) -> u64 {
        self.partitions.iter().map(|p| p.size).sum::<u64>() + 2 * MIB
    }

    /// The partition table for this layout; the disk's and every partition's GUID come from
    /// `seed` (a partition's from its name), so the same inputs give the same table.
    pub fn gpt(&self, seed: &Seed) -> Result<(gpt::Gpt, Vec<Placed>), crate::guid::GuidError> {
        let placed = self.place();
        let mut partitions = Vec::new();
        for p in &placed {
            partitions.push(gpt::Partition {
                number: p.number,
                type_guid: Guid::parse(p.spec.role.type_guid())?,
                guid: seed.guid(&format!("partition {}", p.spec.name)),
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                attributes: 0,
                name: p.spec.name.clone(),
            });
        }
        Ok((
            gpt::Gpt {
                disk_guid: seed.guid("disk"),
                partitions,
            },
            placed,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_layout() -> Layout {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/layout/disk.toml");
        Layout::load(&path).unwrap()
    }

    #[test]
    fn repository_layout_matches_the_design() {
        let layout = repo_layout();
        let names: Vec<&str> = layout.partitions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bios-boot",
                "berth-boot",
                "berth-root-a",
                "berth-root-b",
                "berth-state"
            ]
        );
        let placed = layout.place();
        assert_eq!(placed[0].offset(), MIB);
        assert_eq!(placed[1].size(), 64 * MIB);
        for w in placed.windows(2) {
            assert_eq!(w[0].last_lba + 1, w[1].first_lba);
        }
        let (gpt, _) = layout.gpt(&Seed::new(["test"])).unwrap();
        let sectors = layout.disk_size() / SECTOR;
        gpt.validate(sectors).unwrap();
        // The slot partitions carry the names the boot state uses.
        for slot in crate::grubenv::Slot::ALL {
            assert!(gpt.find(slot.partition_name()).is_some());
        }
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert!(parse_size("64MB").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn invalid_layouts_are_rejected_with_the_reason() {
        let base = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/layout/disk.toml"),
        )
        .unwrap();
        let cases = [
            (base.replace("\"1M\"", "\"1536K\""), "multiple of 1 MiB"),
            (
                base.replace("role = \"root-b\"", "role = \"root-a\""),
                "RootA",
            ),
            (
                base.replace("label = \"BERTH-BOOT\"", "colour = \"red\""),
                "colour",
            ),
            (
                base.replace("\"berth-root-b\"", "\"berth-root-a\""),
                "used twice",
            ),
        ];
        for (text, want) in cases {
            let err = Layout::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }
}
