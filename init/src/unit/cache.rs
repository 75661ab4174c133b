//! Validated units kept from one load to the next (`state/units.cache`), so that a boot whose
//! unit files are as they were does not parse TOML at all: under emulation, parsing and
//! validating four unit files for the first time cost ~30 ms of PID 1's path to its first
//! container. The disk image ships the cache of its own units (`berthctl check --cache`).
//!
//! An entry is a unit's name, the SHA-256 of its file's text and the unit validated from that
//! text; validation reads nothing else, so the same name and text always give the same unit.
//! Only valid units are kept: a file with errors is parsed on every load and reports them. A
//! cache written by another build (unit code or dependencies changed) or unreadable is
//! ignored, and rewritten after the load.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Loaded, Unit};

/// The file beside the units directory on the state partition.
pub const CACHE_FILE: &str = "units.cache";

/// Identifies the unit code and dependencies of this build (init/build.rs).
const SCHEMA: &str = env!("BERTH_UNIT_SCHEMA");

/// The largest cache read: far more than the units a machine runs would need.
const MAX_CACHE_FILE: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitCache {
    schema: String,
    /// Sorted by name and digest, so equal caches compare (and serialise) equal.
    units: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    name: String,
    sha256: String,
    unit: Unit,
}

impl Default for UnitCache {
    fn default() -> Self {
        UnitCache {
            schema: SCHEMA.to_string(),
            units: Vec::new(),
        }
    }
}

fn digest(text: &str) -> String {
    berth_store::digest::Digest::of_bytes(text.as_bytes())
        .hex()
        .to_string()
}

impl UnitCache {
    /// The cache at `path`; empty when missing, unreadable, malformed or of another build.
    pub fn read(path: &Path) -> UnitCache {
        let parsed = std::fs::metadata(path)
            .ok()
            .filter(|m| m.is_file() && m.len() <= MAX_CACHE_FILE)
            .and_then(|_| std::fs::read(path).ok())
            .and_then(|bytes| serde_json::from_slice::<UnitCache>(&bytes).ok());
        match parsed {
            Some(cache) if cache.schema == SCHEMA => cache,
            _ => UnitCache::default(),
        }
    }

