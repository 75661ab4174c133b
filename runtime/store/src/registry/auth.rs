//! Registry authentication: the `WWW-Authenticate` challenge and the credentials it asks for.
//!
//! Docker Hub, GHCR and most registries answer an anonymous request with `401` and
//! `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`; the client then asks the realm
//! for a token (anonymously, or with basic credentials from the machine config) and retries
//! with `Authorization: Bearer <token>`. A `Basic` challenge is answered directly with the
//! configured credentials.

use std::collections::BTreeMap;

use super::config::Credentials;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: `bearer` or `basic` (others are reported as unsupported).
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// Parses `Scheme k="v", k2=v2`. Quoted values may contain commas and `\"` escapes.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return None;
        }
        let mut params = BTreeMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
                .collect::<String>()
                .trim()
                .to_ascii_lowercase();
            if chars.next() != Some('=') || key.is_empty() {
                return None;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => value.push(chars.next()?),
                        c => value.push(c),
                    }
                }
            } else {
                value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                    .collect::<String>()
                    .trim()
                    .to_string();
            }
            params.insert(key, value);
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }
}

/// `Authorization: Basic …` for `credentials`.
pub fn basic_header(credentials: &Credentials) -> String {
    let raw = format!("{}:{}", credentials.username, credentials.password);
    format!("Basic {}", base64(raw.as_bytes()))
}

/// The token endpoint URL for a bearer challenge and the scope the client needs.
pub fn token_url(challenge: &Challenge, scope: &str) -> Option<String> {
    let realm = challenge.params.get("realm")?;
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        return None;
    }
    let mut url = realm.clone();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    if let Some(service) = challenge.params.get("service") {
        url.push(sep);
        url.push_str("service=");
        url.push_str(&percent_encode(service));
        sep = '&';
    }
    // The registry's own scope wins: it may ask for more than the client would guess.
    let scope = challenge.params.get("scope").map_or(scope, String::as_str);
    url.push(sep);
    url.push_str("scope=");
    url.push_str(&percent_encode(scope));
    Some(url)
}

/// The token from a token server's JSON answer (`token`, or OAuth2's `access_token`).
pub fn token_from_json(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: TokenAnswer = serde_json::from_slice(body).ok()?;
    answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["scope"], "repository:library/nginx:pull");
        let url = token_url(&c, "ignored").unwrap();
        assert_eq!(
            url,
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository:library/nginx:pull"
        );
    }

    #[test]
    fn parses_quoted_commas_escapes_and_basic() {
        let c =
            Challenge::parse(r#"Bearer realm="http://h/t?a=1",scope="a,b", x=plain , y="q\"q""#)
                .unwrap();
        assert_eq!(c.params["scope"], "a,b");
        assert_eq!(c.params["x"], "plain");
        assert_eq!(c.params["y"], "q\"q");
        assert_eq!(token_url(&c, "s").unwrap(), "http://h/t?a=1&scope=a%2Cb");
        let b = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(b.scheme, "basic");
    }

    #[test]
    fn rejects_garbage_challenges() {
        assert!(Challenge::parse("").is_none());
        assert!(Challenge::parse(r#"Bearer realm="unterminated"#).is_none());
        assert!(Challenge::parse("Bearer =x").is_none());
        let no_realm = Challenge::parse(r#"Bearer service="x""#).unwrap();
        assert!(token_url(&no_realm, "s").is_none());
        let file_realm = Challenge::parse(r#"Bearer realm="file:///etc/passwd""#).unwrap();
        assert!(token_url(&file_realm, "s").is_none());
    }

    #[test]
    fn encodes_basic_credentials() {
        let c = Credentials {
            username: "Aladdin".into(),
            password: "open sesame".into(),
        };
        assert_eq!(basic_header(&c), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn reads_token_answers() {
        assert_eq!(token_from_json(br#"{"token":"t1"}"#).as_deref(), Some("t1"));
        assert_eq!(
            token_from_json(br#"{"access_token":"t2"}"#).as_deref(),
            Some("t2")
        );
        assert_eq!(token_from_json(br#"{"token":""}"#), None);
        assert_eq!(token_from_json(b"<html>"), None);
    }
}
