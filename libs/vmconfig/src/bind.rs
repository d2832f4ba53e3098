//! The late-binding document: what the adaptor sends a warm-pool VM's
//! forwarder at StartVM, over the bootstrap channel (mutual TLS with the
//! VM's one-time bootstrap identity), to turn it into one sandbox's VM.
//! One type for the sender and the receiver, versioned like the config.
//!
//! The wire is one ttrpc request per call on the forwarder's own port —
//! service [`SERVICE`], methods [`PING`] and [`BIND`], the payload this
//! JSON document — answered by a ttrpc response with a status. ttrpc
//! rather than HTTP because both ends already speak its framing (the
//! relay's frame code and size limit), the forwarder gains no HTTP
//! server, and a Kata client that reaches an unbound VM gets an ordinary
//! ttrpc error instead of bytes it cannot parse.

use crate::{ConfigError, ForwarderConfig};
use serde::{Deserialize, Serialize};

/// The bootstrap service's ttrpc name.
pub const SERVICE: &str = "peerpod.Bootstrap";
/// Answers OK once the VM's kata-agent accepts connections (the pool VM
/// is booted and usable).
pub const PING: &str = "Ping";
/// Applies a [`BindRequest`] and switches the forwarder to the sandbox.
pub const BIND: &str = "Bind";
/// The newest bind document this build writes and understands.
pub const BIND_FORMAT_VERSION: u32 = 1;

/// The sandbox's per-pod configuration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindRequest {
    pub format_version: u32,
    /// The sandbox's forwarder config: its server certificate (for the
    /// sandbox's instance name) and CA, sandbox id, frame limit, pod
    /// network. `listen` and `agent_socket` are the VM's own and are not
    /// taken from here.
    pub forwarder: ForwarderConfig,
    /// Registry credentials (`auth.json`). Secret: never logged.
    #[serde(default)]
    pub registry_auth: Option<String>,
    pub pod_name: String,
    pub pod_namespace: String,
}

impl std::fmt::Debug for BindRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindRequest")
            .field("format_version", &self.format_version)
            .field("forwarder", &self.forwarder)
            .field(
                "registry_auth",
                &self.registry_auth.as_ref().map(|_| "<redacted>"),
            )
            .field("pod_name", &self.pod_name)
            .field("pod_namespace", &self.pod_namespace)
            .finish()
    }
}

impl BindRequest {
    pub fn new(
        forwarder: ForwarderConfig,
        registry_auth: Option<String>,
        pod_name: impl Into<String>,
        pod_namespace: impl Into<String>,
    ) -> Self {
        Self {
            format_version: BIND_FORMAT_VERSION,
            forwarder,
            registry_auth,
            pod_name: pod_name.into(),
            pod_namespace: pod_namespace.into(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a document; names what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let r: BindRequest = crate::parse_versioned(bytes, BIND_FORMAT_VERSION)?;
        // The embedded config is checked as the forwarder would check it.
        let f = ForwarderConfig::parse(&r.forwarder.to_bytes())?;
        if f.tls.is_none() {
            return Err(ConfigError::Invalid {
                field: "forwarder.tls",
                why: "a bound VM serves its sandbox over mutual TLS only".into(),
            });
        }
        if f.bootstrap.is_some() {
            return Err(ConfigError::Invalid {
                field: "forwarder.bootstrap",
                why: "a bind cannot put the VM back into bootstrap mode".into(),
            });
        }
        if f.sandbox_id.is_empty() {
            return Err(ConfigError::Invalid {
                field: "forwarder.sandbox_id",
                why: "is empty".into(),
            });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TlsMaterial;

    fn tls() -> TlsMaterial {
        TlsMaterial {
            ca_cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----KEYBYTES".into(),
        }
    }

    #[test]
    fn round_trip_and_redacted_debug() {
        let r = BindRequest::new(
            ForwarderConfig::new("sb1", Some(tls())),
            Some("{\"auths\":{\"r\":{\"auth\":\"c2VjcmV0\"}}}".into()),
            "web",
            "default",
        );
        assert_eq!(BindRequest::parse(&r.to_bytes()).unwrap(), r);
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("c2VjcmV0") && !shown.contains("KEYBYTES"),
            "{shown}"
        );
    }

    #[test]
    fn refuses_what_a_bound_vm_must_not_get() {
        let mut r = BindRequest::new(ForwarderConfig::new("sb1", None), None, "p", "n");
        let e = BindRequest::parse(&r.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("forwarder.tls"), "{e}");
        r.forwarder = ForwarderConfig::bootstrap("pool", tls());
        let e = BindRequest::parse(&r.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("forwarder.bootstrap"), "{e}");
        r.forwarder = ForwarderConfig::new("", Some(tls()));
        let e = BindRequest::parse(&r.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("sandbox_id"), "{e}");
        r.format_version = 9;
        let e = BindRequest::parse(&r.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("format version 9"), "{e}");
        let e = BindRequest::parse(b"{nope").unwrap_err();
        assert!(matches!(e, ConfigError::Malformed(_)), "{e}");
    }
}
