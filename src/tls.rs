//! TLS the way Milvus offers it (`common.security.tlsMode`): 0 plaintext, 1 server TLS
//! (TLS 1.2 or 1.3), 2 mutual TLS (TLS 1.3 only, a client certificate verified against
//! `tls.caPemPath`), with certificates from `tls.serverPemPath` / `tls.serverKeyPath`.
//! rustls with the ring provider, chosen explicitly (never the process default).
//!
//! Certificates are replaced without dropping connections: every accepted connection takes
//! the configuration current at its handshake, and [`ServerTls::keep_reloading`] reloads the files on
//! SIGHUP and when their contents change. A file that does not load leaves the old
//! configuration serving (and is logged), so a half-written rotation cannot take a replica down.
//!
//! [`ServerTls::handshake`] runs one server handshake; `transport`'s accept loop calls it for
//! every admitted connection, under the connection caps and the handshake deadline.
//!
//! [`ClientTls`] is the client side: the admin CLI, `credstore bench` and the proxy tier's
//! connection to an `https://` upstream.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// A server-side TLS connection, as [`ServerTls::handshake`] completes it.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// How often [`ServerTls::keep_reloading`] looks at the certificate files.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Milvus's `common.security.tlsMode` when it is not 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// 1: the server proves itself; any client may connect (TLS 1.2 or 1.3).
    Server,
    /// 2: both sides prove themselves; the client's certificate must chain to the CA in
    /// `ca` (`tls.caPemPath`; TLS 1.3, as Milvus requires).
    Mutual { ca: PathBuf },
}

/// Where the server's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    pub mode: TlsMode,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("config key {key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("config key {key}: {path}: {reason}")]
    Invalid {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the TLS configuration was refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS connection to {host} failed: {source}")]
    Connect {
        host: String,
        #[source]
        source: io::Error,
    },
    /// One side ended the handshake with `host`: [`ClientTls::probe`]'s fixed account of why.
    #[error("handshake with {host} failed: {reason}")]
    Refused { host: String, reason: String },
}

/// The server's TLS configuration, swappable while serving; cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<ServerFiles>,
    current: Arc<RwLock<Loaded>>,
}

struct Loaded {
    config: Arc<ServerConfig>,
    /// Of the files' contents, so an unchanged rotation is not a reload.
    digest: [u8; 32],
}

