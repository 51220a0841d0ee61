//! Raw HTTP requests to the daemons' HTTP servers: HTTPS with a chosen
//! client certificate (what a browser cannot be told to present without a
//! profile of its own), and plain HTTP (the admin endpoints). One request
//! per connection, HTTP/1.1, `Connection: close`.

use std::{path::Path, sync::Arc};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::pki;

/// An HTTP answer: status, headers (lower-case names), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTPS to `localhost:port`, trusting `ca`, presenting
/// `client` (when given) and `cookie` (when given); HTTP/1.1, one request.
/// Err: the TLS handshake or the connection failed.
pub async fn https_get(
    port: u16,
    ca: &Path,
    client: Option<&pki::Pem>,
    path: &str,
    cookie: Option<&str>,
) -> Result<Answer, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client {
        Some(p) => {
            let chain = CertificateDer::pem_file_iter(&p.cert)
                .map_err(|e| e.to_string())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_file(&p.key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    exchange(&mut tls, port, path, cookie).await
}

/// `GET path` over plain HTTP to `127.0.0.1:port`.
pub async fn http_get(port: u16, path: &str) -> Result<Answer, String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    exchange(&mut tcp, port, path, None).await
}

/// One request and its answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    port: u16,
    path: &str,
    cookie: Option<&str>,
) -> Result<Answer, String> {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\n{cookie}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // A peer that closes without close_notify is fine here.
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// The value of `name` (a sample line `NAME VALUE`, no labels) in the
/// Prometheus text a daemon serves on `127.0.0.1:port/metrics`; 0 when the
/// line is absent. Blocking (a runtime of its own): for sync tests.
pub fn metric(port: u16, name: &str) -> f64 {
    let body = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(http_get(port, "/metrics"))
        .unwrap_or_else(|e| panic!("GET /metrics on port {port}: {e}"))
        .body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
