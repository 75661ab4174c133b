//! Minimal HTTP/1.1 for the control API: request parsing with `httparse` under hard size
//! limits, and JSON responses. One request per connection (`Connection: close`).

use serde::Serialize;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body (unit files are at most 256 KiB).
pub const MAX_BODY: usize = 1024 * 1024;
const MAX_HEADERS: usize = 48;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` in the query string (no percent-decoding: values are names and
    /// numbers).
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }
}

#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    Complete(Request),
    /// The request is unacceptable; answer with this and close.
    Invalid(Response),
}

pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Invalid(Response::error(431, "request head too large", ""));
        }
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Invalid(Response::error(431, "too many headers", ""));
        }
        Err(e) => {
            return Parsed::Invalid(Response::error(400, "malformed request", &e.to_string()))
        }
    };
    if head_len > MAX_HEAD {
        return Parsed::Invalid(Response::error(431, "request head too large", ""));
    }
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    if find("transfer-encoding").is_some() {
        return Parsed::Invalid(Response::error(
            411,
            "chunked bodies are not supported",
            "send Content-Length",
        ));
    }
    let body_len = match find("content-length").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(Ok(_)) => return Parsed::Invalid(Response::error(413, "request body too large", "")),
        Some(Err(_)) => return Parsed::Invalid(Response::error(400, "bad Content-Length", "")),
    };
    let Some(body) = buf.get(head_len..head_len + body_len) else {
        return Parsed::Incomplete;
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Parsed::Complete(Request {
        method: req.method.unwrap_or("GET").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: body.to_vec(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: &'a str,
}

impl Response {
    pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec_pretty(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Response {
                    status,
                    content_type: "application/json",
                    body,
                }
            }
            Err(e) => Response::error(500, "cannot encode response", &e.to_string()),
        }
    }

    /// `{"error": ..., "detail": ...}`
    pub fn error(status: u16, error: &str, detail: &str) -> Response {
        let mut body = serde_json::to_vec(&ErrorBody { error, detail }).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_complete_requests_only() {
        assert!(matches!(
            parse(b"GET /v1/units HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Incomplete
        ));
        let Parsed::Complete(r) = parse(b"GET /v1/units/web?tail=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        else {
            panic!()
        };
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.query_param("tail")),
            ("GET", "/v1/units/web", Some("5"))
        );
        let body = b"POST /v1/x HTTP/1.1\r\nContent-Length: 4\r\n\r\nab";
        assert!(matches!(parse(body), Parsed::Incomplete));
        let Parsed::Complete(r) = parse(b"POST /v1/x HTTP/1.1\r\ncontent-length: 4\r\n\r\nabcd")
        else {
            panic!()
        };
        assert_eq!(r.body, b"abcd");
    }

    #[test]
    fn rejects_oversized_and_malformed_requests() {
        let status = |b: &[u8]| match parse(b) {
            Parsed::Invalid(r) => r.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(b"\x00\x01 garbage\r\n\r\n"), 400);
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(status(big.as_bytes()), 413);
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD + 1));
        assert_eq!(status(long.as_bytes()), 431);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
    }

    #[test]
    fn errors_are_json_with_error_and_detail() {
        let r = Response::error(404, "unknown unit", "web");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (v["error"].as_str(), v["detail"].as_str()),
            (Some("unknown unit"), Some("web"))
        );
        assert!(String::from_utf8(r.to_bytes())
            .unwrap()
            .starts_with("HTTP/1.1 404 Not Found\r\n"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }
    }
}
