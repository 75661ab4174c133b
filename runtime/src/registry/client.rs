//! A blocking OCI distribution client: manifests and blobs, with auth, mirrors and ranges.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ureq::http::Response;
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
use ureq::{Agent, Body};

use super::auth::{self, Challenge};
use super::config::RegistriesConfig;
use super::reference::{Reference, DEFAULT_REGISTRY};
use super::{Error, Result};
use crate::image::digest::Digest;
use crate::image::spec::media;

/// The registry API host behind `docker.io` references.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Largest manifest or token answer Berth reads (real ones are a few KiB).
const MAX_DOCUMENT: u64 = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A registry that sends nothing for this long is treated as gone (the pull can resume).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A manifest as the registry served it.
#[derive(Debug)]
pub struct ManifestResponse {
    pub body: Vec<u8>,
    /// `Content-Type`, without parameters.
    pub media_type: Option<String>,
    /// `Docker-Content-Digest`, when sent.
    pub digest: Option<String>,
}

/// A blob body, possibly starting at an offset (ranged request honoured).
pub struct BlobResponse {
    pub body: Box<dyn Read + Send>,
    /// Byte offset of the first byte of `body`: the requested offset, or 0 when the server
    /// ignored the range and sends the whole blob.
    pub offset: u64,
}

/// Where requests for one registry go: its mirrors first, then itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host[:port]` or `http://host[:port]`.
    pub base: String,
    /// `host[:port]`, the key for credentials and tokens.
    pub host: String,
}

/// The registry client. Cheap to share between the download threads of one pull.
pub struct Client {
    agent: Agent,
    config: RegistriesConfig,
    /// Why HTTPS cannot work (no CA bundle), reported on first HTTPS use.
    tls_problem: Option<Error>,
    /// `Authorization` values by endpoint host and scope.
    tokens: Mutex<HashMap<String, String>>,
}

