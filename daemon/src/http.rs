//! Serving an axum router on a guarded TCP listener (bounded connections,
//! per-peer limits, idle connections closed: `residency_proto::listen`),
//! as plain HTTP or over TLS, HTTP/1.1 and HTTP/2. Each request carries the
//! connection's [`Peer`] (address, and the names of a verified client
//! certificate) in its extensions.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::Request};
use residency_proto::listen;
use tokio::sync::watch;
use tracing::debug;

/// Connections accepted on an address.
pub type Incoming =
    tokio_stream::wrappers::ReceiverStream<std::io::Result<listen::Guarded<tokio::net::TcpStream>>>;

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The names of its verified client certificate (None: it presented
    /// none, or the connection is plain HTTP).
    pub names: Option<Vec<String>>,
    pub addr: SocketAddr,
}

/// How long a TLS handshake may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Binds `addr` (before serving, so that a port in use stops the daemon at
/// start).
pub async fn bind(addr: SocketAddr, limits: listen::Limits) -> std::io::Result<Incoming> {
    listen::bind_tcp(addr, limits).await
}

/// TLS with the daemon's certificate that asks for a client certificate
/// (not required: a browser without one signs in otherwise) and checks one
/// presented against `ca`. PEM inputs; errors name the option.
pub fn tls_optional_client_certs(
    cert: &[u8],
    key: &[u8],
    ca: &[u8],
) -> Result<rustls::ServerConfig, String> {
    use rustls::{
        RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("--tls-key: {e}"))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots
            .add(c.map_err(|e| format!("--client-ca: {e}"))?)
            .map_err(|e| format!("--client-ca: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("--client-ca: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` on `incoming` until `stop` turns true: over TLS with
/// `tls`, plain HTTP without.
pub async fn serve(
    mut incoming: Incoming,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    use tokio_stream::StreamExt;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let router = router.layer(axum::middleware::from_fn(log_request));
    loop {
        let conn = tokio::select! {
            c = incoming.next() => c,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(conn) = conn else { break };
        let Ok(io) = conn else { continue };
        let addr = residency_proto::listen::remote_addr(&io);
        let router = router.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            debug!(peer = %addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(peer = %addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let names = tls.get_ref().1.peer_certificates().and_then(|c| {
                        c.first()
                            .map(|leaf| residency_proto::identity::certificate_names(leaf))
                    });
                    connection(tls, Peer { names, addr }, router).await;
                }
                None => connection(io, Peer { names: None, addr }, router).await,
            }
        });
    }
}

/// Each request and its answer at debug level (`RUST_LOG=residency_daemon::http=debug`):
/// method, path (never the query: a login link carries its token there),
/// status and time taken, to tell a slow handler from a request that never
/// came.
async fn log_request(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let peer = req.extensions().get::<Peer>().map(|p| p.addr);
    debug!(%method, path, peer = ?peer, "http request");
    let res = next.run(req).await;
    debug!(
        %method,
        path,
        status = res.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "http answer"
    );
    res
}

/// Serves HTTP/1.1 or HTTP/2 on one connection.
async fn connection<IO>(io: IO, peer: Peer, router: Router)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::conn::auto,
        service::TowerToHyperService,
    };
    use tower::ServiceExt;
    let addr = peer.addr;
    let service = router.map_request(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        req
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .await
    {
        debug!(peer = %addr, error = %e, "HTTP connection ended with an error");
    }
}
