//! Pulling from registries over the OCI distribution API.
//!
//! - [`reference`]: image references, normalised like Docker's.
//! - [`config`]: the `[registries]` section of the machine config (credentials, insecure
//!   registries, mirrors, CA bundle).
//! - [`auth`]: `WWW-Authenticate` challenges, anonymous and basic bearer tokens.
//! - [`client`]: a blocking HTTPS client (ureq + rustls, system CA bundle) that fetches
//!   manifests and blobs, with ranged requests for resuming downloads.
//!
//! The pull itself (platform selection, verification, concurrent layer downloads, unpacking
//! into the store) is [`crate::pull`].

pub mod auth;
pub mod client;
pub mod config;
pub mod reference;

pub use client::Client;
pub use config::RegistriesConfig;
pub use reference::Reference;

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url}: HTTP {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: not found (HTTP 404)")]
    NotFound { url: String },
    #[error("{url}: unauthorized: {reason}")]
    Unauthorized { url: String, reason: String },
    #[error("{url}: unusable WWW-Authenticate challenge {header:?}")]
    BadChallenge { url: String, header: String },
    #[error("token server {url}: {reason}")]
    Token { url: String, reason: String },
    #[error("{url}: bad response: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("{url}: the pull took longer than {} (registries.pull_timeout)", seconds(*.timeout))]
    Deadline { url: String, timeout: Duration },
    #[error(
        "{url}: transfer too slow: {bytes} bytes in {}, below the minimum of {min_rate} bytes/s (registries.min_rate)",
        seconds(*.elapsed)
    )]
    TooSlow {
        url: String,
        bytes: u64,
        elapsed: Duration,
        min_rate: u64,
    },
    #[error("{url}: answer larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: redirect refused: {reason}")]
    Redirect { url: String, reason: String },
    #[error("CA bundle {}: {reason}", path.display())]
    CaBundle { path: PathBuf, reason: String },
    #[error("{}: {what}: {source}", path.display())]
    File {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("machine config {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `1.5 s`, for messages.
fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