/// The three files' contents, read once per load.
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl Material {
    fn read(files: &ServerFiles) -> Result<Material, TlsError> {
        let ca = match &files.mode {
            TlsMode::Mutual { ca } => Some(read("tls.caPemPath", ca)?),
            TlsMode::Server => None,
        };
        Ok(Material {
            cert: read("tls.serverPemPath", &files.cert)?,
            key: read("tls.serverKeyPath", &files.key)?,
            ca,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [
            &self.cert[..],
            &self.key[..],
            self.ca.as_deref().unwrap_or(&[]),
        ] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no certificate".into()));
    }
    Ok(certs)
}

fn server_config(files: &ServerFiles, material: &Material) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let certs = certificates("tls.serverPemPath", &files.cert, &material.cert)?;
    // The key's text is never part of an error.
    let key = PrivateKeyDer::from_pem_slice(&material.key).map_err(|_| TlsError::Invalid {
        key: "tls.serverKeyPath",
        path: files.key.clone(),
        reason: "holds no readable PEM private key".into(),
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = match files.mode {
        TlsMode::Server => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsMode::Mutual { .. } => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match (&material.ca, &files.mode) {
        (Some(ca), TlsMode::Mutual { ca: ca_path }) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("tls.caPemPath", ca_path, ca)? {
                roots.add(cert)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid {
                    key: "tls.caPemPath",
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    // gRPC clients insist on HTTP/2 being negotiated.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl ServerTls {
    /// Loads the files; an error names the config key of the file at fault.
    pub fn load(files: ServerFiles) -> Result<ServerTls, TlsError> {
        let material = Material::read(&files)?;
        let loaded = Loaded {
            config: Arc::new(server_config(&files, &material)?),
            digest: material.digest(),
        };
        Ok(ServerTls {
            files: Arc::new(files),
            current: Arc::new(RwLock::new(loaded)),
        })
    }

    pub fn mode(&self) -> &TlsMode {
        &self.files.mode
    }

    /// Reads the files again; swaps the configuration in when their contents changed and
    /// load. Returns whether it swapped. Connections already open keep their session.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let material = Material::read(&self.files)?;
        let digest = material.digest();
        if self.read_current(|loaded| loaded.digest == digest) {
            return Ok(false);
        }
        let config = Arc::new(server_config(&self.files, &material)?);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = Loaded { config, digest };
        Ok(true)
    }

    fn read_current<T>(&self, f: impl FnOnce(&Loaded) -> T) -> T {
        f(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read_current(|loaded| loaded.config.clone()))
    }

    /// Reloads on every SIGHUP and whenever the files' contents change (checked every
    /// [`POLL_INTERVAL`]); runs until dropped.
    pub async fn keep_reloading(self) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(
                    "cannot listen for SIGHUP ({e}); certificate files are still watched"
                );
                None
            }
        };
        let mut every = tokio::time::interval(POLL_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signalled = tokio::select! {
                _ = every.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            match self.reload() {
                Ok(true) => tracing::info!("TLS certificates reloaded"),
                Ok(false) if signalled => tracing::info!("SIGHUP: TLS certificates unchanged"),
                Ok(false) => {}
                // Logged each time, so an operator sees a broken rotation until it is fixed.
                Err(e) => tracing::error!(
                    "TLS certificates not reloaded, still serving the previous ones: {e}"
                ),
            }
        }
    }

    /// The server's side of a TLS handshake on `stream`, with the configuration current now.
    /// Unbounded in time: the caller puts its deadline around it.
    pub async fn handshake(&self, stream: TcpStream) -> io::Result<ServerStream> {
        self.acceptor().accept(stream).await
    }
}

/// The client side of TLS: what the admin CLI and `credstore bench` take as flags and the
/// proxy tier as `credstore.upstream.tls.*`. Used for `https://` URIs only.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct ClientTls {
    /// PEM file of the CA that signed the server's certificate (or that certificate itself).
    #[arg(long = "ca-pem", global = true)]
    pub ca_pem_path: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the URI's host).
    #[arg(long, global = true)]
    pub server_name: Option<String>,
    /// This client's certificate (PEM), for servers that require one (tlsMode 2).
    #[arg(long = "client-pem", global = true, requires = "client_key_path")]
    pub client_pem_path: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long = "client-key", global = true, requires = "client_pem_path")]
    pub client_key_path: Option<PathBuf>,
}

impl ClientTls {
    /// Whether any setting is given (they mean nothing for an `http://` URI).
    pub fn is_set(&self) -> bool {
        *self != ClientTls::default()
    }

    /// tonic's client configuration from the files. A CA is required: credstore trusts no
    /// system roots.
    pub fn tonic_config(&self) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let ClientFiles { ca, identity } = self.files()?;
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("caPemPath", ca)?));
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(
                read("clientPemPath", cert)?,
                read("clientKeyPath", key)?,
            ));
        }
        Ok(config)
    }

    /// The CA file and the client identity's files, checked: a CA is required, and both
    /// halves of the identity or neither.
    fn files(&self) -> Result<ClientFiles<'_>, TlsError> {
        let Some(ca) = &self.ca_pem_path else {
            return Err(TlsError::Invalid {
                key: "caPemPath",
                path: PathBuf::new(),
                reason: "an https:// server needs the CA that signed its certificate".into(),
            });
        };
        let ca = ca.as_path();
        let identity = match (&self.client_pem_path, &self.client_key_path) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => {
                return Err(TlsError::Invalid {
                    key: "clientPemPath",
                    path: PathBuf::new(),
                    reason: "clientPemPath and clientKeyPath go together".into(),
                });
            }
        };
        Ok(ClientFiles { ca, identity })
    }
}

