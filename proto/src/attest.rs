//! What an agent signs (`Attestation`, its window statements, and
//! `SignedHead`, its answer to "how far are you" in collector.proto): the
//! bytes signed, the signer (its mutual-TLS key and certificate, or an
//! Ed25519 key of its own), and the check a verifier makes.

use std::path::Path;

use prost::Message;
use rustls::{
    SignatureScheme,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    sign::SigningKey,
};

use crate::collector::v1::{Attestation, SignedHead};

/// A statement an agent signs: the same key and the same checks for each.
pub trait Statement: Message + Clone {
    /// What the signed bytes start with, so that a signature over one kind
    /// of statement can never pass for another (whoever asks for a head
    /// chooses its nonce). Empty for attestations, which were signed before
    /// heads existed.
    const CONTEXT: &'static [u8];
    /// The host it speaks for.
    fn host(&self) -> &str;
    /// When it was made (Unix ns): its certificate must be valid then.
    fn made_at(&self) -> i64;
    /// The signature scheme, signature, certificate and public key.
    fn seal(&self) -> (&str, &[u8], &[u8], &[u8]);
    /// Sets them.
    fn set_seal(&mut self, scheme: String, signature: Vec<u8>, certificate: Vec<u8>, key: Vec<u8>);
}

macro_rules! statement {
    ($t:ty, $at:ident, $context:expr) => {
        impl Statement for $t {
            const CONTEXT: &'static [u8] = $context;
            fn host(&self) -> &str {
                &self.host_id
            }
            fn made_at(&self) -> i64 {
                self.$at
            }
            fn seal(&self) -> (&str, &[u8], &[u8], &[u8]) {
                (
                    &self.signature_scheme,
                    &self.signature,
                    &self.certificate,
                    &self.public_key,
                )
            }
            fn set_seal(
                &mut self,
                scheme: String,
                signature: Vec<u8>,
                certificate: Vec<u8>,
                key: Vec<u8>,
            ) {
                self.signature_scheme = scheme;
                self.signature = signature;
                self.certificate = certificate;
                self.public_key = key;
            }
        }
    };
}
statement!(Attestation, window_end_unix_ns, b"");
statement!(
    SignedHead,
    time_unix_ns,
    b"residency.collector.v1.SignedHead\n"
);

/// The longest nonce an agent signs into a head: a check's 16 random bytes
/// fit many times; more would only serve to make the agent sign chosen
/// bytes.
pub const NONCE_MAX: usize = 64;

/// Whether an agent signs a head answering `nonce`; errors say why not.
pub fn check_nonce(nonce: &[u8]) -> Result<(), String> {
    if nonce.is_empty() || nonce.len() > NONCE_MAX {
        return Err(format!(
            "a head is signed for a nonce of 1 to {NONCE_MAX} bytes, not {}: the collector must send fresh random bytes",
            nonce.len()
        ));
    }
    Ok(())
}

/// The first certificate of a PEM file, as DER; errors name the file.
pub fn pem_certificate(path: &Path) -> Result<Vec<u8>, String> {
    CertificateDer::from_pem_file(path)
        .map(|c| c.to_vec())
        .map_err(|e| format!("{}: no PEM certificate ({e})", path.display()))
}

/// What is signed: the statement encoded with its signature empty.
pub fn signed_bytes<S: Statement>(a: &S) -> Vec<u8> {
    let mut unsigned = a.clone();
    let (scheme, _, certificate, key) = unsigned.seal();
    let (scheme, certificate, key) = (scheme.to_owned(), certificate.to_vec(), key.to_vec());
    unsigned.set_seal(scheme, Vec::new(), certificate, key);
    let mut out = S::CONTEXT.to_vec();
    unsigned.encode_raw(&mut out);
    out
}

/// The schemes offered to a key, most preferred first.
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// Signs attestations.
pub struct Signer {
    key: std::sync::Arc<dyn SigningKey>,
    scheme: SignatureScheme,
    certificate: Vec<u8>,
    public_key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("scheme", &self.scheme)
            .field("certificate", &!self.certificate.is_empty())
            .finish()
    }
}

