//! The forwarder's configuration: what the adaptor puts in a pod VM's user
//! data and the forwarder reads at start. One type for both sides, so the
//! two cannot drift; a `format_version` so that an old pod VM image given a
//! newer document says so plainly instead of failing in silence.

pub mod bind;
pub mod userdata;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The newest document format this build understands. A document carries
/// the lowest version its content needs: a sandbox's config is version 1
/// (every released pod VM image reads it), a pool VM's bootstrap config is
/// version 2, so an image that predates the warm pool refuses it plainly
/// instead of serving with the bootstrap identity.
pub const FORMAT_VERSION: u32 = 2;
/// The version of a config without bootstrap settings.
pub const BASE_FORMAT_VERSION: u32 = 1;
/// The version a bootstrap (pool VM) config needs.
pub const BOOTSTRAP_FORMAT_VERSION: u32 = 2;
/// The forwarder's default listen address in the VM.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:15150";
/// The forwarder's TCP port, which the adaptor dials.
pub const DEFAULT_PORT: u16 = 15150;
/// Where the kata-agent listens inside the VM.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/kata-containers/agent.sock";
/// Largest document we accept (cloud user-data limits are 16–64 KiB).
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Why a configuration document was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("forwarder config is {0} bytes, more than the {MAX_DOCUMENT_BYTES} allowed")]
    TooLarge(usize),
    #[error("forwarder config is not valid JSON for format version {FORMAT_VERSION}: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "forwarder config has format version {found}, but this forwarder understands only up to \
         {FORMAT_VERSION}: the pod VM image is older than the adaptor, rebuild or update it"
    )]
    UnsupportedVersion { found: u32 },
    #[error("forwarder config field `{field}` is invalid: {why}")]
    Invalid { field: &'static str, why: String },
}

/// PEM material for mutual TLS on the forwarder's listener.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsMaterial {
    /// The node CA certificate: clients must present a certificate it signed.
    pub ca_cert_pem: String,
    /// This VM's server certificate, signed by the node CA.
    pub cert_pem: String,
    /// This VM's private key. Secret: never logged.
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field(
                "ca_cert_pem",
                &format_args!("<{} bytes>", self.ca_cert_pem.len()),
            )
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The document itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwarderConfig {
    pub format_version: u32,
    /// Address the forwarder listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The kata-agent's unix socket.
    #[serde(default = "default_agent_socket")]
    pub agent_socket: PathBuf,
    /// Mutual TLS material; `None` only when the operator turned TLS off.
    #[serde(default)]
    pub tls: Option<TlsMaterial>,
    /// The sandbox this VM serves (for logs).
    #[serde(default)]
    pub sandbox_id: String,
    /// Largest ttrpc frame payload relayed, in bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: u32,
    /// The pod's network, rebuilt in the VM's pod namespace; `None` when
    /// the sandbox has no pod network.
    #[serde(default)]
    pub pod_network: Option<peerpod_podnet::PodNetwork>,
    /// Set on a warm-pool VM: `tls` is then its one-time bootstrap
    /// identity, and the forwarder serves only the bootstrap service
    /// ([`bind`]) until the adaptor binds it to a sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSettings>,
}

/// What marks a pool VM's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapSettings {
    /// The pool VM's name (its bootstrap certificate is issued for it).
    pub pool_vm: String,
}

/// Parses a JSON document with a `format_version` field: bounded in size,
/// and the version read first, so a newer document whose fields we cannot
/// parse still gets the version error (versions 1 to `newest` accepted).
pub(crate) fn parse_versioned<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    newest: u32,
) -> Result<T, ConfigError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(ConfigError::TooLarge(bytes.len()));
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        format_version: u32,
    }
    let v: VersionOnly = serde_json::from_slice(bytes)?;
    if v.format_version > newest || v.format_version == 0 {
        return Err(ConfigError::UnsupportedVersion {
            found: v.format_version,
        });
    }
    Ok(serde_json::from_slice(bytes)?)
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}
fn default_agent_socket() -> PathBuf {
    PathBuf::from(DEFAULT_AGENT_SOCKET)
}
fn default_max_frame() -> u32 {
    4 << 20
}

impl ForwarderConfig {
    /// A document with defaults for everything but TLS and the sandbox id.
    pub fn new(sandbox_id: impl Into<String>, tls: Option<TlsMaterial>) -> Self {
        Self {
            format_version: BASE_FORMAT_VERSION,
            listen: default_listen(),
            agent_socket: default_agent_socket(),
            tls,
            sandbox_id: sandbox_id.into(),
            max_frame_bytes: default_max_frame(),
            pod_network: None,
            bootstrap: None,
        }
    }

    /// A pool VM's config: serves only the bootstrap service, with the
    /// one-time identity `tls` (server certificate for `pool_vm`, and the
    /// node CA its clients must chain to).
    pub fn bootstrap(pool_vm: impl Into<String>, tls: TlsMaterial) -> Self {
        let mut c = Self::new(String::new(), Some(tls));
        c.format_version = BOOTSTRAP_FORMAT_VERSION;
        c.bootstrap = Some(BootstrapSettings {
            pool_vm: pool_vm.into(),
        });
        c
    }

