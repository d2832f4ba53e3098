//! The default cluster id: the uid of the `kube-system` namespace. Every
//! cluster has that namespace, its uid is set once when the cluster is
//! made and never changes, and two clusters never share it — so instances
//! tagged with it are never collected by another cluster's adaptor that
//! happens to have a node of the same name. Reading it needs `get` on
//! `namespaces` (cluster scope).

use crate::error::call;
use crate::KubeError;
use k8s_openapi::api::core::v1::Namespace;
use std::time::Duration;

/// The namespace whose uid is the cluster id.
pub const CLUSTER_ID_NAMESPACE: &str = "kube-system";

/// Reads the `kube-system` namespace's uid.
pub async fn kube_system_uid(
    client: &kube::Client,
    timeout: Duration,
) -> Result<String, KubeError> {
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let what = || format!("reading the cluster id (namespace {CLUSTER_ID_NAMESPACE})");
    let ns = call(what, timeout, api.get(CLUSTER_ID_NAMESPACE)).await?;
    ns.metadata
        .uid
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| KubeError::Invalid {
            what: what(),
            message: "the namespace has no uid".into(),
        })
}

/// [`kube_system_uid`], retried with backoff for up to `patience` (the API
/// server may still be coming up when a node boots). Errors that retrying
/// cannot fix (forbidden, not found) end it at once.
pub async fn kube_system_uid_retrying(
    client: &kube::Client,
    timeout: Duration,
    patience: Duration,
) -> Result<String, KubeError> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match kube_system_uid(client, timeout).await {
            Ok(id) => return Ok(id),
            Err(e) if matches!(e.status(), Some(401 | 403 | 404)) => return Err(e),
            Err(e) if started.elapsed() + backoff > patience => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cluster id not read yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
