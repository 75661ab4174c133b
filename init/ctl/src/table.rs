//! Output for people: aligned tables and `key  value` lists.

use std::fmt::Write;

use serde_json::Value;

use berth_init::log::escape_control;

/// Columns padded to their widest cell; the last column is not padded. Cells come from the
/// API (unit names, errors, …): control characters in them are escaped.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape_control(c).into_owned()).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0);
                let _ = write!(line, "{cell:<pad$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key  value` lines, keys padded.
pub fn pairs(items: &[(&str, String)]) -> String {
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in items {
        let v = escape_control(v);
        let _ = writeln!(out, "{k:<width$}  {v}");
    }
    out
}

/// A JSON value as a cell: strings bare, null as `-`, lists comma-separated.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".to_string(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// `1h 2m 3s` for people.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60) {
        (0, 0, 0, _) if seconds < 10.0 => format!("{seconds:.2}s"),
        (0, 0, 0, sec) => format!("{sec}s"),
        (0, 0, m, sec) => format!("{m}m {sec}s"),
        (0, h, m, sec) => format!("{h}h {m}m {sec}s"),
        (d, h, m, _) => format!("{d}d {h}h {m}m"),
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.0 GiB`, as berth-runtime prints them.
pub use berth_store::pull::human_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 << 20), "5.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(human_size(2048 << 30), "2048.0 GiB");
    }

    #[test]
    fn aligns_columns() {
        let t = table(
            &["NAME", "STATE", "DETAIL"],
            &[
                vec!["web".into(), "running".into(), "-".into()],
                vec!["database".into(), "failed".into(), "start limit".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME      STATE    DETAIL\nweb       running  -\ndatabase  failed   start limit\n"
        );
        assert_eq!(duration(3725.0), "1h 2m 5s");
        assert_eq!(duration(1.5), "1.50s");
        assert_eq!(cell(&serde_json::json!(["a", "b"])), "a, b");
    }

    #[test]
    fn control_characters_in_cells_are_escaped() {
        let t = table(
            &["NAME", "STATE"],
            &[vec!["x\x1b[2J\nweb".into(), "running".into()]],
        );
        assert_eq!(t, "NAME           STATE\nx\\x1b[2J\\nweb  running\n");
        let p = pairs(&[("error", "a\rb\x1b]0;t\x07".into())]);
        assert_eq!(p, "error  a\\rb\\x1b]0;t\\x07\n");
    }
}
