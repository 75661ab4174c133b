//! Which image layers a container's writable root was made over. The root is the container's
//! upper directory over its image's layers, and it only means something over the layers it
//! was made over: a file the container copied up from one version of the image hides that
//! file in the next version, and a file it deleted (a whiteout) hides whatever the next
//! version puts at that path. So the container's directory records its layers (their diff
//! IDs, bottom first), and a start over other layers (the unit's image changed, or its tag
//! now names another image) sets the old directory aside for deletion and starts from an
//! empty upper directory, as Docker does when it recreates a container. Data that must
//! outlive the image belongs in a named volume.

use std::io;
use std::path::{Path, PathBuf};

use berth_store::Digest;

use super::removal;

/// The record's file in the container's directory.
const RECORD: &str = "layers";

/// What a start found in the container's directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Made over the same layers, new, or made before layers were recorded: kept as it is.
    Kept,
    /// Made over other layers: set aside at this path for deletion; the directory is new.
    Replaced(PathBuf),
}

/// Makes `top/name` the directory of a writable root over `layers`: keeps it when it was
/// made over them, sets it aside when it was made over others, and records `layers`.
///
/// A directory without a record (made before records were kept) or with an empty one (a
/// power loss before its data reached the disk) is kept: it was most likely made over the
/// same image, and what the container wrote is not thrown away on a guess.
pub fn claim(top: &Path, name: &str, layers: &[Digest]) -> io::Result<Claim> {
    let dir = top.join(name);
    let wanted = record_text(layers);
    let record = dir.join(RECORD);
    let found = match std::fs::read_to_string(&record) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(at(&record, e)),
    };
    if found == wanted {
        return Ok(Claim::Kept);
    }
    let mut claim = Claim::Kept;
    if !found.is_empty() {
        if let Some(aside) = removal::set_aside(top, name).map_err(|e| at(&dir, e))? {
            claim = Claim::Replaced(aside);
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| at(&dir, e))?;
    write_record(&dir, &wanted)?;
    Ok(claim)
}

/// One diff ID per line, bottom layer first.
fn record_text(layers: &[Digest]) -> String {
    layers.iter().map(|d| format!("{d}\n")).collect()
}

/// Writes the record durably (a power loss leaves the old record or the new one).
fn write_record(dir: &Path, text: &str) -> io::Result<()> {
    let record = dir.join(RECORD);
    berth_store::fsutil::write_atomic(&record, text.as_bytes()).map_err(|e| at(&record, e))
}

/// `e` with the path it happened at.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(hexes: &[char]) -> Vec<Digest> {
        hexes
            .iter()
            .map(|c| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap())
            .collect()
    }

    fn written(dir: &Path) -> Option<String> {
        std::fs::read_to_string(dir.join("upper/written")).ok()
    }

    fn container_with_a_write(top: &Path) -> PathBuf {
        let dir = top.join("web");
        std::fs::create_dir_all(dir.join("upper")).unwrap();
        std::fs::write(dir.join("upper/written"), "by the container").unwrap();
        dir
    }

    #[test]
    fn the_same_layers_keep_the_root_and_other_layers_replace_it() {
        let top = crate::testutil::scratch_dir("root-layers");
        let v1 = layers(&['a', 'b']);
        // A first start records its layers.
        assert_eq!(claim(&top, "web", &v1).unwrap(), Claim::Kept);
        let dir = container_with_a_write(&top);
        // A restart over the same layers keeps what the container wrote.
        assert_eq!(claim(&top, "web", &v1).unwrap(), Claim::Kept);
        assert_eq!(written(&dir).as_deref(), Some("by the container"));

        // One more layer on top (a new version of the image): a new, empty root.
        let v2 = layers(&['a', 'b', 'c']);
        let Claim::Replaced(aside) = claim(&top, "web", &v2).unwrap() else {
            panic!("the root made over other layers was kept");
        };
        assert_eq!(written(&dir), None);
        assert_eq!(written(&aside).as_deref(), Some("by the container"));
        assert_eq!(removal::pending(std::slice::from_ref(&top)), [aside]);
        assert_eq!(claim(&top, "web", &v2).unwrap(), Claim::Kept);
        // The same layers in another order are other layers.
        assert!(matches!(
            claim(&top, "web", &layers(&['c', 'b', 'a'])).unwrap(),
            Claim::Replaced(_)
        ));
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_root_without_a_record_is_kept_and_then_recorded() {
        let top = crate::testutil::scratch_dir("root-layers-legacy");
        // Made before records were kept.
        let dir = container_with_a_write(&top);
        let v1 = layers(&['a']);
        assert_eq!(claim(&top, "web", &v1).unwrap(), Claim::Kept);
        assert_eq!(written(&dir).as_deref(), Some("by the container"));
        assert_eq!(
            std::fs::read_to_string(dir.join(RECORD)).unwrap(),
            format!("sha256:{}\n", "a".repeat(64))
        );
        // A record that a power loss left empty is no evidence of other layers either.
        std::fs::write(dir.join(RECORD), "").unwrap();
        assert_eq!(claim(&top, "web", &v1).unwrap(), Claim::Kept);
        assert_eq!(written(&dir).as_deref(), Some("by the container"));
        assert!(removal::pending(std::slice::from_ref(&top)).is_empty());
        // The record and what the container wrote, no temporary file left beside them.
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [RECORD, "upper"]);
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_record_that_cannot_be_read_fails_the_claim_and_changes_nothing() {
        let top = crate::testutil::scratch_dir("root-layers-unreadable");
        let dir = container_with_a_write(&top);
        // A directory where the record should be: read_to_string fails with EISDIR.
        std::fs::create_dir(dir.join(RECORD)).unwrap();
        let e = claim(&top, "web", &layers(&['a'])).unwrap_err();
        assert!(e.to_string().contains("web/layers"), "{e}");
        assert_eq!(written(&dir).as_deref(), Some("by the container"));
        assert!(removal::pending(std::slice::from_ref(&top)).is_empty());
        std::fs::remove_dir_all(&top).unwrap();
    }
}
