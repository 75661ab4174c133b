//! The JSON path (`process.args`, `mounts[2].options`) of where a parse stopped: serde_json
//! names the line and column of an error, and users of config.json want the field. Found by
//! scanning the text up to that point rather than by wrapping the deserializer: a tracking
//! deserializer compiles every OCI spec type a second time, several hundred KiB of the binary.

/// One open container on the way to the error.
enum Frame {
    /// An object, and the key whose value is being read (once one has been read).
    Object {
        key: Option<String>,
        expect_key: bool,
    },
    Array {
        index: usize,
    },
}

/// The path of the value at 1-based `line` and `column` of `text` (serde_json's error
/// position), or `.` for the document itself.
pub fn at(text: &[u8], line: usize, column: usize) -> String {
    let end = offset(text, line, column).min(text.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        match text[i] {
            b'{' => stack.push(Frame::Object {
                key: None,
                expect_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { expect_key, .. }) => *expect_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            b'"' => {
                let start = i + 1;
                i = start;
                while i < end && text[i] != b'"' {
                    // An escape takes the next byte with it (`\"` does not end the string).
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object { key, expect_key }) = stack.last_mut() {
                    if *expect_key {
                        let raw = &text[start..i.min(end)];
                        *key = Some(String::from_utf8_lossy(raw).into_owned());
                        *expect_key = false;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    render(&stack)
}

/// Byte offset of 1-based `line` and `column` (serde_json counts columns in bytes).
fn offset(text: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].iter().position(|&b| b == b'\n') {
            Some(n) => start += n + 1,
            None => return text.len(),
        }
    }
    start + column
}

fn render(stack: &[Frame]) -> String {
    let mut path = String::new();
    for frame in stack {
        match frame {
            Frame::Object { key: Some(k), .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    if path.is_empty() {
        path.push('.');
    }
    path
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use oci_spec::runtime::Spec;

    /// The path of the error serde_json reports when `text` is read as a runtime spec.
    fn path_of_error(text: &str) -> String {
        match serde_json::from_str::<Spec>(text) {
            Ok(_) => panic!("{text} parsed"),
            Err(e) => at(text.as_bytes(), e.line(), e.column()),
        }
    }

    #[test]
    fn a_wrong_type_is_located_at_its_field() {
        assert_eq!(
            path_of_error(r#"{"ociVersion": "1.0.2", "process": {"args": 5}}"#),
            "process.args"
        );
        assert_eq!(
            path_of_error(
                "{\n  \"ociVersion\": \"1.0.2\",\n  \"linux\": {\n    \"resources\": {\n      \
                 \"memory\": {\"limit\": \"lots\"}\n    }\n  }\n}"
            ),
            "linux.resources.memory.limit"
        );
    }

    #[test]
    fn array_elements_are_indexed() {
        assert_eq!(
            path_of_error(
                r#"{"ociVersion": "1.0.2", "mounts": [{"destination": "/a"}, {"destination": 7}]}"#
            ),
            "mounts[1].destination"
        );
        assert_eq!(
            path_of_error(r#"{"ociVersion": "1.0.2", "process": {"args": ["a", 1]}}"#),
            "process.args[1]"
        );
    }

    #[test]
    fn keys_with_escapes_and_braces_in_strings_do_not_confuse_it() {
        assert_eq!(
            path_of_error(
                r#"{"ociVersion": "1.0.2", "annotations": {"a\"}{": "x"}, "hostname": 1}"#
            ),
            "hostname"
        );
    }

    #[test]
    fn broken_documents_point_at_what_is_open() {
        assert_eq!(path_of_error("{not json"), ".");
        assert_eq!(
            path_of_error(r#"{"process": {"args": ["a""#),
            "process.args[0]"
        );
        assert_eq!(path_of_error("5"), ".");
        // Positions past the end are clamped.
        assert_eq!(at(b"{}", 9, 9), ".");
    }
}
