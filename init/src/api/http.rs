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

    /// A boolean query flag: present as `1`, `true`, `yes` or bare (`?follow`).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.query_param(key), Some("" | "1" | "true" | "yes"))
    }
}

/// Decodes `%XX` escapes (path segments such as image references); `None` when an escape is
/// malformed or the result is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// True when `buf` holds a complete head asking for `100 Continue` before the body.
pub fn expects_continue(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    matches!(req.parse(buf), Ok(httparse::Status::Complete(_)))
        && req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("expect")
                && String::from_utf8_lossy(h.value)
                    .trim()
                    .eq_ignore_ascii_case("100-continue")
        })
}

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The head of a chunked (streaming) response.
pub fn stream_head(status: u16, content_type: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        reason(status)
    )
    .into_bytes()
}

/// The head of a response whose body of `len` bytes is sent after it.
pub fn length_head(status: u16, content_type: &str, len: u64) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        reason(status)
    )
    .into_bytes()
}

/// One chunk of a chunked body (empty data makes no chunk: that would end the body).
pub fn chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    Complete(Request),
    /// The request is unacceptable; answer with this and close.
    Invalid(Response),
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` bytes (0 without the header).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A complete request head: the request without its body, the head's length in the buffer
/// and how the body that follows is framed.
#[derive(Debug)]
pub struct Head {
    pub request: Request,
    pub len: usize,
    pub framing: Framing,
}

#[derive(Debug)]
pub enum ParsedHead {
    Incomplete,
    Complete(Head),
    Invalid(Response),
}

/// Parses one request head. Anything that could be framed more than one way (two lengths, a
/// length and a transfer coding, a signed or listed length), a transfer coding other than
/// `chunked` alone, folded or malformed header lines, too many or too large headers: a 4xx
/// as soon as the head is in, never a wait for a body that may not come. The body's size is
/// not limited here: see [`parse`].
pub fn parse_head(buf: &[u8]) -> ParsedHead {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return ParsedHead::Invalid(Response::error(431, "request head too large", ""));
        }
        Ok(httparse::Status::Partial) => return ParsedHead::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            let detail = format!("at most {MAX_HEADERS}");
            return ParsedHead::Invalid(Response::error(431, "too many headers", &detail));
        }
        Err(e) => {
            let detail = match e {
                // A header line starting with white space (obs-fold) lands here too.
                httparse::Error::HeaderName => {
                    "invalid header name (folded header lines are not accepted)".to_string()
                }
                other => other.to_string(),
            };
            return ParsedHead::Invalid(Response::error(400, "malformed request", &detail));
        }
    };
    if head_len > MAX_HEAD {
        return ParsedHead::Invalid(Response::error(431, "request head too large", ""));
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
    let all = |name: &'static str| {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let bad =
        |detail: &str| ParsedHead::Invalid(Response::error(400, "bad request framing", detail));
    let lengths: Vec<&str> = all("content-length").collect();
    let codings: Vec<&str> = all("transfer-encoding").collect();
    let framing = if !codings.is_empty() {
        if !lengths.is_empty() {
            return bad("both Transfer-Encoding and Content-Length");
        }
        match codings.as_slice() {
            [one] if one.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => {
                return ParsedHead::Invalid(Response::error(
                    411,
                    "transfer coding not supported",
                    "send Content-Length (or chunked alone where a route streams its body)",
                ))
            }
        }
    } else {
        match lengths.as_slice() {
            [] => Framing::Length(0),
            [one] => match content_length(one) {
                Ok(n) => Framing::Length(n),
                Err(resp) => return ParsedHead::Invalid(resp),
            },
            _ => return bad("more than one Content-Length"),
        }
    };
    let target = req.path.unwrap_or("/");
    if !target.starts_with('/') {
        return bad("the request target must be a path (`/v1/...`)");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    ParsedHead::Complete(Head {
        request: Request {
            method: req.method.unwrap_or("GET").to_string(),
            path: path.to_string(),
            query: query.to_string(),
            headers,
            body: Vec::new(),
        },
        len: head_len,
        framing,
    })
}

/// Parses one whole request: its head (see [`parse_head`]) and a body of at most
/// [`MAX_BODY`] bytes, framed by `Content-Length`.
pub fn parse(buf: &[u8]) -> Parsed {
    let head = match parse_head(buf) {
        ParsedHead::Incomplete => return Parsed::Incomplete,
        ParsedHead::Invalid(resp) => return Parsed::Invalid(resp),
        ParsedHead::Complete(head) => head,
    };
    let body_len = match head.framing {
        Framing::Chunked => {
            return Parsed::Invalid(Response::error(
                411,
                "chunked bodies are not supported",
                "send Content-Length",
            ))
        }
        Framing::Length(n) => match usize::try_from(n) {
            Ok(n) if n <= MAX_BODY => n,
            _ => return Parsed::Invalid(too_large()),
        },
    };
    let Some(body) = buf.get(head.len..head.len + body_len) else {
        return Parsed::Incomplete;
    };
    let mut request = head.request;
    request.body = body.to_vec();
    Parsed::Complete(request)
}

fn too_large() -> Response {
    Response::error(
        413,
        "request body too large",
        &format!("at most {MAX_BODY} bytes"),
    )
}

/// A Content-Length value: decimal digits only (no sign, list or white space inside).
fn content_length(value: &str) -> Result<u64, Response> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        let detail = format!(
            "Content-Length `{}`: not a number of bytes",
            value.escape_debug()
        );
        return Err(Response::error(400, "bad request framing", &detail));
    }
    // Only digits: an error is a number too large for u64.
    value.parse::<u64>().map_err(|_| too_large())
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

    pub fn text(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            body,
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
        let mut out = length_head(self.status, self.content_type, self.body.len() as u64);
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
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
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

    #[test]
    fn decodes_percent_escapes_and_flags() {
        assert_eq!(
            percent_decode("docker.io%2Flibrary%2Fnginx:1").as_deref(),
            Some("docker.io/library/nginx:1")
        );
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        let Parsed::Complete(r) = parse(b"GET /x?follow&tail=3&start=0 HTTP/1.1\r\n\r\n") else {
            panic!()
        };
        assert!(r.flag("follow"));
        assert!(!r.flag("start"));
        assert!(!r.flag("missing"));
    }

    #[test]
    fn knows_when_a_client_waits_for_100_continue() {
        let head = b"PUT /v1/units/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert!(expects_continue(head));
        assert!(!expects_continue(
            b"PUT /v1/units/a HTTP/1.1\r\nExpect: 100-continue\r\n"
        ));
        assert!(!expects_continue(
            b"PUT /v1/units/a HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
        ));
    }

    #[test]
    fn chunks_frame_data() {
        let mut out = Vec::new();
        chunk(b"hello world\n", &mut out);
        chunk(b"", &mut out);
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"c\r\nhello world\n\r\n0\r\n\r\n");
    }

    /// Requests that look almost right: real methods and headers, odd paths, lengths and
    /// bodies, cut anywhere.
    fn near_request() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "get", "BREW"]);
        let path = "(/[a-z0-9%{}?&=._-]{0,12}){0,5}";
        let header = prop_oneof![
            "[0-9]{0,25}".prop_map(|n| format!("Content-Length: {n}")),
            Just("Content-Length: -1".to_string()),
            Just("Content-Length: 3, 4".to_string()),
            Just("Transfer-Encoding: chunked".to_string()),
            Just("Expect: 100-continue".to_string()),
            "[A-Za-z-]{1,10}: [ -~]{0,20}",
        ];
        (
            method,
            path,
            prop::collection::vec(header, 0..6),
            prop::collection::vec(any::<u8>(), 0..64),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(m, p, hs, body, cut)| {
                let mut req =
                    format!("{m} {p} HTTP/1.1\r\n{}\r\n\r\n", hs.join("\r\n")).into_bytes();
                req.extend_from_slice(&body);
                let keep = cut.index(req.len() + 1);
                req.truncate(keep);
                req
            })
    }

    #[test]
    fn ambiguous_framing_is_refused_at_once() {
        let status = |b: &str| match parse(b.as_bytes()) {
            Parsed::Invalid(r) => r.status,
            other => panic!("{b:?}: {other:?}"),
        };
        // Each head is complete and no body has come: answered now, not after a deadline.
        for head in [
            "PUT /v1/units/a HTTP/1.1\r\nContent-Length: 10\r\nContent-Length: 5\r\n\r\n",
            "PUT /v1/units/a HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
            "PUT /v1/units/a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT /v1/units/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "PUT /v1/units/a HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "PUT /v1/units/a HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "PUT /v1/units/a HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n",
            "PUT /v1/units/a HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            "PUT /v1/units/a HTTP/1.1\r\nContent-Length:\r\n\r\n",
            "PUT /v1/units/a HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
            "PUT /v1/units/a HTTP/1.1\r\nX-A: 1\r\n folded\r\nContent-Length: 5\r\n\r\n",
            "GET http://evil/v1/units HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET /v1/units HTTP/2.0\r\n\r\n",
            "GET /v1/\x00units HTTP/1.1\r\n\r\n",
            "GET /v1/units HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        ] {
            assert_eq!(status(head), 400, "{head:?}");
        }
        assert_eq!(
            status("PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            411
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
        // Leading zeros are still one number; a length of 0 is an empty body.
        let Parsed::Complete(r) = parse(b"PUT /a HTTP/1.1\r\nContent-Length: 003\r\n\r\nabc")
        else {
            panic!()
        };
        assert_eq!(r.body, b"abc");
    }

    /// Counts, per thread, the bytes a piece of code allocates at its peak (the parser must
    /// not allocate with sizes a client chooses).
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        pub struct Counting;

        thread_local! {
            static LIVE: Cell<isize> = const { Cell::new(0) };
            static PEAK: Cell<isize> = const { Cell::new(0) };
        }

        fn note(delta: isize) {
            let _ = LIVE.try_with(|live| {
                live.set(live.get() + delta);
                let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
            });
        }

        // SAFETY: every call goes to the system allocator unchanged; only counted.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size() as isize);
                // SAFETY: the caller's contract, passed on.
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                note(-(layout.size() as isize));
                // SAFETY: the caller's contract, passed on.
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                note(new_size as isize - layout.size() as isize);
                // SAFETY: the caller's contract, passed on.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        /// Peak bytes allocated (and not yet freed) on this thread while `f` ran.
        pub fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
            let base = LIVE.with(Cell::get);
            PEAK.with(|p| p.set(base));
            let out = f();
            let peak = PEAK.with(Cell::get) - base;
            (out, peak.max(0) as usize)
        }
    }

    #[global_allocator]
    static ALLOCATOR: counting::Counting = counting::Counting;

    /// Parses `req` and checks what a parse may do with any input: no panic, a body of its
    /// declared length, allocations bounded by the input (never by a length it claims).
    fn check_parse(req: &[u8]) -> Result<(), TestCaseError> {
        let _ = expects_continue(req);
        let (parsed, peak) = counting::peak_of(|| parse(req));
        prop_assert!(
            peak <= 3 * req.len() + 16 * 1024,
            "parsing {} bytes allocated {peak}",
            req.len()
        );
        if let Parsed::Complete(r) = parsed {
            let declared = r
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok());
            prop_assert_eq!(r.body.len(), declared.unwrap_or(0));
            prop_assert!(!r.path.contains('?'));
            prop_assert!(r.path.starts_with('/'));
        }
        Ok(())
    }

    /// Valid requests, then a few random edits: bytes flipped, inserted, removed, lines
    /// doubled, the whole cut anywhere.
    fn mutated_request() -> impl Strategy<Value = Vec<u8>> {
        let valid = prop::sample::select(vec![
            "GET /v1/units HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n".to_string(),
            "GET /v1/units/web/logs?tail=20&follow=1 HTTP/1.1\r\nHost: b\r\n\r\n".to_string(),
            format!(
                "PUT /v1/units/web?start=1 HTTP/1.1\r\nHost: b\r\nContent-Type: application/toml\r\nContent-Length: 38\r\n\r\n{}",
                "[container]\ncommand = [\"sleep\", \"1\"]\n"
            ),
            "POST /v1/images/pull HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 27\r\n\r\n{\"reference\": \"busybox:1\"}".to_string(),
        ]);
        let edit = (0u8..5, any::<prop::sample::Index>(), any::<u8>());
        (
            valid,
            prop::collection::vec(edit, 1..6),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(valid, edits, cut)| {
                let mut req = valid.into_bytes();
                for (kind, at, byte) in edits {
                    let i = at.index(req.len() + 1);
                    match kind {
                        0 if i < req.len() => req[i] ^= byte | 1,
                        1 => req.insert(i, byte),
                        2 if i < req.len() => {
                            req.remove(i);
                        }
                        3 => {
                            // Doubles the line around `i` (a repeated header).
                            let start = req[..i]
                                .iter()
                                .rposition(|&b| b == b'\n')
                                .map_or(0, |p| p + 1);
                            let end = req[i..]
                                .iter()
                                .position(|&b| b == b'\n')
                                .map_or(req.len(), |p| i + p + 1);
                            let line = req[start..end].to_vec();
                            req.splice(end..end, line);
                        }
                        _ => req.extend_from_slice(&[byte; 3]),
                    }
                }
                let keep = cut.index(req.len() + 1).max(req.len() / 2);
                req.truncate(keep);
                req
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn near_requests_never_panic_and_bodies_match_their_length(req in near_request()) {
            check_parse(&req)?;
        }

        #[test]
        fn mutated_requests_never_panic_nor_allocate_unboundedly(req in mutated_request()) {
            check_parse(&req)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            check_parse(&bytes)?;
        }
    }

    #[test]
    fn a_claimed_length_allocates_nothing_before_the_body_is_there() {
        let head = format!("PUT /a HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n");
        let (parsed, peak) = counting::peak_of(|| parse(head.as_bytes()));
        assert!(matches!(parsed, Parsed::Incomplete));
        assert!(peak < 16 * 1024, "{peak}");
        // The counter does see allocations.
        let (_, peak) = counting::peak_of(|| vec![1u8; 100_000]);
        assert!(peak >= 100_000, "{peak}");
    }
}