fn signing_key(
    key: &PrivateKeyDer<'_>,
    what: &str,
) -> Result<(std::sync::Arc<dyn SigningKey>, SignatureScheme), String> {
    let key = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| format!("{what}: not a key this agent can sign with ({e})"))?;
    let scheme = key
        .choose_scheme(SCHEMES)
        .ok_or_else(|| format!("{what}: no signature scheme for this key type"))?
        .scheme();
    Ok((key, scheme))
}

impl Signer {
    /// The agent's mutual-TLS identity: its certificate and key (PEM).
    pub fn from_tls(cert: &Path, key: &Path) -> Result<Signer, String> {
        let der = CertificateDer::from_pem_file(cert)
            .map_err(|e| format!("{}: no certificate ({e})", cert.display()))?;
        let k = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("{}: no private key ({e})", key.display()))?;
        let (key, scheme) = signing_key(&k, &key.display().to_string())?;
        Ok(Signer {
            key,
            scheme,
            certificate: der.to_vec(),
            public_key: Vec::new(),
        })
    }

    /// An Ed25519 key of the agent's own at `path` (PKCS#8 DER), created
    /// (mode 0600) when missing.
    pub fn host_key(path: &Path) -> Result<Signer, String> {
        use ring::signature::KeyPair;
        let what = path.display().to_string();
        let pkcs8 = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| format!("{what}: generating a key failed"))?;
                write_private(path, doc.as_ref())
                    .map_err(|e| format!("{what}: writing the new key failed ({e})"))?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(format!("{what}: {e}")),
        };
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| {
            format!("{what}: not an Ed25519 PKCS#8 key ({e}); remove it to make a new one")
        })?;
        let der = PrivateKeyDer::Pkcs8(pkcs8.into());
        let (key, scheme) = signing_key(&der, &what)?;
        Ok(Signer {
            key,
            scheme,
            certificate: Vec::new(),
            public_key: pair.public_key().as_ref().to_vec(),
        })
    }

    /// Signs `a` in place (scheme, certificate or public key, signature).
    pub fn sign<S: Statement>(&self, a: &mut S) -> Result<(), String> {
        a.set_seal(
            format!("{:?}", self.scheme),
            Vec::new(),
            self.certificate.clone(),
            self.public_key.clone(),
        );
        let signer = self
            .key
            .choose_scheme(&[self.scheme])
            .ok_or("the key no longer offers its scheme")?;
        let signature = signer
            .sign(&signed_bytes(a))
            .map_err(|e| format!("signing failed: {e}"))?;
        a.set_seal(
            format!("{:?}", self.scheme),
            signature,
            self.certificate.clone(),
            self.public_key.clone(),
        );
        Ok(())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// What checking an attestation's signature found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignatureCheck {
    /// The signature holds over the statement.
    pub valid: bool,
    /// The certificate's names, or "host key SHA256:…".
    pub signer: String,
    /// The signer is trusted (see `AttestationCheck.signer_trusted`).
    pub trusted: bool,
    /// Why not, when not.
    pub problem: String,
}

fn algorithm(
    scheme: &str,
) -> Option<&'static dyn rustls::pki_types::SignatureVerificationAlgorithm> {
    use webpki::ring as alg;
    Some(match scheme {
        "ED25519" => alg::ED25519,
        "ECDSA_NISTP256_SHA256" => alg::ECDSA_P256_SHA256,
        "ECDSA_NISTP384_SHA384" => alg::ECDSA_P384_SHA384,
        "RSA_PSS_SHA256" => alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        "RSA_PKCS1_SHA256" => alg::RSA_PKCS1_2048_8192_SHA256,
        _ => return None,
    })
}

