//! The `--key value` options of berth-image's commands: one parser for all of them.

use std::collections::HashMap;

/// Parses `--key value` pairs; every key must be one of `known`. A key in `repeatable`
/// collects its values in order; any other key may appear once. Errors end with `usage`.
pub fn options_multi(
    args: &[String],
    known: &[&str],
    repeatable: &[&str],
    usage: &str,
) -> Result<HashMap<String, Vec<String>>, String> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    let mut it = args.iter();
    while let Some(key) = it.next() {
        let name = key
            .strip_prefix("--")
            .filter(|k| known.contains(k))
            .ok_or_else(|| format!("unknown argument {key:?}\n{usage}"))?;
        let value = it.next().ok_or_else(|| format!("{key} needs a value"))?;
        let values = map.entry(name.to_string()).or_default();
        if !values.is_empty() && !repeatable.contains(&name) {
            return Err(format!("{key} given twice"));
        }
        values.push(value.clone());
    }
    Ok(map)
}

/// Like [`options_multi`] for commands whose options are all given at most once.
pub fn options(
    args: &[String],
    known: &[&str],
    usage: &str,
) -> Result<HashMap<String, String>, String> {
    Ok(options_multi(args, known, &[], usage)?
        .into_iter()
        .filter_map(|(k, mut v)| v.pop().map(|v| (k, v)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn known_keys_once_repeatable_ones_in_order() {
        let got = options_multi(
            &strings(&["--out", "o", "--input", "a=1", "--input", "b=2"]),
            &["out", "input"],
            &["input"],
            "usage",
        );
        let got = got.unwrap_or_default();
        assert_eq!(got["out"], ["o"]);
        assert_eq!(got["input"], ["a=1", "b=2"]);
    }

    #[test]
    fn unknown_twice_and_missing_values_are_errors() {
        let err = |a: &[&str]| {
            options(&strings(a), &["out"], "USAGE")
                .err()
                .unwrap_or_default()
        };
        assert!(err(&["--nope", "x"]).contains("unknown argument \"--nope\"\nUSAGE"));
        assert_eq!(err(&["--out", "a", "--out", "b"]), "--out given twice");
        assert_eq!(err(&["--out"]), "--out needs a value");
        assert!(err(&["stray"]).contains("unknown argument"));
    }
}