impl Client {
    pub fn new(config: RegistriesConfig) -> Client {
        let (roots, tls_problem) = match load_ca_bundle(&config) {
            Ok(certs) => (RootCerts::new_with_certs(&certs), None),
            Err(e) => (RootCerts::new_with_certs(&[]), Some(e)),
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .user_agent("berth")
            .max_redirects(5)
            .build()
            .new_agent();
        Client {
            agent,
            config,
            tls_problem,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &RegistriesConfig {
        &self.config
    }

    /// The endpoints tried for `registry`, in order: configured mirrors, then the registry.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .config
            .mirrors
            .get(registry)
            .into_iter()
            .flatten()
            .map(|m| self.endpoint(m))
            .collect();
        let api_host = if registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API
        } else {
            registry
        };
        out.push(self.endpoint(api_host));
        out
    }

    fn endpoint(&self, spec: &str) -> Endpoint {
        let spec = spec.trim_end_matches('/');
        let (scheme, host) = if let Some(h) = spec.strip_prefix("https://") {
            ("https", h)
        } else if let Some(h) = spec.strip_prefix("http://") {
            ("http", h)
        } else if self.config.is_insecure(spec) {
            ("http", spec)
        } else {
            ("https", spec)
        };
        Endpoint {
            base: format!("{scheme}://{host}"),
            host: host.to_string(),
        }
    }

    /// Fetches the manifest `tag_or_digest` of `reference`'s repository.
    pub fn manifest(&self, reference: &Reference, tag_or_digest: &str) -> Result<ManifestResponse> {
        let (url, response) = self.get(
            reference,
            &format!("manifests/{tag_or_digest}"),
            &[("Accept", media::MANIFEST_ACCEPT.to_string())],
        )?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let media_type = header("content-type")
            .map(|t| t.split(';').next().unwrap_or_default().trim().to_string());
        let digest = header("docker-content-digest");
        let body = read_document(response, &url)?;
        Ok(ManifestResponse {
            body,
            media_type,
            digest,
        })
    }

    /// Starts downloading blob `digest`, from byte `offset` if the server supports ranges.
    pub fn blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobResponse> {
        let headers: Vec<(&str, String)> = if offset > 0 {
            vec![("Range", format!("bytes={offset}-"))]
        } else {
            Vec::new()
        };
        let (url, response) = self.get(reference, &format!("blobs/{digest}"), &headers)?;
        let start = if response.status().as_u16() == 206 {
            let range = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            match parse_content_range_start(range) {
                Some(s) if s == offset => s,
                _ => {
                    return Err(Error::BadResponse {
                        url,
                        reason: format!("asked for bytes {offset}-, got Content-Range {range:?}"),
                    })
                }
            }
        } else {
            0
        };
        Ok(BlobResponse {
            body: Box::new(response.into_body().into_reader()),
            offset: start,
        })
    }

    /// GET `/v2/<repository>/<path>` on the first endpoint that answers it.
    fn get(
        &self,
        reference: &Reference,
        path: &str,
        headers: &[(&str, String)],
    ) -> Result<(String, Response<Body>)> {
        let endpoints = self.endpoints(&reference.registry);
        let last = endpoints.len() - 1;
        let mut first_error = None;
        for (i, endpoint) in endpoints.iter().enumerate() {
            let url = format!("{}/v2/{}/{}", endpoint.base, reference.repository, path);
            match self.get_at(endpoint, &reference.repository, &url, headers) {
                Ok(response) => return Ok((url, response)),
                Err(e) if i < last => {
                    log::warn!("mirror {}: {e}; trying the next endpoint", endpoint.host);
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_error.unwrap_or(Error::NotFound {
            url: reference.to_string(),
        }))
    }

    fn get_at(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<Body>> {
        if endpoint.base.starts_with("https://") {
            if let Some(problem) = &self.tls_problem {
                return Err(Error::CaBundle {
                    path: self.config.ca_bundle().to_path_buf(),
                    reason: format!("needed for {url}: {problem}"),
                });
            }
        }
        let scope = format!("repository:{repository}:pull");
        let key = format!("{}|{scope}", endpoint.host);
        let cached = self.tokens.lock().ok().and_then(|t| t.get(&key).cloned());
        let mut response = self.send(url, headers, cached.as_deref())?;
        if response.status().as_u16() == 401 {
            let header = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let authorization = self.authorize(endpoint, url, &header, &scope)?;
            response = self.send(url, headers, Some(&authorization))?;
            if response.status().as_u16() == 401 {
                return Err(Error::Unauthorized {
                    url: url.to_string(),
                    reason: "credentials or token refused".into(),
                });
            }
            if let Ok(mut tokens) = self.tokens.lock() {
                tokens.insert(key, authorization);
            }
        }
        match response.status().as_u16() {
            200 | 206 => Ok(response),
            404 => Err(Error::NotFound {
                url: url.to_string(),
            }),
            status => Err(Error::Status {
                url: url.to_string(),
                status,
                message: error_message(response),
            }),
        }
    }

    fn send(
        &self,
        url: &str,
        headers: &[(&str, String)],
        authorization: Option<&str>,
    ) -> Result<Response<Body>> {
        let mut request = self.agent.get(url);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(a) = authorization {
            request = request.header("Authorization", a);
        }
        request.call().map_err(|e| Error::Transport {
            url: url.to_string(),
            source: Box::new(e),
        })
    }

    /// Answers a `401` challenge: the `Authorization` value to retry with.
    fn authorize(
        &self,
        endpoint: &Endpoint,
        url: &str,
        header: &str,
        scope: &str,
    ) -> Result<String> {
        let bad = || Error::BadChallenge {
            url: url.to_string(),
            header: header.to_string(),
        };
        let challenge = Challenge::parse(header).ok_or_else(bad)?;
        let credentials = self.config.auth.get(&endpoint.host);
        match challenge.scheme.as_str() {
            "basic" => credentials
                .map(auth::basic_header)
                .ok_or_else(|| Error::Unauthorized {
                    url: url.to_string(),
                    reason: format!(
                        "registry asks for basic auth; no credentials for {} in [registries.auth]",
                        endpoint.host
                    ),
                }),
            "bearer" => {
                let token_url = auth::token_url(&challenge, scope).ok_or_else(bad)?;
                let basic = credentials.map(auth::basic_header);
                let response = self.send(&token_url, &[], basic.as_deref())?;
                let status = response.status().as_u16();
                if status != 200 {
                    return Err(Error::Token {
                        url: token_url,
                        reason: format!("HTTP {status}: {}", error_message(response)),
                    });
                }
                let body = read_document(response, &token_url)?;
                let token = auth::token_from_json(&body).ok_or_else(|| Error::Token {
                    url: token_url.clone(),
                    reason: "answer has no token".into(),
                })?;
                Ok(format!("Bearer {token}"))
            }
            other => Err(Error::Unauthorized {
                url: url.to_string(),
                reason: format!("unsupported authentication scheme {other:?}"),
            }),
        }
    }
}

fn read_document(response: Response<Body>, url: &str) -> Result<Vec<u8>> {
    response
        .into_body()
        .with_config()
        .limit(MAX_DOCUMENT)
        .read_to_vec()
        .map_err(|e| Error::Transport {
            url: url.to_string(),
            source: Box::new(e),
        })
}

/// The registry's error text (OCI error JSON or the first bytes of the body).
fn error_message(response: Response<Body>) -> String {
    let Ok(body) = response
        .into_body()
        .with_config()
        .limit(64 << 10)
        .read_to_vec()
    else {
        return String::new();
    };
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body) {
        return e
            .errors
            .iter()
            .map(|i| {
                format!(
                    "{} {}",
                    i.code.as_deref().unwrap_or_default(),
                    i.message.as_deref().unwrap_or_default()
                )
                .trim()
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    String::from_utf8_lossy(&body[..body.len().min(200)])
        .trim()
        .to_string()
}

/// `bytes START-END/TOTAL` → START.
fn parse_content_range_start(header: &str) -> Option<u64> {
    let rest = header.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

fn load_ca_bundle(config: &RegistriesConfig) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let path = config.ca_bundle();
    let err = |reason: String| Error::CaBundle {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(err(e.to_string())),
        }
    }
    if certs.is_empty() {
        return Err(err("no certificates in the bundle".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_put_mirrors_first_and_map_docker_hub() {
        let mut config = RegistriesConfig {
            insecure: vec!["10.1.1.1:5000".into(), "127.0.0.1:5000".into()],
            ..Default::default()
        };
        config.mirrors.insert(
            "docker.io".into(),
            vec!["https://m.example/".into(), "10.1.1.1:5000".into()],
        );
        let c = Client::new(config);
        let eps = c.endpoints("docker.io");
        let bases: Vec<&str> = eps.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(
            bases,
            vec![
                "https://m.example",
                "http://10.1.1.1:5000",
                "https://registry-1.docker.io"
            ]
        );
        assert_eq!(
            c.endpoints("127.0.0.1:5000")[0].base,
            "http://127.0.0.1:5000"
        );
        assert_eq!(c.endpoints("ghcr.io")[0].base, "https://ghcr.io");
    }

    #[test]
    fn parses_content_range() {
        assert_eq!(parse_content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(parse_content_range_start("bytes */200"), None);
        assert_eq!(parse_content_range_start("items 1-2/3"), None);
    }
}
