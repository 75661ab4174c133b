//! Reads TOML files (units, machine config) into serde types while collecting *every* error of
//! a file, each with file, line, column and key.
//!
//! serde stops at the first error. To report them all, the document is parsed once into a
//! spanned tree; after each failed deserialization the entry the error points at is removed
//! from the tree and deserialization is retried. The same serde types (with
//! `deny_unknown_fields`) stay the single definition of the schema.

use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One error in a configuration file, with its position.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path (`service.restart`, `container.ports[1]`); empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "key `{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// All errors of one file, in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Maps byte offsets of one source text to 1-based line and column (in characters).
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, column)
    }

    pub fn diagnostic(&self, span: Option<Range<usize>>, key: &str, message: String) -> Diagnostic {
        let (line, column) = span.map_or((1, 1), |s| self.position(s.start));
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }
}

/// The most errors reported for one file; past it the file is hopeless anyway.
const MAX_ERRORS: usize = 64;

/// Deserializes `T` from `src`. On failure returns every syntax error, or every unknown key and
/// wrongly typed value, each with its position.
pub fn parse<T: DeserializeOwned>(src: &Source<'_>) -> Result<T, Diagnostics> {
    match parse_partial(src) {
        (Some(value), errors) if errors.is_empty() => Ok(value),
        (_, errors) => Err(Diagnostics(errors)),
    }
}

/// Like [`parse`], but also returns what deserialized once the erroneous entries were taken
/// out, so semantic validation can report its errors together with the structural ones.
pub fn parse_partial<T: DeserializeOwned>(src: &Source<'_>) -> (Option<T>, Vec<Diagnostic>) {
    let (mut tree, syntax) = DeTable::parse_recoverable(src.text);
    if !syntax.is_empty() {
        let mut out: Vec<Diagnostic> = syntax
            .iter()
            .take(MAX_ERRORS)
            .map(|e| src.diagnostic(e.span(), "", first_line(e.message())))
            .collect();
        out.sort_by_key(|d| (d.line, d.column));
        return (None, out);
    }
    let mut errors = Vec::new();
    let mut value = None;
    loop {
        let err = match T::deserialize(toml::de::Deserializer::from(tree.clone())) {
            Ok(v) => {
                value = Some(v);
                break;
            }
            Err(err) => err,
        };
        let span = err.span();
        let key = span.clone().and_then(|s| remove_at(tree.get_mut(), &s, ""));
        let message = first_line(err.message());
        errors.push(src.diagnostic(span, key.as_deref().unwrap_or(""), message));
        // Without a located entry the next attempt would fail the same way.
        if key.is_none() || errors.len() >= MAX_ERRORS {
            break;
        }
    }
    errors.sort_by_key(|d| (d.line, d.column));
    (value, errors)
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Removes the entry of `table` that `span` points at (its key, or a value inside it) and
/// returns its key path. Nested tables are searched first so the innermost entry goes.
fn remove_at(table: &mut DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    let mut hit: Option<(String, bool)> = None;
    for (key, value) in table.iter_mut() {
        let path = join(prefix, key.get_ref());
        if key.span() == *span {
            hit = Some((key.get_ref().to_string(), true));
            break;
        }
        if !contains(&value.span(), span) && !is_header_table(value) {
            continue;
        }
        match value.get_mut() {
            DeValue::Table(inner) => {
                if let Some(found) = remove_at(inner, span, &path) {
                    return Some(found);
                }
                if contains(&value.span(), span) {
                    hit = Some((key.get_ref().to_string(), false));
                    break;
                }
            }
            DeValue::Array(items) => {
                let index = items.iter().position(|item| contains(&item.span(), span));
                let path = match index {
                    Some(i) => format!("{path}[{i}]"),
                    None => path,
                };
                return table.remove(key_of(table, span)?.as_str()).map(|_| path);
            }
            _ => {
                hit = Some((key.get_ref().to_string(), false));
                break;
            }
        }
    }
    let (key, _) = hit?;
    table.remove(key.as_str());
    Some(join(prefix, &key))
}

/// A `[section]` table's own span may not cover its entries; search it regardless.
fn is_header_table(value: &Spanned<DeValue<'_>>) -> bool {
    matches!(value.get_ref(), DeValue::Table(_))
}

fn key_of(table: &DeTable<'_>, span: &Range<usize>) -> Option<String> {
    table
        .iter()
        .find(|(_, v)| contains(&v.span(), span))
        .map(|(k, _)| k.get_ref().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        a: Option<Section>,
        top: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        x: Option<u32>,
        list: Option<Vec<String>>,
    }

    fn errors(text: &str) -> Vec<Diagnostic> {
        parse::<Doc>(&Source {
            file: "t.toml",
            text,
        })
        .unwrap_err()
        .0
    }

    #[test]
    fn reports_every_structural_error_with_position_and_key() {
        let text = "top = 1\n[a]\nx = \"no\"\ny = 2\nlist = [\"ok\", 3]\n[b]\nz = 1\n";
        let errs = errors(text);
        let got: Vec<(usize, usize, &str)> = errs
            .iter()
            .map(|d| (d.line, d.column, d.key.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 7, "top"),
                (3, 5, "a.x"),
                (4, 1, "a.y"),
                (5, 15, "a.list[1]"),
                (6, 2, "b")
            ]
        );
        assert!(
            errs[2].message.contains("unknown field"),
            "{}",
            errs[2].message
        );
        assert_eq!(errs[2].to_string().split(": ").next(), Some("t.toml:4:1"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let errs = errors("[a]\nx = = 1\n");
        assert_eq!((errs[0].line, errs[0].key.as_str()), (2, ""));
    }

    #[test]
    fn valid_document_parses() {
        let doc: Doc = parse(&Source {
            file: "t",
            text: "top = \"v\"\n[a]\nx = 3\n",
        })
        .unwrap();
        assert_eq!(doc.a.unwrap().x, Some(3));
    }
}