/// A client's TLS files, checked ([`ClientTls::files`]).
struct ClientFiles<'a> {
    ca: &'a Path,
    /// The client certificate chain and its key, when the client has an identity.
    identity: Option<(&'a Path, &'a Path)>,
}

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

impl ClientTls {
    /// rustls's configuration from the same files as [`ClientTls::tonic_config`], HTTP/2 by ALPN.
    fn rustls_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let ClientFiles { ca, identity } = self.files()?;
        let builder = trusting("caPemPath", ca)?;
        let mut config =
            match identity {
                Some((cert, key)) => {
                    let chain = certificates("clientPemPath", cert, &read("clientPemPath", cert)?)?;
                    // The key's text is never part of an error.
                    let key_der = PrivateKeyDer::from_pem_slice(&read("clientKeyPath", key)?)
                        .map_err(|_| TlsError::Invalid {
                            key: "clientKeyPath",
                            path: key.to_path_buf(),
                            reason: "holds no readable PEM private key".into(),
                        })?;
                    builder.with_client_auth_cert(chain, key_der)?
                }
                None => builder.with_no_client_auth(),
            };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Opens one TLS connection to `host:port` as a gRPC channel with these settings would,
    /// sends the HTTP/2 preface and waits up to `patience` for the server's first bytes.
    /// `Err(TlsError::Refused)` when either side ended the handshake, with a fixed reason per
    /// cause: a TLS 1.3 server refuses a client certificate only after the client finished,
    /// as an alert on the first read, so a gRPC call alone reports whatever its HTTP/2 stack
    /// saw first. `Ok` when the server answered, and when nothing was learnt (no TCP
    /// connection, a silent server): the caller's own connection reports those.
    pub async fn probe(&self, host: &str, port: u16, patience: Duration) -> Result<(), TlsError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let config = self.rustls_config()?;
        let refused = |reason: String| TlsError::Refused {
            host: format!("{host}:{port}"),
            reason,
        };
        let name = self.server_name.as_deref().unwrap_or(host).to_string();
        let name = rustls::pki_types::ServerName::try_from(name)
            .map_err(|e| refused(format!("the server name is not valid: {e}")))?;
        let talk = async {
            let tcp = TcpStream::connect((host, port)).await.ok()?;
            let _ = tcp.set_nodelay(true);
            let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
            {
                Ok(tls) => tls,
                Err(e) => return Some(refusal(&e, Phase::Handshake)),
            };
            if let Err(e) = tls.write_all(HTTP2_PREFACE).await {
                return Some(refusal(&e, Phase::FirstRead));
            }
            let mut first = [0u8; 16];
            match tls.read(&mut first).await {
                Err(e) => Some(refusal(&e, Phase::FirstRead)),
                Ok(_) => None,
            }
        };
        match tokio::time::timeout(patience, talk).await {
            Ok(Some(Some(reason))) => Err(refused(reason)),
            _ => Ok(()),
        }
    }
}

/// Where [`ClientTls::probe`] was when its connection failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake,
    FirstRead,
}

