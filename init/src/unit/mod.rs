//! Units: the TOML model (`file`), typed values (`value`), validation, loading from disk, and
//! the cache of validated units a boot loads them through (`cache`).

pub mod cache;
pub mod file;
pub mod model;
pub mod validate;
pub mod value;

use std::path::{Path, PathBuf};

pub use model::*;

use crate::tomlfile::{self, Diagnostic, Diagnostics, Source};

/// The largest unit file read; anything bigger is surely not a unit.
pub const MAX_UNIT_FILE: u64 = 256 * 1024;

/// Parses and validates the text of a unit file. `file` is used in messages; the unit's name
/// is `name`.
pub fn parse(name: &str, file: &str, text: &str) -> Result<Unit, Diagnostics> {
    let src = Source { file, text };
    let (raw, mut errors) = tomlfile::parse_partial::<file::UnitFile>(&src);
    let Some(raw) = raw else {
        return Err(Diagnostics(errors));
    };
    match validate::validate(name, raw, &src) {
        Ok(unit) if errors.is_empty() => Ok(unit),
        Ok(_) => Err(Diagnostics(errors)),
        Err(Diagnostics(more)) => {
            // A key already reported (and taken out) would only echo as "missing" here.
            let related = |a: &str, b: &str| {
                a.strip_prefix(b)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            };
            let echoes = |d: &Diagnostic| {
                errors
                    .iter()
                    .any(|e| related(&d.key, &e.key) || related(&e.key, &d.key))
            };
            let more: Vec<Diagnostic> = more.into_iter().filter(|d| !echoes(d)).collect();
            errors.extend(more);
            errors.sort_by_key(|d| (d.line, d.column));
            Err(Diagnostics(errors))
        }
    }
}

/// The unit name of a path: its file stem.
pub fn name_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads and validates one unit file.
pub fn load_file(path: &Path) -> Result<Unit, Diagnostics> {
    load_file_with_text(path).map(|(_, unit)| unit)
}

/// [`load_file`], with the text the unit was validated from (what the unit cache keys it by).
pub fn load_file_with_text(path: &Path) -> Result<(String, Unit), Diagnostics> {
    let shown = path.display().to_string();
    let text = read_text(path, &shown)?;
    let unit = parse(&name_of(path), &shown, &text)?;
    Ok((text, unit))
}

/// The text of a unit file (`shown`: its path for messages).
fn read_text(path: &Path, shown: &str) -> Result<String, Diagnostics> {
    let io_error = |message: String| {
        Diagnostics(vec![Diagnostic {
            file: shown.to_string(),
            line: 1,
            column: 1,
            key: String::new(),
            message,
        }])
    };
    let meta = std::fs::metadata(path).map_err(|e| io_error(format!("cannot read: {e}")))?;
    if meta.len() > MAX_UNIT_FILE {
        return Err(io_error(format!("file larger than {MAX_UNIT_FILE} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| io_error(format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| io_error(format!("not UTF-8: {e}")))
}

/// One unit found on disk: valid, or with the errors that keep it from running.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub name: String,
    pub path: PathBuf,
    pub unit: Result<Unit, Diagnostics>,
}

/// Loads every `*.toml` of the given directories, in order; a later directory's unit replaces
/// an earlier one of the same name (user units override built-in ones). Missing directories
/// are skipped. Results are sorted by name.
pub fn load_dirs(dirs: &[PathBuf]) -> Vec<Loaded> {
    load_dirs_with(dirs, parse)
}

/// [`load_dirs`] with `unit(name, shown path, text)` turning each file's text into its unit.
fn load_dirs_with(
    dirs: &[PathBuf],
    mut unit: impl FnMut(&str, &str, &str) -> Result<Unit, Diagnostics>,
) -> Vec<Loaded> {
    let mut found: std::collections::BTreeMap<String, Loaded> = Default::default();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            let name = name_of(&path);
            let shown = path.display().to_string();
            let unit = read_text(&path, &shown).and_then(|text| unit(&name, &shown, &text));
            found.insert(name.clone(), Loaded { name, path, unit });
        }
    }
    found.into_values().collect()
}

#[cfg(test)]
mod tests;
