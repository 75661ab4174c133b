//! A blocking OCI distribution client: manifests and blobs, with auth, mirrors and ranges.
//!
//! Nothing a registry sends is trusted to end: every request of a pull shares one
//! [`Deadline`], every body is read through [`Transfer`] (the deadline, a minimum rate over a
//! window, a size cap for documents), and redirects never leave HTTPS once on it.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::http::Response;
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
use ureq::typestate::WithBody;
use ureq::{Agent, Body, RequestBuilder};

use super::auth::{self, Challenge};
use super::config::RegistriesConfig;
use super::reference::{Reference, DEFAULT_REGISTRY};
use super::{Error, Result};
use crate::digest::Digest;
use crate::spec::media;

/// The registry API host behind `docker.io` references.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Largest manifest or token answer Berth reads (real ones are a few KiB).
const MAX_DOCUMENT: u64 = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A registry that sends nothing for this long is treated as gone (the pull can resume).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the head of an answer (the body has the minimum rate).
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Most of an error answer read for its message.
const MAX_ERROR_BODY: u64 = 64 << 10;

/// When a whole pull must be over: shared by every request and body of the pull.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            // A timeout too far to represent is no deadline at all; a week is the config's cap.
            at: now
                .checked_add(timeout)
                .unwrap_or(now + Duration::from_secs(7 * 24 * 3600)),
            timeout,
        }
    }

    /// What is left, or `None` once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        let left = self.at.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    fn error(&self, url: &str) -> Error {
        Error::Deadline {
            url: url.to_string(),
            timeout: self.timeout,
        }
    }
}

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
    /// Read errors that come from Berth's limits carry a [`Error`] inside the `io::Error`
    /// ([`Error::from_io`] gets it back).
    pub body: Box<dyn Read + Send>,
    /// Byte offset of the first byte of `body`: the requested offset, or 0 when the server
    /// ignored the range and sends the whole blob.
    pub offset: u64,
}

/// The HTTP methods Berth uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
}

/// A request body.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// Streamed from the file (opened again if the request is repeated after a challenge).
    File(&'a Path),
}

