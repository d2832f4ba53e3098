//! The webhook's TLS: a CA of its own (generated, or loaded from the PEM
//! pair kept in a Secret, see [`crate::ca_secret`]) issues this replica's
//! serving certificate for the Service's DNS names. The API server trusts
//! the CA through the caBundle of the MutatingWebhookConfiguration, so no
//! cert-manager is needed. The serving certificate is re-issued before it
//! expires, without a restart ([`CertStore`] swaps it under rustls).

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The CA's common name; a CA loaded from PEM must carry it (its issuer
/// name is rebuilt from it).
pub const CA_CN: &str = "peerpods-webhook CA";
/// CA lifetime.
const CA_DAYS: i64 = 3650;
/// Serving certificate lifetime; it is re-issued every [`RENEW_EVERY`].
pub const SERVING_DAYS: i64 = 90;
pub const RENEW_EVERY: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why TLS material could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the CA key in {0} is not a PEM private key")]
    BadKey(String),
    #[error("the CA certificate in {0} is not a PEM certificate")]
    BadCert(String),
    #[error("the CA from {source_name} does not verify our serving certificate for {name} ({why}); was it made by another tool? Delete it to have a new one made")]
    Mismatch {
        source_name: String,
        name: String,
        why: String,
    },
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The DNS names the API server uses for `service` in `namespace`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// The webhook's CA.
pub struct WebhookCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    source: String,
}

impl WebhookCa {
    /// A new CA.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = peerpod_pki::ca_params(CA_CN)?;
        peerpod_pki::set_validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            source: "a new CA".into(),
        })
    }

    /// A CA from its PEM pair; `source` names where it came from in errors.
    pub fn from_pem(cert_pem: &str, key_pem: &str, source: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|_| TlsError::BadKey(source.into()))?;
        if CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .is_none()
        {
            return Err(TlsError::BadCert(source.into()));
        }
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer: Issuer::new(peerpod_pki::ca_params(CA_CN)?, key),
            source: source.into(),
        })
    }

    /// The CA certificate (what goes into caBundle).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key. Secret: stored in the CA Secret, never logged.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a serving certificate for `names` with a fresh key and checks
    /// that it verifies against the CA certificate (a CA Secret made by
    /// another tool would otherwise fail only in the API server).
    pub fn issue_serving(&self, names: &[String]) -> Result<Arc<CertifiedKey>, TlsError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(names.to_vec())?;
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        peerpod_pki::set_validity(&mut p, SERVING_DAYS);
        let cert = p.signed_by(&key, &self.issuer)?;
        let leaf = CertificateDer::from(cert.der().to_vec());
        self.check(&leaf, names)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|_| TlsError::BadKey("the generated serving key".into()))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)?;
        Ok(Arc::new(CertifiedKey::new(vec![leaf], signer)))
    }

    fn check(&self, leaf: &CertificateDer<'_>, names: &[String]) -> Result<(), TlsError> {
        let Some(name) = names.first() else {
            return Ok(());
        };
        let mismatch = |why: String| TlsError::Mismatch {
            source_name: self.source.clone(),
            name: name.clone(),
            why,
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            let c = c.map_err(|_| TlsError::BadCert(self.source.clone()))?;
            roots.add(c).map_err(|e| mismatch(e.to_string()))?;
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| mismatch(e.to_string()))?;
        let server = ServerName::try_from(name.clone()).map_err(|e| mismatch(e.to_string()))?;
        verifier
            .verify_server_cert(leaf, &[], &server, &[], UnixTime::now())
            .map_err(|e| mismatch(e.to_string()))?;
        Ok(())
    }
}

/// The current serving certificate, swappable while serving.
#[derive(Debug)]
pub struct CertStore(RwLock<Arc<CertifiedKey>>);

impl CertStore {
    pub fn new(first: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self(RwLock::new(first)))
    }

    pub fn replace(&self, next: Arc<CertifiedKey>) {
        // A poisoned lock only means a panic elsewhere mid-swap; the value
        // is a whole Arc either way.
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A rustls server configuration (HTTP/1.1) serving `store`'s certificate.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_round_trips_through_pem_and_issues_verifiable_certs() {
        let ca = WebhookCa::generate().unwrap();
        let again = WebhookCa::from_pem(ca.cert_pem(), ca.key_pem(), "secret ns/x").unwrap();
        let names = service_names("peerpods-webhook", "peerpods");
        assert_eq!(names[0], "peerpods-webhook.peerpods.svc");
        assert_eq!(names[1], "peerpods-webhook.peerpods.svc.cluster.local");
        again.issue_serving(&names).unwrap();
    }

    #[test]
    fn a_foreign_ca_is_refused_with_a_reason() {
        let a = WebhookCa::generate().unwrap();
        let b = WebhookCa::generate().unwrap();
        // b's key with a's certificate: nothing b issues verifies.
        let mixed = WebhookCa::from_pem(a.cert_pem(), b.key_pem(), "secret ns/mixed").unwrap();
        let e = mixed
            .issue_serving(&service_names("s", "n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secret ns/mixed") && e.contains("s.n.svc"),
            "{e}"
        );
        let e = WebhookCa::from_pem("junk", a.key_pem(), "secret ns/j")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("secret ns/j"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
    }
}