    /// Writes the cache to `path` (a new file renamed over the old one).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        berth_store::fsutil::write_replace(path, &json)
    }

    /// Where the entry of unit `name` with text digest `sha256` is, or would be inserted.
    fn position(&self, name: &str, sha256: &str) -> Result<usize, usize> {
        self.units
            .binary_search_by(|e| (e.name.as_str(), e.sha256.as_str()).cmp(&(name, sha256)))
    }

    /// The unit `name` validated from the text with digest `sha256`, if cached; `path` is
    /// where it was read now.
    fn get(&self, name: &str, sha256: &str, path: &str) -> Option<Unit> {
        let i = self.position(name, sha256).ok()?;
        let mut unit = self.units[i].unit.clone();
        unit.path = path.to_string();
        Some(unit)
    }

    /// Keeps `unit`, validated from `text`, without the path it was read from (an image
    /// build validates the files where it assembles them).
    pub fn insert(&mut self, text: &str, unit: &Unit) {
        self.put(digest(text), unit);
    }

    /// [`Self::insert`] with the text's digest already computed.
    fn put(&mut self, sha256: String, unit: &Unit) {
        let at = self.position(&unit.name, &sha256);
        let entry = Entry {
            name: unit.name.clone(),
            sha256,
            unit: Unit {
                path: String::new(),
                ..unit.clone()
            },
        };
        match at {
            Ok(i) => self.units[i] = entry,
            Err(i) => self.units.insert(i, entry),
        }
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

/// Loads every unit of `dirs` as [`super::load_dirs`] does, taking the valid units whose
/// files are unchanged from the cache at `path`, and rewrites the cache when what it holds
/// changed (added, edited or removed units; never when every unit was found in it).
pub fn load_dirs(dirs: &[PathBuf], path: &Path) -> Vec<Loaded> {
    let old = UnitCache::read(path);
    let mut new = UnitCache::default();
    let loaded = super::load_dirs_with(dirs, |name, shown, text| {
        // Hashed once: the lookup and the new cache's entry share it.
        let sha256 = digest(text);
        let unit = match old.get(name, &sha256, shown) {
            Some(unit) => Ok(unit),
            None => super::parse(name, shown, text),
        };
        if let Ok(u) = &unit {
            new.put(sha256, u);
        }
        unit
    });
    if new != old {
        match new.write(path) {
            Ok(()) => log::info!("unit cache {}: {} units written", path.display(), new.len()),
            Err(e) => log::warn!("unit cache {}: {e}", path.display()),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const WEB: &str = "[container]\nimage = \"web:1\"\nread_only = true\n";

    fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir = crate::testutil::scratch_dir(name);
        let units = dir.join("units");
        std::fs::create_dir_all(&units).unwrap();
        let cache = dir.join(CACHE_FILE);
        (dir, units, cache)
    }

    #[test]
    fn an_unchanged_unit_comes_from_the_cache_and_the_cache_is_not_rewritten() {
        let (dir, units, cache) = setup("unit-cache-hit");
        std::fs::write(units.join("web.toml"), WEB).unwrap();
        // Written from a copy of the file elsewhere (as an image build does).
        let elsewhere = dir.join("assembled/web.toml");
        std::fs::create_dir_all(dir.join("assembled")).unwrap();
        std::fs::write(&elsewhere, WEB).unwrap();
        let mut built = UnitCache::default();
        built.insert(WEB, &super::super::load_file(&elsewhere).unwrap());
        built.write(&cache).unwrap();
        let built_at = std::fs::metadata(&cache).unwrap();
        let first = load_dirs(std::slice::from_ref(&units), &cache);
        assert!(first[0].unit.is_ok());
        assert_eq!(UnitCache::read(&cache).len(), 1);
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::metadata(&cache).unwrap();
        assert_eq!(
            (built_at.ino(), built_at.mtime_nsec()),
            (now.ino(), now.mtime_nsec()),
            "a cache written from other paths was rewritten"
        );

        // Prove the second load takes the cache's unit instead of parsing the file: a cached
        // unit that parsing the same text would not give.
        let mut marked = UnitCache::read(&cache);
        let mut unit = first[0].unit.clone().unwrap();
        unit.description = "from the cache".into();
        marked.insert(WEB, &unit);
        marked.write(&cache).unwrap();
        let written = std::fs::metadata(&cache).unwrap();
        let second = load_dirs(std::slice::from_ref(&units), &cache);
        let got = second[0].unit.as_ref().unwrap();
        assert_eq!(got.description, "from the cache");
        assert_eq!(got.path, units.join("web.toml").display().to_string());
        // Nothing changed: no write.
        let now = std::fs::metadata(&cache).unwrap();
        assert_eq!(
            (written.ino(), written.mtime_nsec()),
            (now.ino(), now.mtime_nsec())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_edited_unit_is_parsed_again_and_replaces_its_entry() {
        let (dir, units, cache) = setup("unit-cache-edit");
        std::fs::write(units.join("web.toml"), WEB).unwrap();
        load_dirs(std::slice::from_ref(&units), &cache);
        let edited = WEB.replace("read_only = true", "read_only = false");
        std::fs::write(units.join("web.toml"), &edited).unwrap();
        let loaded = load_dirs(std::slice::from_ref(&units), &cache);
        assert!(!loaded[0].unit.as_ref().unwrap().container.read_only);
        let kept = UnitCache::read(&cache);
        assert_eq!(kept.len(), 1, "the old text's entry is dropped");
        assert!(kept.get("web", &digest(&edited), "x").is_some());
        // A removed unit leaves the cache too.
        std::fs::remove_file(units.join("web.toml")).unwrap();
        assert!(load_dirs(std::slice::from_ref(&units), &cache).is_empty());
        assert!(UnitCache::read(&cache).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_unit_with_errors_is_never_cached_and_reports_them_every_time() {
        let (dir, units, cache) = setup("unit-cache-errors");
        let bad = "[container]\nimage = \"web:1\"\nrestart = \"sometimes\"\n";
        std::fs::write(units.join("bad.toml"), bad).unwrap();
        for _ in 0..2 {
            let loaded = load_dirs(std::slice::from_ref(&units), &cache);
            let errors = loaded[0].unit.as_ref().unwrap_err();
            assert!(errors.to_string().contains("bad.toml:3:1"), "{errors}");
            assert!(UnitCache::read(&cache).is_empty());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cache_of_another_build_or_garbage_is_ignored() {
        let (dir, units, cache) = setup("unit-cache-foreign");
        std::fs::write(units.join("web.toml"), WEB).unwrap();
        load_dirs(std::slice::from_ref(&units), &cache);
        let mut foreign = UnitCache::read(&cache);
        let mut unit = foreign.units[0].unit.clone();
        unit.description = "stale".into();
        foreign.insert(WEB, &unit);
        foreign.schema = "another build".into();
        foreign.write(&cache).unwrap();
        let loaded = load_dirs(std::slice::from_ref(&units), &cache);
        assert_eq!(loaded[0].unit.as_ref().unwrap().description, "");
        assert_eq!(
            UnitCache::read(&cache).schema,
            SCHEMA,
            "rewritten by this build"
        );

        for junk in ["", "{", "[1, 2]", "{\"schema\": 5}"] {
            std::fs::write(&cache, junk).unwrap();
            let loaded = load_dirs(std::slice::from_ref(&units), &cache);
            assert!(loaded[0].unit.is_ok(), "{junk:?}");
            assert_eq!(UnitCache::read(&cache).len(), 1, "{junk:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_kind_of_value_survives_the_cache() {
        let text = r#"[unit]
description = "all of it"
after = ["db"]
requires = ["db"]
critical = true

[container]
image = "registry.example:5000/team/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
command = ["httpd", "-f"]
env = { A = "1", B = "two" }
user = "1000:100"
network = "bridge"
ports = ["127.0.0.1:8080:80/udp"]
volumes = ["data:/data:ro,rshared", "/srv:/srv"]
read_only = true
privileged = true
pid = "host"

[resources]
memory_max = "64M"
cpu_max = 0.5
pids_max = 32

[service]
restart = "never"
restart_delay = "1500ms"
restart_delay_max = "1m"
start_limit_burst = 3
start_limit_interval = "20s"
stop_signal = "SIGINT"
stop_timeout = "4s"

[health]
exec = ["true"]
interval = "3s"
retries = 2
"#;
        let unit = super::super::parse("web", "web.toml", text).unwrap();
        let mut cache = UnitCache::default();
        cache.insert(text, &unit);
        let json = serde_json::to_vec(&cache).unwrap();
        let back: UnitCache = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.get("web", &digest(text), "web.toml"), Some(unit));
        let named = "[container]\nimage = \"web\"\nuser = \"www:www\"\n";
        let unit = super::super::parse("named", "named.toml", named).unwrap();
        cache.insert(named, &unit);
        let back: UnitCache = serde_json::from_slice(&serde_json::to_vec(&cache).unwrap()).unwrap();
        assert_eq!(back.get("named", &digest(named), "named.toml"), Some(unit));
    }
}
