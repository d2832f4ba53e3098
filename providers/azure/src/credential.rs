//! Where the provider's Entra ID tokens come from, chosen the way AKS
//! workloads expect, with the official `azure_identity` crate doing the
//! token exchange:
//!
//! 1. workload identity federation when `AZURE_FEDERATED_TOKEN_FILE` is set
//!    (with `AZURE_CLIENT_ID` and `AZURE_TENANT_ID`; what the AKS workload
//!    identity webhook injects);
//! 2. a service principal's client secret when `AZURE_CLIENT_SECRET` is set
//!    (with `AZURE_CLIENT_ID` and `AZURE_TENANT_ID`);
//! 3. otherwise the node's managed identity (user-assigned when
//!    `AZURE_CLIENT_ID` is set).
//!
//! `AZURE_AUTHORITY_HOST` points the first two at another Entra ID
//! authority (sovereign clouds; the tests' local HTTPS token endpoint).
//! [`StaticToken`] hands out a fixed bearer token, for tests and tools that
//! already hold one.

use azure_core::cloud::CustomConfiguration;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, Transport};
use azure_core::time::{Duration, OffsetDateTime};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::ConfigError;
use peerpod_provider_api::settings::non_empty;

/// The identity settings as given (flags or env). The secret is never
/// printed by `Debug`.
#[derive(Clone, Default)]
pub struct RawCredentials {
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub client_secret: Option<String>,
    pub federated_token_file: Option<String>,
    /// `AZURE_AUTHORITY_HOST` (https URL), else the public cloud's.
    pub authority_host: Option<String>,
}

impl std::fmt::Debug for RawCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCredentials")
            .field("client_id", &self.client_id)
            .field("tenant_id", &self.tenant_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("federated_token_file", &self.federated_token_file)
            .field("authority_host", &self.authority_host)
            .finish()
    }
}

/// Which way tokens are obtained, for the start-up log and `--check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    WorkloadIdentity,
    ClientSecret,
    ManagedIdentity,
    Static,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::WorkloadIdentity => "workload identity (AZURE_FEDERATED_TOKEN_FILE)",
            CredentialKind::ClientSecret => "client secret (AZURE_CLIENT_SECRET)",
            CredentialKind::ManagedIdentity => "managed identity",
            CredentialKind::Static => "static bearer token",
        }
    }
}

fn identity_error(key: &'static str, e: azure_core::Error) -> ConfigError {
    // azure_identity's messages name what is missing; they never carry the
    // secret itself.
    ConfigError {
        key,
        why: e.to_string(),
    }
}

impl RawCredentials {
    /// The credential these settings select (see the module doc).
    pub fn build(&self) -> Result<(Arc<dyn TokenCredential>, CredentialKind), ConfigError> {
        self.build_with_http(None)
    }

    /// The pipeline options of the `azure_identity` credential: our
    /// authority host, and `http` as its HTTP client when given (tests: a
    /// client that trusts the local token endpoint's certificate).
    fn client_options(&self, http: Option<&reqwest::Client>) -> ClientOptions {
        let mut o = ClientOptions::default();
        if let Some(host) = non_empty(&self.authority_host) {
            let mut c = CustomConfiguration::default();
            c.authority_host = host;
            o.cloud = Some(Arc::new(c.into()));
        }
        if let Some(h) = http {
            o.transport = Some(Transport::new(Arc::new(h.clone())));
        }
        o
    }

