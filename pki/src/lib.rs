//! A throw-away PKI for TLS tests and demos (`cargo xtask pki`): a CA, server
//! certificates and client certificates with chosen names, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// Paths of one certificate and its key.
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA that issues certificates into a directory.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    /// The CA certificate (PEM file).
    pub cert: PathBuf,
}

impl TestCa {
    /// Creates the CA in `dir`.
    pub fn create(dir: &Path) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Residency Sensor test CA");
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let cert = dir.join("ca.pem");
        std::fs::write(&cert, issuer.pem()).expect("write CA");
        TestCa {
            issuer,
            dir: dir.to_owned(),
            cert,
        }
    }

    /// Issues a certificate with common name `cn` and DNS names `dns`.
    pub fn issue(&self, cn: &str, dns: &[&str]) -> Pem {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let pem = Pem {
            cert: self.dir.join(format!("{cn}.pem")),
            key: self.dir.join(format!("{cn}.key")),
        };
        std::fs::write(&pem.cert, cert.pem()).expect("write cert");
        std::fs::write(&pem.key, key.serialize_pem()).expect("write key");
        pem
    }
}
