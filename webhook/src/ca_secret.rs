//! The Kubernetes side of the webhook's TLS: one CA shared by every
//! replica, kept in a Secret created once (create-if-absent: the replica
//! whose create loses with 409 AlreadyExists reads the winner's), and the
//! CA certificate written into the caBundle of each webhook of our
//! MutatingWebhookConfiguration. Both replicas then write the same value,
//! so they never fight over it.

use crate::tls::{TlsError, WebhookCa};
use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::BTreeMap;

/// Secret keys of the CA pair.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";

/// Why the CA or the caBundle could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("secret {0} lacks {1}")]
    Incomplete(String, &'static str),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("secret {0} kept changing while it was being created")]
    Race(String),
    #[error("mutatingwebhookconfiguration {0} has no webhooks to put the caBundle in")]
    NoWebhooks(String),
}

impl CaSecretError {
    /// HTTP status of an API error, if it is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api {
                source: kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }
}

fn api_err(what: String) -> impl FnOnce(kube::Error) -> CaSecretError {
    move |source| CaSecretError::Api { what, source }
}

fn from_secret(s: &Secret, name: &str) -> Result<WebhookCa, CaSecretError> {
    let data = s.data.as_ref();
    let get = |k: &'static str| {
        data.and_then(|d| d.get(k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| CaSecretError::Incomplete(name.to_string(), k))
    };
    Ok(WebhookCa::from_pem(
        &get(CA_CERT_KEY)?,
        &get(CA_KEY_KEY)?,
        &format!("secret {name}"),
    )?)
}

/// Reads the CA from `namespace/name`, creating it when absent.
pub async fn load_or_create_ca(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<WebhookCa, CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let full = format!("{namespace}/{name}");
    for _ in 0..3 {
        if let Some(s) = api
            .get_opt(name)
            .await
            .map_err(api_err(format!("reading secret {full}")))?
        {
            tracing::info!(secret = %full, "using the webhook CA from its secret");
            return from_secret(&s, &full);
        }
        let ca = WebhookCa::generate()?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "peerpods-webhook".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([
                (
                    CA_CERT_KEY.to_string(),
                    ByteString(ca.cert_pem().as_bytes().to_vec()),
                ),
                (
                    CA_KEY_KEY.to_string(),
                    ByteString(ca.key_pem().as_bytes().to_vec()),
                ),
            ])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %full, "created the webhook CA and its secret");
                return Ok(ca);
            }
            // Another replica created it first: use theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(secret = %full, "another replica created the CA secret first");
                continue;
            }
            Err(e) => return Err(api_err(format!("creating secret {full}"))(e)),
        }
    }
    Err(CaSecretError::Race(full))
}

/// The JSON Patch operations that set `ca_pem` as the caBundle of every
/// webhook of `config` not already carrying it: each guarded by a `test`
/// of the webhook's name at that index, so a concurrent edit of the list
/// fails the patch instead of writing into the wrong entry.
pub fn ca_bundle_ops(
    config: &MutatingWebhookConfiguration,
    ca_pem: &str,
) -> Vec<serde_json::Value> {
    let want = ca_pem.as_bytes();
    let encoded = base64::engine::general_purpose::STANDARD.encode(want);
    let mut ops = Vec::new();
    for (i, w) in config.webhooks.iter().flatten().enumerate() {
        if w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(want) {
            continue;
        }
        ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name}));
        ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
    }
    ops
}

/// Puts `ca_pem` into the caBundle of every webhook of the configuration
/// `name`. Returns how many webhooks were changed (0: already current).
pub async fn patch_ca_bundle(
    client: &Client,
    name: &str,
    ca_pem: &str,
) -> Result<usize, CaSecretError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("mutatingwebhookconfiguration {name}");
    let config = api
        .get(name)
        .await
        .map_err(api_err(format!("reading {what}")))?;
    if config.webhooks.as_ref().is_none_or(Vec::is_empty) {
        return Err(CaSecretError::NoWebhooks(name.into()));
    }
    let ops = ca_bundle_ops(&config, ca_pem);
    if ops.is_empty() {
        return Ok(0);
    }
    let changed = ops.len() / 2;
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(|e| {
            api_err(format!("building the patch of {what}"))(kube::Error::SerdeError(e))
        })?;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(api_err(format!("patching the caBundle of {what}")))?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same file the API stand-in of tests/ serves.
    const MWC: &str = include_str!("../testdata/mutatingwebhookconfiguration.json");

    /// The Status bodies the API stand-in of tests/ answers errors with
    /// parse as the kube client parses them, with the codes our retry and
    /// create-race logic keys on.
    #[test]
    fn status_fixtures_carry_the_codes_we_branch_on() {
        for (file, code) in [
            (include_str!("../testdata/status-notfound.json"), 404),
            (include_str!("../testdata/status-alreadyexists.json"), 409),
            (include_str!("../testdata/status-forbidden.json"), 403),
            (include_str!("../testdata/status-invalid.json"), 422),
        ] {
            let s: kube::core::Status = serde_json::from_str(file).unwrap();
            assert_eq!(s.code, code);
        }
    }

    #[test]
    fn ops_cover_each_webhook_not_yet_current() {
        let mut config: MutatingWebhookConfiguration = serde_json::from_str(MWC).unwrap();
        let n = config.webhooks.as_ref().unwrap().len();
        assert!(n >= 2, "fixture has several webhooks");
        let ops = ca_bundle_ops(&config, "PEM");
        assert_eq!(ops.len(), 2 * n);
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[1]["path"], "/webhooks/0/clientConfig/caBundle");
        assert_eq!(ops[1]["value"], "UEVN");
        config.webhooks.as_mut().unwrap()[0].client_config.ca_bundle =
            Some(ByteString(b"PEM".to_vec()));
        assert_eq!(ca_bundle_ops(&config, "PEM").len(), 2 * (n - 1));
    }
}
