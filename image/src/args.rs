//! The `--key value` options of berth-image's commands: one parser for all of them.

use std::collections::HashMap;

/// Parses `--key value` (or `--key=value`) pairs; every key must be one of `known`. A key in
/// `repeatable` collects its values in order; any other key may appear once. Errors end with
/// `usage`.
pub fn options_multi(
    args: &[String],
    known: &[&str],
    repeatable: &[&str],
    usage: &str,
) -> Result<HashMap<String, Vec<String>>, String> {
    use lexopt::prelude::*;
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(|e| format!("{e}\n{usage}"))? {
        let name = match arg {
            Long(name) if known.contains(&name) => name.to_string(),
            Long(name) => return Err(format!("unknown argument \"--{name}\"\n{usage}")),
            Short(c) => return Err(format!("unknown argument \"-{c}\"\n{usage}")),
            Value(v) => return Err(format!("unknown argument {v:?}\n{usage}")),
        };
        let value = parser
            .value()
            .map_err(|_| format!("--{name} needs a value"))?
            .string()
            .map_err(|e| format!("--{name}: {e}"))?;
        if map.contains_key(&name) && !repeatable.contains(&name.as_str()) {
            return Err(format!("--{name} given twice"));
        }
        map.entry(name).or_default().push(value);
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
        assert!(err(&["-o", "x"]).starts_with("unknown argument \"-o\"\nUSAGE"));
        assert_eq!(err(&["--out=a", "--out", "b"]), "--out given twice");
    }

    #[test]
    fn inline_empty_and_dashed_values() {
        let got = options(
            &strings(&["--out=o", "--name=", "--key", "-k.pub", "--", "x"]),
            &["out", "name", "key"],
            "USAGE",
        );
        assert!(got
            .as_ref()
            .is_err_and(|e| e.starts_with("unknown argument \"x\"")));
        let got = options(
            &strings(&["--out=o", "--name=", "--key", "-k.pub"]),
            &["out", "name", "key"],
            "USAGE",
        )
        .unwrap_or_default();
        assert_eq!(got["out"], "o");
        assert_eq!(got["name"], "");
        assert_eq!(got["key"], "-k.pub");
    }
}