/// Checks `a`'s signature. With a certificate: against its key, and the
/// certificate against `ca` (DER; untrusted without one) at the window's
/// end, and its names against the host. With a bare Ed25519 key: against
/// it, trusted when it is `host_key` (the host's first key).
pub fn check<S: Statement>(a: &S, ca: Option<&[u8]>, host_key: Option<&[u8]>) -> SignatureCheck {
    let msg = signed_bytes(a);
    let (scheme, signature, certificate, public_key) = a.seal();
    let mut out = SignatureCheck::default();
    if signature.is_empty() {
        out.problem = "not signed".into();
        return out;
    }
    if !certificate.is_empty() {
        let der = CertificateDer::from(certificate);
        out.signer = crate::identity::certificate_names(certificate).join(",");
        let Ok(ee) = webpki::EndEntityCert::try_from(&der) else {
            out.problem = "its certificate does not parse".into();
            return out;
        };
        let Some(alg) = algorithm(scheme) else {
            out.problem = format!("unknown signature scheme {scheme:?}");
            return out;
        };
        out.valid = ee.verify_signature(alg, &msg, signature).is_ok();
        if !out.valid {
            out.problem = "the signature does not hold over the statement".into();
            return out;
        }
        let Some(ca) = ca else {
            out.problem = "no CA to check its certificate against".into();
            return out;
        };
        let ca = CertificateDer::from(ca);
        let anchor = match webpki::anchor_from_trusted_cert(&ca) {
            Ok(a) => a,
            Err(e) => {
                out.problem = format!("the CA certificate does not parse ({e:?})");
                return out;
            }
        };
        let when =
            UnixTime::since_unix_epoch(std::time::Duration::from_nanos(a.made_at().max(0) as u64));
        let algs = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        if let Err(e) = ee.verify_for_usage(
            algs,
            &[anchor],
            &[],
            when,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        ) {
            out.problem = format!("its certificate is not one the CA signed for a client ({e:?})");
            return out;
        }
        if !crate::identity::certificate_names(certificate)
            .iter()
            .any(|n| n == a.host())
        {
            out.problem = format!(
                "its certificate names {}, not host {}",
                out.signer,
                a.host()
            );
            return out;
        }
        out.trusted = true;
        return out;
    }
    if public_key.is_empty() || scheme != "ED25519" {
        out.problem = "neither a certificate nor an Ed25519 key".into();
        return out;
    }
    out.signer = format!(
        "host key SHA256:{}",
        crate::chain::hex(&ring::digest::digest(&ring::digest::SHA256, public_key).as_ref()[..8])
    );
    out.valid = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(&msg, signature)
        .is_ok();
    if !out.valid {
        out.problem = "the signature does not hold over the statement".into();
    } else if host_key.is_some_and(|k| k != public_key) {
        out.problem = "signed with a key other than the host's first one".into();
    } else {
        out.trusted = true;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> Attestation {
        Attestation {
            host_id: "eu-1".into(),
            window_start_unix_ns: 1,
            window_end_unix_ns: 2,
            first_seq: 1,
            last_seq: 9,
            ..Default::default()
        }
    }

    #[test]
    fn a_host_silent_after_its_last_attestation_shows_once_one_was_due() {
        let sec = 1_000_000_000i64;
        let mut t = Tracker::new("eu-1", None);
        let a = Attestation {
            window_start_unix_ns: 8 * sec,
            window_end_unix_ns: 10 * sec,
            interval_ns: 2 * sec,
            ..statement()
        };
        t.attestation(10, &a, None);
        assert_eq!(
            t.silent_since(13 * sec),
            None,
            "the next is due at 12 s, with 2 s grace"
        );
        assert_eq!(t.silent_since(15 * sec), Some((10, 10 * sec)));
        let older = Attestation {
            interval_ns: 0,
            ..a
        };
        let mut t = Tracker::new("eu-1", None);
        t.attestation(10, &older, None);
        assert_eq!(
            t.silent_since(i64::MAX),
            None,
            "no interval stated: unknown"
        );
    }

    #[test]
    fn a_head_signature_never_passes_for_an_attestation_and_nonces_are_bounded() {
        let dir = std::env::temp_dir().join(format!("rs-attest-ctx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Signer::host_key(&dir.join("k")).unwrap();
        let mut h = SignedHead {
            host_id: "eu-1".into(),
            nonce: vec![7; 16],
            ..Default::default()
        };
        s.sign(&mut h).unwrap();
        assert!(check(&h, None, None).valid);
        // The same signature over the bare encoding (what an attestation's
        // check computes) does not hold.
        let mut bare = h.clone();
        bare.signature.clear();
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &h.public_key);
        assert!(key.verify(&bare.encode_to_vec(), &h.signature).is_err());
        assert!(signed_bytes(&h).starts_with(SignedHead::CONTEXT));
        let mut a = statement();
        s.sign(&mut a).unwrap();
        assert_eq!(
            signed_bytes(&a),
            {
                let mut b = a.clone();
                b.signature.clear();
                b.encode_to_vec()
            },
            "attestations are signed as before"
        );
        assert!(check_nonce(&[1; 16]).is_ok());
        assert!(check_nonce(&[]).is_err());
        assert!(
            check_nonce(&[1; NONCE_MAX + 1])
                .unwrap_err()
                .contains("1 to 64 bytes")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_host_key_signs_and_an_edit_or_another_key_shows() {
        let dir = std::env::temp_dir().join(format!("rs-attest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Signer::host_key(&dir.join("attestation.key")).unwrap();
        let again = Signer::host_key(&dir.join("attestation.key")).unwrap();
        assert_eq!(s.public_key, again.public_key, "the key is kept");
        let mut a = statement();
        s.sign(&mut a).unwrap();
        let c = check(&a, None, Some(&s.public_key));
        assert!(c.valid && c.trusted, "{c:?}");
        let mut edited = a.clone();
        edited.last_seq = 8;
        assert!(!check(&edited, None, None).valid);
        let other = Signer::host_key(&dir.join("other.key")).unwrap();
        let mut b = statement();
        other.sign(&mut b).unwrap();
        let c = check(&b, None, Some(&s.public_key));
        assert!(c.valid && !c.trusted, "{c:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Follows a host's records in sequence order for the attestations among
/// them: tallies violations between attestations, and checks each
/// attestation's signature, its statement against the records, and that
/// its window starts where the previous one ended.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The host whose records these are: an attestation must be its own.
    host: String,
    ca: Option<Vec<u8>>,
    host_key: Option<Vec<u8>>,
    /// Violations since the last attestation: (sequence, class, violations,
    /// denials); an attestation sums those in its stated range.
    tally: Vec<(u64, String, u64, u64)>,
    /// A sequence since the last attestation is missing.
    missing: bool,
    /// The first sequence seen since the last attestation (or the walk's
    /// start).
    from: Option<u64>,
    /// The last attestation: its sequence and window end.
    last: Option<(u64, i64)>,
    /// It was signed as the agent stopped.
    last_stopping: bool,
    /// When the next attestation was due after the last one (its window end
    /// plus its interval; 0: unknown).
    due: i64,
}

/// A time no attestation covers before a window: the previous
/// attestation's sequence and window end, and whether that window was the
/// agent's last before a clean stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    pub after: u64,
    pub end: i64,
    pub stopped: bool,
}

/// An attestation checked, and the hole before its window, if any.
pub type Checked = (crate::collector::v1::AttestationCheck, Option<Hole>);

impl Tracker {
    /// `host`: whose records; `ca`: the CA certificate (DER) agents'
    /// certificates must chain to. With a CA, attestations signed with a
    /// bare key are not trusted (a forger's key would be the first seen).
    pub fn new(host: &str, ca: Option<Vec<u8>>) -> Tracker {
        Tracker {
            host: host.to_owned(),
            ca,
            ..Default::default()
        }
    }

    /// A record that is not an attestation.
    pub fn record(&mut self, r: &crate::collector::v1::Record) {
        use crate::{agent::v1::Action, collector::v1::record::Body};
        self.from.get_or_insert(r.seq);
        if let Some(Body::Violation(f)) = &r.body {
            let n = u64::from(f.count.max(1));
            let denied = if f.action() == Action::Denied { n } else { 0 };
            for c in &f.classes {
                self.tally.push((r.seq, c.clone(), n, denied));
            }
        }
    }

    /// When no attestation came after the last one although one was due
    /// before `now` (with one more interval's grace): the last one's
    /// sequence and window end.
    pub fn silent_since(&self, now: i64) -> Option<(u64, i64)> {
        let (seq, end) = self.last?;
        if self.last_stopping {
            return None; // it said it stopped
        }
        let grace = self.due.saturating_sub(end);
        (self.due > 0 && now > self.due.saturating_add(grace)).then_some((seq, end))
    }

    /// The last attestation seen was signed as the agent stopped.
    pub fn after_stop(&self) -> bool {
        self.last.is_some() && self.last_stopping
    }

    /// Sequences are missing since the last attestation.
    pub fn missing(&mut self) {
        self.missing = true;
    }

    /// Checks who signed `a`: its signature, its signer against the CA or
    /// the host's key, and that it speaks for this host. Without a CA, the
    /// first valid bare key becomes the host's key.
    fn signer<S: Statement>(&mut self, a: &S) -> SignatureCheck {
        let mut sig = check(a, self.ca.as_deref(), self.host_key.as_deref());
        let (_, _, certificate, public_key) = a.seal();
        if sig.valid && self.ca.is_some() && certificate.is_empty() {
            sig.trusted = false;
            sig.problem = "signed with a bare key where hosts sign with their certificates".into();
        }
        if sig.valid && self.ca.is_none() && certificate.is_empty() && self.host_key.is_none() {
            self.host_key = Some(public_key.to_vec());
        }
        if a.host() != self.host {
            sig.trusted = false;
            sig.problem = format!("it is host {}'s, not {}'s", a.host(), self.host);
        }
        sig
    }

    /// Checks a signed head's signer, after the records: against the key
    /// the host's attestations show (before its first window ends, the
    /// head's own key, as an attestation's would be).
    pub fn head(&mut self, h: &SignedHead) -> SignatureCheck {
        self.signer(h)
    }

    /// Attestation `a` at sequence `seq`; `prev` is the record before it
    /// (sequence and chain hash).
    pub fn attestation(
        &mut self,
        seq: u64,
        a: &Attestation,
        prev: Option<(u64, Option<crate::chain::Hash>)>,
    ) -> Checked {
        let sig = self.signer(a);
        let mut problems: Vec<String> = Vec::new();
        if !sig.problem.is_empty() {
            problems.push(sig.problem.clone());
        }
        if a.last_seq != 0 {
            if a.last_seq.saturating_add(1) != seq {
                problems.push(format!(
                    "it states records up to {} but follows record {}",
                    a.last_seq,
                    seq.saturating_sub(1)
                ));
            } else if let Some((p, h)) = prev
                && p == a.last_seq
                && h.map(|h| h.to_vec()) != Some(a.chain_head.clone())
            {
                problems.push(format!(
                    "its chain head is not record {}'s hash",
                    a.last_seq
                ));
            }
        }
        // The counts are checked when every record of the window was seen.
        let whole = a.first_seq == 0 || self.from.is_some_and(|f| f <= a.first_seq);
        if whole {
            let stated: std::collections::BTreeMap<&str, (u64, u64)> = a
                .classes
                .iter()
                .map(|c| (c.class.as_str(), (c.violations, c.denials)))
                .collect();
            // The violations stored in the stated range, per class.
            let mut stored: std::collections::BTreeMap<String, (u64, u64)> =
                std::collections::BTreeMap::new();
            for (s, class, v, d) in &self.tally {
                if a.first_seq != 0 && (a.first_seq..=a.last_seq).contains(s) {
                    let t = stored.entry(class.clone()).or_default();
                    t.0 = t.0.saturating_add(*v);
                    t.1 = t.1.saturating_add(*d);
                }
            }
            for (class, &(v, d)) in &stored {
                let (sv, sd) = stated.get(class.as_str()).copied().unwrap_or_default();
                let agree = if self.missing {
                    v <= sv && d <= sd
                } else {
                    v == sv && d == sd
                };
                if !agree {
                    problems.push(format!(
                        "class {class}: {v} violations ({d} denied) stored, {sv} ({sd}) stated"
                    ));
                }
            }
            if !self.missing {
                for (class, (sv, _)) in &stated {
                    if *sv > 0 && !stored.contains_key(*class) {
                        problems.push(format!(
                            "class {class}: {sv} violations stated, none stored"
                        ));
                    }
                }
            }
        }
        let hole = self
            .last
            .filter(|&(_, end)| a.window_start_unix_ns > end)
            .map(|(after, end)| Hole {
                after,
                end,
                stopped: self.last_stopping,
            });
        self.last = Some((seq, a.window_end_unix_ns));
        self.last_stopping = a.stopping;
        self.due = if a.interval_ns > 0 {
            a.window_end_unix_ns.saturating_add(a.interval_ns)
        } else {
            0
        };
        self.tally.clear();
        self.missing = false;
        self.from = Some(seq.saturating_add(1));
        let check = crate::collector::v1::AttestationCheck {
            seq,
            attestation: Some(a.clone()),
            signature_valid: sig.valid,
            signer: sig.signer,
            signer_trusted: sig.trusted,
            records_agree: problems.iter().all(|p| *p == sig.problem),
            problem: problems.join("; "),
        };
        (check, hole)
    }
}
