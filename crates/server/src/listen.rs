//! The listeners: a Unix socket only root reaches, and TCP with TLS (rustls) for remote
//! callers.
//!
//! The certificate is the operator's or one the server made for itself on first start and
//! keeps in `STATE/tls/` (clients trust it with `--ca-cert`). Clients may present a
//! certificate of their own instead of a token: the handshake proves they hold its key, the
//! server hands its SHA-256 to the router as [`ClientCert`], and the application looks it up
//! among the credentials its operator pinned; an unregistered certificate gets nothing.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

/// A listener or its certificate could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The operator's certificate or key is unusable.
    #[error("{0}")]
    Certificate(String),
}

/// Where a remote client connects, and with which certificate.
#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    /// PEM certificate chain and key; both or neither (then self-made).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A TLS handshake slower than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection keeps reading what the client still sends (see [`linger`]).
const LINGER: Duration = Duration::from_secs(5);

/// Binds the API socket, replacing a stale one, readable by root only.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ListenError> {
    let io = |source| ListenError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serves `app` on the Unix socket until `shutdown` resolves.
pub async fn serve_unix(
    listener: UnixListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The server's TLS settings from the given certificate, or from the self-made one under
/// `state_dir/tls` (made now if missing), valid for `localhost`, the loopback addresses, the
/// host name and `listen.addr`.
pub fn tls_config(
    state_dir: &Path,
    listen: &Listen,
) -> Result<Arc<rustls::ServerConfig>, ListenError> {
    let (cert, key) = match (&listen.cert, &listen.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => self_made(state_dir, listen.addr)?,
        _ => {
            return Err(ListenError::Certificate(
                "give both --tls-cert and --tls-key, or neither to use a self-made certificate"
                    .into(),
            ))
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ListenError::Certificate(format!(
                "{}: not a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(ListenError::Certificate(format!(
            "{}: no certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| {
        ListenError::Certificate(format!("{}: not a PEM private key: {e}", key.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedClients {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ListenError::Certificate(format!("TLS set-up: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ListenError::Certificate(format!("the TLS certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless resumption: a client coming back (a gateway's next sync) skips the
    // certificate signatures and checks of a full handshake, however many clients there are
    // (the default in-memory session cache holds 256). The ticket keys live in memory only
    // and rotate; a resumed session keeps the client certificate it was made with.
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| ListenError::Certificate(format!("TLS session tickets: {e}")))?;
    Ok(Arc::new(config))
}

/// Client certificates are optional and not judged by any CA: whoever presents one proves
/// in the handshake that it holds the key, and the application then looks the certificate's
/// SHA-256 up among the credentials the operator registered (see [`ClientCert`]).
#[derive(Debug)]
struct PinnedClients {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for PinnedClients {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        // Trust comes from the pin, checked per request; possession from the signatures below.
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The SHA-256 (hex) of the certificate the client presented on this connection, if any.
#[derive(Debug, Clone)]
pub struct ClientCert(pub String);

/// The self-made certificate and key under `STATE/tls/`, made on first use.
fn self_made(state_dir: &Path, addr: SocketAddr) -> Result<(PathBuf, PathBuf), ListenError> {
    let dir = state_dir.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).map_err(|source| ListenError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = nix::unistd::gethostname() {
        names.push(host.to_string_lossy().into_owned());
    }
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    names.dedup();
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| ListenError::Certificate(format!("cannot make a TLS certificate: {e}")))?;
    write_private(&key, made.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.cert.pem()).map_err(|source| ListenError::Io {
        path: cert.clone(),
        source,
    })?;
    Ok((cert, key))
}

/// Writes a file only root can read, from its first byte on.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ListenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| ListenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)
}

/// Binds `addr` now, so a taken port fails the start.
pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })
}

/// Serves `app` over TLS until `stop` turns true; each connection's client certificate, if
/// any, reaches the router as [`ClientCert`].
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(config);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let app = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => app.layer(axum::Extension(ClientCert(realm::cert_fingerprint(cert)))),
                None => app,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(&mut tls), service)
                .await
            {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            linger(tls).await;
        });
    }
}

/// Closes a connection without losing the answer. When a request is refused before its body
/// is read (a bad query on an upload, say), hyper closes the connection while the client is
/// still sending; closing a socket with unread data makes the kernel reset it, and the reset
/// can destroy the answer before the client reads it. So: say goodbye (close_notify, FIN),
/// then read and discard until the client closes too, for at most [`LINGER`].
async fn linger(tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls;
    let _ = tls.shutdown().await;
    let (mut tcp, _) = tls.into_inner();
    let mut sink = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Serves `local` on the Unix socket and, if given, `remote` over TLS, until SIGTERM or
/// SIGINT. Streams such as a followed log never end by themselves: requests get two seconds
/// to finish, then the server returns anyway.
pub async fn serve_until_signal(
    unix: UnixListener,
    local: Router,
    remote: Option<(TcpListener, Arc<rustls::ServerConfig>, Router)>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some((tcp, config, app)) = remote {
        tokio::spawn(serve_tls(tcp, config, app, stop_rx.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        let _ = stop_tx.send(true);
    });
    let graceful = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let deadline = {
        let mut rx = stop_rx;
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    };
    tokio::select! {
        result = serve_unix(unix, local, graceful) => result,
        _ = deadline => Ok(()),
    }
}
