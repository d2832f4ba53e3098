//! Mutual TLS set-up for the relay's TCP hop: the forwarder's server side
//! (accepts only clients whose certificate the node CA signed) and the
//! adaptor's client side (trusts only the node CA). TLS 1.3 only, with the
//! `ring` provider.

use peerpod_vmconfig::TlsMaterial;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::sync::Arc;

/// Why TLS could not be set up; names which piece of material was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: no PEM certificate found ({detail})")]
    Certificate { what: &'static str, detail: String },
    #[error("{what}: no usable PEM private key found")]
    Key { what: &'static str },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(TlsError::Certificate {
            what,
            detail: "empty".into(),
        }),
        Err(e) => Err(TlsError::Certificate {
            what,
            detail: e.to_string(),
        }),
    }
}

fn key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| TlsError::Key { what })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        roots.add(c).map_err(|e| TlsError::Certificate {
            what: "CA certificate",
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The forwarder's server configuration: presents the VM's certificate and
/// requires a client certificate signed by the node CA.
pub fn server_config(m: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&m.ca_cert_pem)?), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&m.cert_pem, "server certificate")?,
            key(&m.key_pem, "server key")?,
        )?;
    Ok(Arc::new(cfg))
}

/// The adaptor's client configuration: trusts only the node CA and presents
/// the adaptor's client certificate.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(
            certs(cert_pem, "client certificate")?,
            key(key_pem, "client key")?,
        )?;
    Ok(Arc::new(cfg))
}

/// Accepts exactly one server certificate — the one-time bootstrap
/// certificate the adaptor issued to a pool VM and recorded — and only if
/// it also passes the ordinary checks (chains to the node CA, names the
/// server, proves the key). Another certificate for the same name, even
/// one the node CA signed, is refused: only the VM that got this
/// certificate's key in its user data can complete the handshake.
#[derive(Debug)]
struct PinnedVerifier {
    pinned: CertificateDer<'static>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() != self.pinned.as_ref() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The adaptor's client configuration for one pool VM's bootstrap
/// channel: presents the adaptor's client certificate and accepts only
/// the server certificate `pinned_cert_pem` (see [`PinnedVerifier`]).
pub fn pinned_client_config(
    ca_pem: &str,
    pinned_cert_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    let pinned = certs(pinned_cert_pem, "pinned bootstrap certificate")?
        .into_iter()
        .next()
        .ok_or(TlsError::Certificate {
            what: "pinned bootstrap certificate",
            detail: "empty".into(),
        })?;
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pinned, inner }))
        .with_client_auth_cert(
            certs(cert_pem, "client certificate")?,
            key(key_pem, "client key")?,
        )?;
    Ok(Arc::new(cfg))
}

/// A client configuration without a client certificate (tests show the
/// forwarder refuses it).
pub fn client_config_without_cert(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_material_names_the_piece() {
        let m = TlsMaterial {
            ca_cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            cert_pem: String::new(),
            key_pem: String::new(),
        };
        let e = server_config(&m).unwrap_err().to_string();
        assert!(
            e.contains("CA certificate") || e.contains("client verifier"),
            "{e}"
        );
        let e = client_config("nothing", "", "").unwrap_err().to_string();
        assert!(e.contains("CA certificate"), "{e}");
    }
}