    /// As [`Self::build`], with `http` as the token requests' HTTP client.
    pub fn build_with_http(
        &self,
        http: Option<&reqwest::Client>,
    ) -> Result<(Arc<dyn TokenCredential>, CredentialKind), ConfigError> {
        if let Some(h) = non_empty(&self.authority_host) {
            if !h.starts_with("https://") {
                return Err(ConfigError {
                    key: "AZURE_AUTHORITY_HOST",
                    why: format!("{h:?} is not an https URL"),
                });
            }
        }
        let client_id = non_empty(&self.client_id);
        let tenant_id = non_empty(&self.tenant_id);
        let need = |key: &'static str, v: &Option<String>, why: &str| {
            v.clone().ok_or_else(|| ConfigError {
                key,
                why: format!("required with {why}"),
            })
        };
        if let Some(file) = non_empty(&self.federated_token_file) {
            let client_id = need("AZURE_CLIENT_ID", &client_id, "AZURE_FEDERATED_TOKEN_FILE")?;
            let tenant_id = need("AZURE_TENANT_ID", &tenant_id, "AZURE_FEDERATED_TOKEN_FILE")?;
            let cred = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                client_id: Some(client_id),
                tenant_id: Some(tenant_id),
                token_file_path: Some(PathBuf::from(file)),
                credential_options: ClientAssertionCredentialOptions {
                    client_options: self.client_options(http),
                },
            }))
            .map_err(|e| identity_error("AZURE_FEDERATED_TOKEN_FILE", e))?;
            return Ok((cred, CredentialKind::WorkloadIdentity));
        }
        if let Some(secret) = non_empty(&self.client_secret) {
            let client_id = need("AZURE_CLIENT_ID", &client_id, "AZURE_CLIENT_SECRET")?;
            let tenant_id = need("AZURE_TENANT_ID", &tenant_id, "AZURE_CLIENT_SECRET")?;
            let options = ClientSecretCredentialOptions {
                client_options: self.client_options(http),
            };
            let cred = ClientSecretCredential::new(
                &tenant_id,
                client_id,
                Secret::new(secret),
                Some(options),
            )
            .map_err(|e| identity_error("AZURE_CLIENT_SECRET", e))?;
            return Ok((cred, CredentialKind::ClientSecret));
        }
        let cred = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
            user_assigned_id: client_id.map(UserAssignedId::ClientId),
            client_options: self.client_options(http),
        }))
        .map_err(|e| identity_error("AZURE_CLIENT_ID", e))?;
        Ok((cred, CredentialKind::ManagedIdentity))
    }
}

/// A fixed bearer token (tests, tools). Never printed by `Debug`.
pub struct StaticToken(Secret);

impl StaticToken {
    pub fn new(token: impl Into<String>) -> Arc<Self> {
        Arc::new(Self(Secret::new(token.into())))
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            self.0.clone(),
            OffsetDateTime::now_utc() + Duration::hours(1),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_follows_the_aks_order_and_names_missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "eyJ.fake.jwt").unwrap();
        let wi = RawCredentials {
            client_id: Some("00000000-0000-0000-0000-00000000000c".into()),
            tenant_id: Some("00000000-0000-0000-0000-00000000000d".into()),
            client_secret: Some("s3cret-value".into()),
            federated_token_file: Some(file.display().to_string()),
            authority_host: None,
        };
        assert_eq!(wi.build().unwrap().1, CredentialKind::WorkloadIdentity);
        let cs = RawCredentials {
            federated_token_file: None,
            ..wi.clone()
        };
        assert_eq!(cs.build().unwrap().1, CredentialKind::ClientSecret);
        let missing_tenant = RawCredentials {
            tenant_id: None,
            ..cs.clone()
        };
        let e = missing_tenant.build().unwrap_err();
        assert_eq!(e.key, "AZURE_TENANT_ID", "{e}");
        assert!(!e.to_string().contains("s3cret-value"), "{e}");
        assert!(!format!("{cs:?}").contains("s3cret-value"));
        let mi = RawCredentials::default();
        assert_eq!(mi.build().unwrap().1, CredentialKind::ManagedIdentity);
        let plain = RawCredentials {
            authority_host: Some("http://login.example".into()),
            ..cs
        };
        assert_eq!(plain.build().unwrap_err().key, "AZURE_AUTHORITY_HOST");
    }
}
