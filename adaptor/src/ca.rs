//! The node CA: created on first start, kept in `<state dir>/ca/` (key
//! 0600) so it survives restarts — a CA kept only in memory would strand
//! every running VM. It issues one server certificate per sandbox (SAN =
//! the instance name, which the adaptor uses as TLS server name) and the
//! adaptor's own client certificate, which the forwarder requires.

use crate::state::write_atomic;
use peerpod_vmconfig::TlsMaterial;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CA_CN: &str = "peerpod node CA";
const CLIENT_CN: &str = "peerpod cloud-api-adaptor";

/// Why the CA could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("node CA files in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node CA key {path} is unusable: {source}")]
    BadKey { path: PathBuf, source: rcgen::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS set-up with the node CA: {0}")]
    Tls(#[from] peerpod_relay::tls::TlsError),
}

/// The CA and what the adaptor needs from it.
pub struct NodeCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl NodeCa {
    /// Loads the CA from `<state_dir>/ca`, creating it on first use.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, CaError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("ca");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if key_path.exists() && cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|source| CaError::BadKey {
                path: key_path.clone(),
                source,
            })?;
            tracing::info!(path = %cert_path.display(), "loaded the node CA");
            return Ok(Self {
                cert_pem,
                issuer: Issuer::new(peerpod_pki::ca_params(CA_CN)?, key),
            });
        }
        let key = KeyPair::generate()?;
        let mut params = peerpod_pki::ca_params(CA_CN)?;
        peerpod_pki::set_validity(&mut params, 3650);
        let cert = params.self_signed(&key)?;
        // Key first: a crash between the two writes leaves no certificate,
        // so the next start makes a fresh pair instead of a mismatched one.
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io(&cert_path))?;
        tracing::info!(path = %cert_path.display(), "created a new node CA");
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate with a fresh key: `(cert PEM, key PEM)`.
    fn issue(
        &self,
        sans: Vec<String>,
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        peerpod_pki::set_validity(&mut p, 3650);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A server certificate for one pod VM; the result goes to the VM in
    /// its user data and is not kept on the node.
    pub fn issue_server(&self, instance_name: &str) -> Result<TlsMaterial, CaError> {
        let (cert_pem, key_pem) = self.issue(
            vec![instance_name.to_string()],
            instance_name,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        Ok(TlsMaterial {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem,
            key_pem,
        })
    }

    /// The adaptor's client TLS configuration: a fresh client certificate
    /// (issued at each start; the CA is what the VMs trust).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, CaError> {
        let id = self.issue_client()?;
        Ok(peerpod_relay::tls::client_config(
            &id.ca_cert_pem,
            &id.cert_pem,
            &id.key_pem,
        )?)
    }

    /// A fresh client identity of the adaptor (kept in memory only), for
    /// connections that need their own TLS configuration (the warm pool's
    /// bootstrap channel pins each pool VM's certificate).
    pub fn issue_client(&self) -> Result<crate::pool::bind::ClientIdentity, CaError> {
        let (cert_pem, key_pem) =
            self.issue(Vec::new(), CLIENT_CN, ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(crate::pool::bind::ClientIdentity {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem,
            key_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_survives_reload_and_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeCa::load_or_create(dir.path()).unwrap();
        let b = NodeCa::load_or_create(dir.path()).unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        let mode = std::fs::metadata(dir.path().join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A certificate issued after the reload chains to the same CA: the
        // forwarder's server config accepts the material.
        let m = b.issue_server("podvm-x-12345678").unwrap();
        assert_eq!(m.ca_cert_pem, a.cert_pem());
        peerpod_relay::tls::server_config(&m).unwrap();
        b.client_config().unwrap();
    }

    #[test]
    fn corrupt_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        NodeCa::load_or_create(dir.path()).unwrap();
        std::fs::write(dir.path().join("ca/ca.key"), "garbage").unwrap();
        let e = NodeCa::load_or_create(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ca.key"), "{e}");
    }
}