/// One request to a registry.
struct Call<'a> {
    method: Method,
    url: &'a str,
    /// The token scope (`repository:NAME:pull`).
    scope: String,
    headers: &'a [(&'a str, String)],
    payload: Payload<'a>,
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
    /// Bytes per second every body must keep up over a window.
    min_rate: Option<(u64, Duration)>,
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
            min_rate: config.min_rate(),
            config,
            tls_problem,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A deadline for one pull, from `pull_timeout` in the config.
    pub fn pull_deadline(&self) -> Deadline {
        Deadline::after(self.config.pull_timeout())
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
    pub fn manifest(
        &self,
        reference: &Reference,
        tag_or_digest: &str,
        deadline: &Deadline,
    ) -> Result<ManifestResponse> {
        let (url, response) = self.get(
            reference,
            &format!("manifests/{tag_or_digest}"),
            &[("Accept", media::MANIFEST_ACCEPT.to_string())],
            deadline,
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
        let body = self.read_document(response, &url, deadline)?;
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
        deadline: &Deadline,
    ) -> Result<BlobResponse> {
        let headers: Vec<(&str, String)> = if offset > 0 {
            vec![("Range", format!("bytes={offset}-"))]
        } else {
            Vec::new()
        };
        let (url, response) =
            self.get(reference, &format!("blobs/{digest}"), &headers, deadline)?;
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
            body: Box::new(self.transfer(response, &url, deadline)),
            offset: start,
        })
    }

    /// GET of a plain URL (no registry authentication), under the same TLS settings and
    /// deadline as registry requests. Any status is returned; the caller reads the body
    /// through [`Client::body`].
    pub fn get_url(
        &self,
        url: &str,
        headers: &[(&str, String)],
        deadline: &Deadline,
    ) -> Result<Response<Body>> {
        if url.starts_with("https://") {
            if let Some(problem) = &self.tls_problem {
                return Err(Error::CaBundle {
                    path: self.config.ca_bundle().to_path_buf(),
                    reason: format!("needed for {url}: {problem}"),
                });
            }
        }
        self.send_get(url, headers, None, deadline)
    }

    /// `response`'s body under the deadline and the minimum rate.
    pub fn body(&self, response: Response<Body>, url: &str, deadline: &Deadline) -> Transfer {
        self.transfer(response, url, deadline)
    }

    /// The endpoint pushes go to: the registry itself (mirrors are for pulls).
    fn push_endpoint(&self, registry: &str) -> Endpoint {
        let api_host = if registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API
        } else {
            registry
        };
        self.endpoint(api_host)
    }

    /// A push request to `reference`'s registry; `ok` are the statuses that mean success.
    fn push_call(
        &self,
        reference: &Reference,
        call: &Call<'_>,
        ok: &[u16],
        deadline: &Deadline,
    ) -> Result<Response<Body>> {
        let endpoint = self.push_endpoint(&reference.registry);
        let response = self.call_at(&endpoint, call, deadline)?;
        let status = response.status().as_u16();
        if ok.contains(&status) {
            Ok(response)
        } else {
            Err(self.status_error(response, call.url, deadline, status))
        }
    }

    /// Whether `reference`'s repository has blob `digest` already.
    pub fn has_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        deadline: &Deadline,
    ) -> Result<bool> {
        let base = self.push_endpoint(&reference.registry).base;
        let url = format!("{base}/v2/{}/blobs/{digest}", reference.repository);
        match self.push_call(
            reference,
            &Call {
                method: Method::Head,
                url: &url,
                scope: push_scope(reference),
                headers: &[],
                payload: Payload::Empty,
            },
            &[200],
            deadline,
        ) {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads blob `digest` into `reference`'s repository: a POST that opens the upload,
    /// then one PUT that streams `payload` and closes it with the digest (the registry checks
    /// it).
    pub fn upload_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        payload: Payload<'_>,
        deadline: &Deadline,
    ) -> Result<()> {
        let base = self.push_endpoint(&reference.registry).base;
        let start = format!("{base}/v2/{}/blobs/uploads/", reference.repository);
        let response = self.push_call(
            reference,
            &Call {
                method: Method::Post,
                url: &start,
                scope: push_scope(reference),
                headers: &[],
                payload: Payload::Empty,
            },
            &[202],
            deadline,
        )?;
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::BadResponse {
                url: start.clone(),
                reason: "upload started without a Location".into(),
            })?;
        let mut url = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            return Err(Error::BadResponse {
                url: start,
                reason: format!("unusable upload Location {location:?}"),
            });
        };
        if base.starts_with("https://") && !url.starts_with("https://") {
            return Err(Error::Redirect {
                url: start,
                reason: format!("upload Location {location:?} leaves HTTPS"),
            });
        }
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={digest}"));
        self.push_call(
            reference,
            &Call {
                method: Method::Put,
                url: &url,
                scope: push_scope(reference),
                headers: &[("Content-Type", "application/octet-stream".to_string())],
                payload,
            },
            &[201],
            deadline,
        )?;
        Ok(())
    }

    /// Stores `body` as manifest `tag_or_digest` of `reference`'s repository; returns the
    /// digest the registry reports.
    pub fn put_manifest(
        &self,
        reference: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        body: &[u8],
        deadline: &Deadline,
    ) -> Result<Option<String>> {
        let base = self.push_endpoint(&reference.registry).base;
        let url = format!(
            "{base}/v2/{}/manifests/{tag_or_digest}",
            reference.repository
        );
        let response = self.push_call(
            reference,
            &Call {
                method: Method::Put,
                url: &url,
                scope: push_scope(reference),
                headers: &[("Content-Type", media_type.to_string())],
                payload: Payload::Bytes(body),
            },
            &[200, 201],
            deadline,
        )?;
        Ok(response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// GET `/v2/<repository>/<path>` on the first endpoint that answers it.
    fn get(
        &self,
        reference: &Reference,
        path: &str,
        headers: &[(&str, String)],
        deadline: &Deadline,
    ) -> Result<(String, Response<Body>)> {
        let endpoints = self.endpoints(&reference.registry);
        let last = endpoints.len() - 1;
        let mut first_error = None;
        for (i, endpoint) in endpoints.iter().enumerate() {
            let url = format!("{}/v2/{}/{}", endpoint.base, reference.repository, path);
            match self.get_at(endpoint, &reference.repository, &url, headers, deadline) {
                Ok(response) => return Ok((url, response)),
                // The deadline is the whole pull's: no other endpoint has time left.
                Err(e @ Error::Deadline { .. }) => return Err(e),
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
        deadline: &Deadline,
    ) -> Result<Response<Body>> {
        let call = Call {
            method: Method::Get,
            url,
            scope: format!("repository:{repository}:pull"),
            headers,
            payload: Payload::Empty,
        };
        let response = self.call_at(endpoint, &call, deadline)?;
        match response.status().as_u16() {
            200 | 206 => Ok(response),
            status => Err(self.status_error(response, url, deadline, status)),
        }
    }

    /// Sends `call` to `endpoint`, answering one authentication challenge (basic credentials
    /// or a bearer token for the call's scope). Any status is returned but a second `401`.
    fn call_at(
        &self,
        endpoint: &Endpoint,
        call: &Call<'_>,
        deadline: &Deadline,
    ) -> Result<Response<Body>> {
        let url = call.url;
        if endpoint.base.starts_with("https://") {
            if let Some(problem) = &self.tls_problem {
                return Err(Error::CaBundle {
                    path: self.config.ca_bundle().to_path_buf(),
                    reason: format!("needed for {url}: {problem}"),
                });
            }
        }
        // Credentials and tokens go only to the endpoint they are for (an upload location
        // may be elsewhere, e.g. object storage).
        let own = url == endpoint.base
            || url
                .strip_prefix(endpoint.base.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        let key = format!("{}|{}", endpoint.host, call.scope);
        let cached = if own {
            self.tokens.lock().ok().and_then(|t| t.get(&key).cloned())
        } else {
            None
        };
        let mut response = self.send(call, cached.as_deref(), deadline)?;
        if response.status().as_u16() == 401 && own {
            let header = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let authorization = self.authorize(endpoint, url, &header, &call.scope, deadline)?;
            response = self.send(call, Some(&authorization), deadline)?;
            if response.status().as_u16() != 401 {
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(key, authorization);
                }
            }
        }
        if response.status().as_u16() == 401 {
            return Err(Error::Unauthorized {
                url: url.to_string(),
                reason: "credentials or token refused".into(),
            });
        }
        Ok(response)
    }

    /// The error for an answer with an unexpected `status`.
    fn status_error(
        &self,
        response: Response<Body>,
        url: &str,
        deadline: &Deadline,
        status: u16,
    ) -> Error {
        match status {
            404 => Error::NotFound {
                url: url.to_string(),
            },
            status => Error::Status {
                url: url.to_string(),
                status,
                message: self.error_message(response, url, deadline),
            },
        }
    }

    /// A GET without registry authentication (token servers, plain URLs).
    fn send_get(
        &self,
        url: &str,
        headers: &[(&str, String)],
        authorization: Option<&str>,
        deadline: &Deadline,
    ) -> Result<Response<Body>> {
        let call = Call {
            method: Method::Get,
            url,
            scope: String::new(),
            headers,
            payload: Payload::Empty,
        };
        self.send(&call, authorization, deadline)
    }

    fn send(
        &self,
        call: &Call<'_>,
        authorization: Option<&str>,
        deadline: &Deadline,
    ) -> Result<Response<Body>> {
        let url = call.url;
        let remaining = deadline.remaining().ok_or_else(|| deadline.error(url))?;
        // A read that waits a whole rate window has seen less than any positive rate.
        let per_read = match self.min_rate {
            Some((_, window)) => window.min(READ_TIMEOUT),
            None => READ_TIMEOUT,
        };
        let headers = call
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .chain(authorization.map(|a| ("Authorization", a)));
        // Every request: bounded by what is left of the deadline (the body included: a read
        // blocked on a silent server returns when the deadline comes), and once on HTTPS a
        // redirect cannot take it to plain HTTP.
        macro_rules! prepare {
            ($builder:expr) => {{
                let mut request = $builder
                    .config()
                    .timeout_global(Some(remaining))
                    .timeout_per_read(Some(per_read))
                    .timeout_recv_response(Some(HEAD_TIMEOUT))
                    .https_only(url.starts_with("https://"))
                    .build();
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                request
            }};
        }
        let result = match (call.method, &call.payload) {
            (Method::Get, _) => prepare!(self.agent.get(url)).call(),
            (Method::Head, _) => prepare!(self.agent.head(url)).call(),
            (Method::Post, payload) => send_payload(prepare!(self.agent.post(url)), payload, url)?,
            (Method::Put, payload) => send_payload(prepare!(self.agent.put(url)), payload, url)?,
        };
        result.map_err(|e| match e {
            ureq::Error::Timeout(ureq::Timeout::Global) => deadline.error(url),
            ureq::Error::RequireHttpsOnly(to) => Error::Redirect {
                url: url.to_string(),
                reason: format!("from HTTPS to {to}"),
            },
            e => Error::Transport {
                url: url.to_string(),
                source: Box::new(e),
            },
        })
    }

    /// `response`'s body, read under the pull's limits.
    fn transfer(&self, response: Response<Body>, url: &str, deadline: &Deadline) -> Transfer {
        Transfer::new(
            Box::new(response.into_body().into_reader()),
            url,
            *deadline,
            self.min_rate,
        )
    }

    /// A manifest or token answer: small, so read whole, up to [`MAX_DOCUMENT`].
    fn read_document(
        &self,
        response: Response<Body>,
        url: &str,
        deadline: &Deadline,
    ) -> Result<Vec<u8>> {
        read_capped(self.transfer(response, url, deadline), MAX_DOCUMENT, url)
    }

    /// The registry's error text (OCI error JSON or the first bytes of the body).
    fn error_message(&self, response: Response<Body>, url: &str, deadline: &Deadline) -> String {
        match read_capped(self.transfer(response, url, deadline), MAX_ERROR_BODY, url) {
            Ok(body) => error_text(&body),
            Err(_) => String::new(),
        }
    }

    /// Answers a `401` challenge: the `Authorization` value to retry with.
    fn authorize(
        &self,
        endpoint: &Endpoint,
        url: &str,
        header: &str,
        scope: &str,
        deadline: &Deadline,
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
                // Credentials (or a token) fetched over plain HTTP for an HTTPS registry
                // would be readable by anyone on the path.
                if endpoint.base.starts_with("https://") && !token_url.starts_with("https://") {
                    return Err(Error::Token {
                        url: token_url,
                        reason: format!(
                            "token realm is not HTTPS for HTTPS registry {}",
                            endpoint.host
                        ),
                    });
                }
                let basic = credentials.map(auth::basic_header);
                let response = self.send_get(&token_url, &[], basic.as_deref(), deadline)?;
                let status = response.status().as_u16();
                if status != 200 {
                    return Err(Error::Token {
                        reason: format!(
                            "HTTP {status}: {}",
                            self.error_message(response, &token_url, deadline)
                        ),
                        url: token_url,
                    });
                }
                let body = self.read_document(response, &token_url, deadline)?;
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

/// Sends `request` with `payload` as its body.
fn send_payload(
    request: RequestBuilder<WithBody>,
    payload: &Payload<'_>,
    url: &str,
) -> Result<std::result::Result<Response<Body>, ureq::Error>> {
    Ok(match payload {
        Payload::Empty => request.send_empty(),
        Payload::Bytes(data) => request.send(*data),
        Payload::File(path) => {
            let file = std::fs::File::open(path).map_err(|source| Error::File {
                path: path.to_path_buf(),
                what: format!("uploading to {url}"),
                source,
            })?;
            // A File body is sent with its length (Content-Length), read in chunks.
            request.send(file)
        }
    })
}

/// The token scope of a push to `reference`'s repository.
fn push_scope(reference: &Reference) -> String {
    format!("repository:{}:pull,push", reference.repository)
}

/// Reads all of `body`, refusing more than `limit` bytes.
fn read_capped(body: impl Read, limit: u64, url: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    body.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::from_io(e, url))?;
    if data.len() as u64 > limit {
        return Err(Error::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    Ok(data)
}

/// An answer's body under the limits of the pull: past the deadline, or slower than the
/// minimum rate over a whole window, reading fails with the [`Error`] that says so.
pub struct Transfer {
    inner: Box<dyn Read + Send>,
    url: String,
    deadline: Deadline,
    min_rate: Option<(u64, Duration)>,
    window_start: Instant,
    window_bytes: u64,
}

impl Transfer {
    pub fn new(
        inner: Box<dyn Read + Send>,
        url: &str,
        deadline: Deadline,
        min_rate: Option<(u64, Duration)>,
    ) -> Transfer {
        Transfer {
            inner,
            url: url.to_string(),
            deadline,
            min_rate,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    fn too_slow(&self, min_rate: u64) -> io::Error {
        io::Error::other(Error::TooSlow {
            url: self.url.clone(),
            bytes: self.window_bytes,
            elapsed: self.window_start.elapsed(),
            min_rate,
        })
    }

    /// Berth's reading of an error of the underlying reader.
    fn classify(&self, e: io::Error) -> io::Error {
        let timeout = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .and_then(|u| match u {
                ureq::Error::Timeout(t) => Some(*t),
                _ => None,
            });
        match (timeout, self.min_rate) {
            (Some(ureq::Timeout::Global), _) => io::Error::other(self.deadline.error(&self.url)),
            _ if self.deadline.remaining().is_none() => {
                io::Error::other(self.deadline.error(&self.url))
            }
            (Some(ureq::Timeout::PerRead | ureq::Timeout::RecvBody), Some((rate, _))) => {
                self.too_slow(rate)
            }
            _ => e,
        }
    }
}

impl Read for Transfer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.deadline.remaining().is_none() {
            return Err(io::Error::other(self.deadline.error(&self.url)));
        }
        let n = self.inner.read(buf).map_err(|e| self.classify(e))?;
        self.window_bytes += n as u64;
        if let Some((rate, window)) = self.min_rate {
            let elapsed = self.window_start.elapsed();
            if n > 0 && elapsed >= window {
                // Whole-second rounding never asks for more than the rate over the window.
                let needed = rate.saturating_mul(elapsed.as_millis() as u64) / 1000;
                if self.window_bytes < needed {
                    return Err(self.too_slow(rate));
                }
                self.window_start = Instant::now();
                self.window_bytes = 0;
            }
        }
        Ok(n)
    }
}

impl Error {
    /// The registry error inside an `io::Error` from a [`Transfer`], or a transport error.
    pub fn from_io(e: io::Error, url: &str) -> Error {
        let reason = format!("reading body: {e}");
        match e.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(error)) => *error,
            _ => Error::BadResponse {
                url: url.to_string(),
                reason,
            },
        }
    }
}

/// An error answer's text (OCI error JSON or its first bytes).
fn error_text(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
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
