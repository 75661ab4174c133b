//! Mutual TLS for remote administration: the server side of the API's TCP listener (a client
//! certificate from the configured CA is required) and the client side used by `berthctl
//! --host`. rustls with the ring provider; no async runtime: [`TlsStream`] is driven by the
//! event loop like any non-blocking socket.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection};

use crate::machine::{Pem, RemoteApi};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {source_name}: {error}")]
    Read {
        what: &'static str,
        source_name: String,
        error: io::Error,
    },
    #[error("{what} {source_name}: no PEM {kind} found")]
    Empty {
        what: &'static str,
        source_name: String,
        kind: &'static str,
    },
    #[error("{what} {source_name}: {error}")]
    Pem {
        what: &'static str,
        source_name: String,
        error: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Every certificate of a PEM bundle.
pub fn certificates(
    what: &'static str,
    pem: &Pem,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, pem)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            source_name: pem.describe(),
            error: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            source_name: pem.describe(),
            kind: "certificate",
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn private_key(what: &'static str, pem: &Pem) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(what, pem)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what,
            source_name: pem.describe(),
            kind: "private key",
        },
        other => TlsError::Pem {
            what,
            source_name: pem.describe(),
            error: other.to_string(),
        },
    })
}

/// A root store holding every certificate of `pem`.
pub fn roots(what: &'static str, pem: &Pem) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(what, pem)? {
        store.add(cert).map_err(|e| TlsError::Pem {
            what,
            source_name: pem.describe(),
            error: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

fn read(what: &'static str, pem: &Pem) -> Result<Vec<u8>, TlsError> {
    pem.read().map_err(|error| TlsError::Read {
        what,
        source_name: pem.describe(),
        error,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: our certificate, and only clients whose certificate chains to
/// `client_ca` (connections without one are refused during the handshake).
pub fn server_config(api: &RemoteApi) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = roots("client CA", &api.client_ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certificates("server certificate", &api.cert)?,
            private_key("server key", &api.key)?,
        )
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The client side: trust `ca` for the server, present `cert`/`key`.
pub fn client_config(ca: &Pem, cert: &Pem, key: &Pem) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots("CA", ca)?)
        .with_client_auth_cert(
            certificates("client certificate", cert)?,
            private_key("client key", key)?,
        )
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Plaintext rustls buffers per connection at most (responses wait for the socket instead).
const TLS_BUFFER: usize = 64 * 1024;

/// A server-side TLS connection over a non-blocking TCP socket. `read` and `write` behave like
/// a non-blocking socket's: `WouldBlock` when they cannot go on; the handshake happens inside
/// them as records arrive.
pub struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
}

impl TlsStream {
    pub fn new(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let mut tls = ServerConnection::new(config).map_err(io::Error::other)?;
        tls.set_buffer_limit(Some(TLS_BUFFER));
        Ok(TlsStream { tcp, tls })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Plaintext from the peer; `Ok(0)` at the end of the stream. A failed handshake (no or
    /// an untrusted client certificate) is an error, after the alert went out.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.tls.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Best effort: tell the peer why (the alert is queued by rustls).
                let _ = self.tls.write_tls(&mut self.tcp);
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, e));
            }
            self.send_pending()?;
        }
    }

    /// Takes plaintext to send; `WouldBlock` while rustls' buffer is full.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tls.writer().write(buf)?;
        self.send_pending()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Writes queued TLS records to the socket as far as it takes them.
    pub fn send_pending(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The handshake (client certificate included) is not complete yet.
    pub fn handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// TLS records wait for the socket.
    pub fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Sends close_notify (best effort).
    pub fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = self.send_pending();
    }
}
