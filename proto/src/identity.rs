//! Who is on the other end of a mutual-TLS gRPC connection: the names its
//! verified client certificate carries. Shared by the agent's API and the
//! collector, which map names to roles each in their own way.

use tonic::Request;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Names a certificate carries: its subject common names first, then its DNS
/// subject alternative names. Empty when the DER does not parse.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    names
}

/// The names of a request's verified client certificate; `None` when the
/// connection presented none (plaintext, or TLS without a client certificate).
pub fn peer_names<T>(req: &Request<T>) -> Option<Vec<String>> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    Some(certificate_names(leaf.as_ref()))
}

/// A client's mutual-TLS settings from PEM files: the CA that signed the
/// server's certificate, this client's certificate and key, and optionally the
/// name to expect in the server's certificate. Errors name the file.
pub fn client_tls(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    server_name: Option<&str>,
) -> Result<tonic::transport::ClientTlsConfig, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let mut c = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)?))
        .identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(name) = server_name {
        c = c.domain_name(name);
    }
    Ok(c)
}