/// What an I/O error during a client handshake (or the first read after it) says about who
/// refused and why, in fixed words; `None` when it is not a TLS refusal. A connection closed
/// or reset in the middle of the handshake is a server that does not speak TLS (a plaintext
/// gRPC server drops a ClientHello as a bad HTTP/2 preface); after it, nothing is learnt.
fn refusal(error: &io::Error, phase: Phase) -> Option<String> {
    use rustls::AlertDescription as Alert;
    let closed = matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    );
    if closed && phase == Phase::Handshake {
        return Some(
            "the server closed the connection during the handshake (a plaintext server? \
             then use an http:// URI)"
                .into(),
        );
    }
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::AlertReceived(Alert::CertificateRequired) => {
            "the server requires a client certificate (--client-pem, --client-key)".into()
        }
        rustls::Error::AlertReceived(Alert::UnknownCA) => {
            "the server does not trust the CA of this client's certificate".into()
        }
        rustls::Error::AlertReceived(alert) => format!("the server sent the alert {alert:?}"),
        rustls::Error::InvalidCertificate(why) => {
            format!("this client does not trust the server's certificate: {why:?}")
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateHandshakeMessage { .. } => {
            "the server does not speak TLS (a plaintext server? then use an http:// URI)".into()
        }
        other => format!("{other}"),
    })
}

/// A TLS 1.2/1.3 client configuration that trusts only the CA in `ca_pem` (`key` names the
/// setting in errors; no system roots), still to be told its client identity.
fn trusting(
    key: &'static str,
    ca_pem: &Path,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let mut roots = RootCertStore::empty();
    for cert in certificates(key, ca_pem, &read(key, ca_pem)?)? {
        roots.add(cert)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots))
}

/// A TLS 1.2/1.3 connection to `host:port` (HTTP/1.1 by ALPN) whose certificate must chain
/// to the CA in `ca_pem` (`key` names the setting in errors) and name `host`; no system roots.
/// For fetching an OIDC issuer's keys (`credstore.oidc.jwksUri`).
pub async fn connect_https(
    host: &str,
    port: u16,
    key: &'static str,
    ca_pem: &Path,
) -> Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + use<>, TlsError> {
    let mut config = trusting(key, ca_pem)?.with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let failed = |source: io::Error| TlsError::Connect {
        host: host.to_string(),
        source,
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let tcp = TcpStream::connect((host, port)).await.map_err(failed)?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, mode: TlsMode) -> ServerFiles {
        ServerFiles {
            mode,
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    #[test]
    fn a_missing_file_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = ServerTls::load(files(dir.path(), TlsMode::Server))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("config key tls.serverPemPath: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_pem_is_refused_and_the_key_text_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.pem"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("server.key"), "SECRET-KEY-TEXT").unwrap();
        let err = ServerTls::load(files(dir.path(), TlsMode::Server))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tls.serverPemPath"), "{err}");
        assert!(err.contains("holds no certificate"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn mutual_tls_needs_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let err = ServerTls::load(files(dir.path(), TlsMode::Mutual { ca }))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tls.caPemPath"), "{err}");
    }

    #[test]
    fn a_handshake_failure_is_told_in_fixed_words_per_cause() {
        use rustls::AlertDescription as Alert;
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let cases = [
            (
                tls(rustls::Error::AlertReceived(Alert::CertificateRequired)),
                Phase::FirstRead,
                Some("the server requires a client certificate (--client-pem, --client-key)"),
            ),
            (
                tls(rustls::Error::AlertReceived(Alert::UnknownCA)),
                Phase::FirstRead,
                Some("the server does not trust the CA of this client's certificate"),
            ),
            (
                eof,
                Phase::Handshake,
                Some(
                    "the server closed the connection during the handshake (a plaintext \
                     server? then use an http:// URI)",
                ),
            ),
            (reset, Phase::FirstRead, None),
        ];
        for (error, phase, want) in cases {
            assert_eq!(refusal(&error, phase).as_deref(), want, "{error}");
        }
    }

    #[test]
    fn a_client_needs_a_ca_and_both_halves_of_its_identity() {
        assert!(ClientTls::default().tonic_config().is_err());
        assert!(!ClientTls::default().is_set());
        let half = ClientTls {
            ca_pem_path: Some("/dev/null".into()),
            client_pem_path: Some("/dev/null".into()),
            ..ClientTls::default()
        };
        assert!(
            half.tonic_config()
                .unwrap_err()
                .to_string()
                .contains("go together")
        );
    }
}
