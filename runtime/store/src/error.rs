//! The image module's error type.

use std::io;
use std::path::PathBuf;

use crate::digest::{Digest, DigestError};
use crate::registry;
use crate::registry::reference::ReferenceError;
use crate::unpack::UnpackError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: malformed JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: unknown media type {media_type:?}")]
    UnknownMediaType { what: String, media_type: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("image {0} is not in the store")]
    NotFound(String),
    #[error("{reference}: no image for {wanted}; the index offers: {available}")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("image {reference} is in use by container(s): {containers}")]
    InUse {
        reference: String,
        containers: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, op, source }
    }

    pub(crate) fn invalid(what: impl std::fmt::Display, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.to_string(),
            reason: reason.into(),
        }
    }
}