    /// Parses and checks a document. The version is read first, so a newer
    /// document whose fields we cannot parse still gets the version error.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let cfg: ForwarderConfig = parse_versioned(bytes, FORMAT_VERSION)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                field: "listen",
                why: format!("{:?} is not an address:port", self.listen),
            });
        }
        if !self.agent_socket.is_absolute() {
            return Err(ConfigError::Invalid {
                field: "agent_socket",
                why: format!("{:?} is not an absolute path", self.agent_socket),
            });
        }
        if self.max_frame_bytes < 4096 {
            return Err(ConfigError::Invalid {
                field: "max_frame_bytes",
                why: format!("{} is below the 4096-byte minimum", self.max_frame_bytes),
            });
        }
        if let Some(b) = &self.bootstrap {
            if self.format_version < BOOTSTRAP_FORMAT_VERSION {
                return Err(ConfigError::Invalid {
                    field: "bootstrap",
                    why: format!(
                        "needs format version {BOOTSTRAP_FORMAT_VERSION}, the document says {}",
                        self.format_version
                    ),
                });
            }
            if self.tls.is_none() {
                return Err(ConfigError::Invalid {
                    field: "bootstrap",
                    why: "a pool VM needs its bootstrap TLS identity (tls is missing)".into(),
                });
            }
            if b.pool_vm.is_empty() {
                return Err(ConfigError::Invalid {
                    field: "bootstrap.pool_vm",
                    why: "is empty".into(),
                });
            }
            if self.pod_network.is_some() {
                return Err(ConfigError::Invalid {
                    field: "pod_network",
                    why: "a pool VM gets its pod network when it is bound, not at boot".into(),
                });
            }
        }
        if let Some(tls) = &self.tls {
            for (field, pem) in [
                ("tls.ca_cert_pem", &tls.ca_cert_pem),
                ("tls.cert_pem", &tls.cert_pem),
                ("tls.key_pem", &tls.key_pem),
            ] {
                if !pem.contains("-----BEGIN ") {
                    return Err(ConfigError::Invalid {
                        field,
                        why: "is not PEM".to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The document as bytes, ready to become user data.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = ForwarderConfig::new("sb1", None);
        assert_eq!(ForwarderConfig::parse(&c.to_bytes()).unwrap(), c);
    }

    #[test]
    fn newer_version_is_named() {
        let e = ForwarderConfig::parse(br#"{"format_version": 7, "whatever": {"new": 1}}"#)
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("format version 7"), "{msg}");
        assert!(msg.contains("pod VM image"), "{msg}");
    }

    #[test]
    fn malformed_and_missing_version() {
        assert!(matches!(
            ForwarderConfig::parse(b"{not json"),
            Err(ConfigError::Malformed(_))
        ));
        assert!(matches!(
            ForwarderConfig::parse(b"{}"),
            Err(ConfigError::Malformed(_))
        ));
    }

    #[test]
    fn bad_fields_are_named() {
        let e = ForwarderConfig::parse(br#"{"format_version":1,"listen":"nowhere"}"#).unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
        let e = ForwarderConfig::parse(br#"{"format_version":1,"agent_socket":"rel/a.sock"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("`agent_socket`"), "{e}");
        let e = ForwarderConfig::parse(
            br#"{"format_version":1,"tls":{"ca_cert_pem":"x","cert_pem":"y","key_pem":"z"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("tls.ca_cert_pem"), "{e}");
    }

    #[test]
    fn oversized_document_is_refused() {
        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert!(matches!(
            ForwarderConfig::parse(&big),
            Err(ConfigError::TooLarge(_))
        ));
    }

    fn tls() -> TlsMaterial {
        TlsMaterial {
            ca_cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        }
    }

    #[test]
    fn sandbox_configs_stay_version_1_for_old_images() {
        let c = ForwarderConfig::new("sb1", Some(tls()));
        assert_eq!(c.format_version, 1);
        let text = String::from_utf8(c.to_bytes()).unwrap();
        assert!(!text.contains("bootstrap"), "{text}");
    }

    #[test]
    fn bootstrap_config_round_trips_and_needs_version_2_and_tls() {
        let c = ForwarderConfig::bootstrap("podvm-pool-1", tls());
        assert_eq!(c.format_version, BOOTSTRAP_FORMAT_VERSION);
        assert_eq!(ForwarderConfig::parse(&c.to_bytes()).unwrap(), c);
        let mut v1 = c.clone();
        v1.format_version = 1;
        let e = ForwarderConfig::parse(&v1.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("`bootstrap`"), "{e}");
        let mut no_tls = c.clone();
        no_tls.tls = None;
        let e = ForwarderConfig::parse(&no_tls.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("bootstrap TLS identity"), "{e}");
    }

    #[test]
    fn a_v1_forwarder_would_refuse_a_bootstrap_config() {
        // What an image built before the warm pool checks: the version.
        let c = ForwarderConfig::bootstrap("podvm-pool-1", tls());
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: u32,
        }
        let v: VersionOnly = serde_json::from_slice(&c.to_bytes()).unwrap();
        assert!(v.format_version > BASE_FORMAT_VERSION);
    }

    #[test]
    fn debug_redacts_the_key() {
        let c = ForwarderConfig::new(
            "s",
            Some(TlsMaterial {
                ca_cert_pem: "-----BEGIN CERTIFICATE-----".into(),
                cert_pem: "-----BEGIN CERTIFICATE-----".into(),
                key_pem: "-----BEGIN PRIVATE KEY-----SECRETBYTES".into(),
            }),
        );
        assert!(!format!("{c:?}").contains("SECRETBYTES"));
    }
}
