//! What the controller does with one PeerPod (driven by kube-runtime's
//! `Controller` and its finalizer helper, which removes [`FINALIZER`]
//! once [`cleanup`] succeeded):
//!
//! - **apply** (not being deleted): is its node still there? If the API
//!   server says the node does not exist (404, never a mere error), the
//!   PeerPod is marked `NodeGone` and deleted, which leads to cleanup.
//!   Otherwise it is looked at again after the node-check interval.
//! - **cleanup** (being deleted, finalizer still on): if the node and the
//!   pod it belongs to (same uid) both exist, the node's adaptor owns the
//!   instance: nothing is deleted, only the finalizer goes. Otherwise the
//!   instance is deleted through the provider (not found counts as
//!   deleted), then the finalizer goes. A failure is written to the
//!   PeerPod's status and retried with backoff; the finalizer stays.

use crate::CtrlError;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event};
use kube::ResourceExt;
use peerpod_kube::peerpod::phase;
use peerpod_kube::{KubeError, PeerPod, FINALIZER};
use peerpod_provider_api::{ErrorKind, Provider};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What reconciling needs.
pub struct Context {
    pub client: kube::Client,
    pub provider: Arc<dyn Provider>,
    /// How often a PeerPod's node is checked again.
    pub node_check_interval: Duration,
    /// Longest wait for one API call.
    pub request_timeout: Duration,
    /// Retry backoff bounds.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Failures in a row per PeerPod (namespace/name), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: kube::Client, provider: Arc<dyn Provider>) -> Self {
        Self {
            client,
            provider,
            node_check_interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn backoff(&self, key: &str) -> Duration {
        let n = self
            .failures
            .lock()
            .map(|mut f| {
                let n = f.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1);
        backoff_for(n, self.min_backoff, self.max_backoff)
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }
}

/// The wait after the `n`th failure in a row (n ≥ 1): doubling from `min`, at most `max`.
pub fn backoff_for(n: u32, min: Duration, max: Duration) -> Duration {
    min.saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(max)
}

fn key(pp: &PeerPod) -> String {
    format!("{}/{}", pp.namespace().unwrap_or_default(), pp.name_any())
}

async fn timed<T>(
    ctx: &Context,
    what: impl Fn() -> String,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, CtrlError> {
    match tokio::time::timeout(ctx.request_timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(KubeError::Api {
            what: what(),
            source,
        }
        .into()),
        Err(_) => Err(KubeError::Timeout {
            what: what(),
            secs: ctx.request_timeout.as_secs(),
        }
        .into()),
    }
}

/// Whether the node exists (`Ok(false)` only on the server's 404).
async fn node_exists(ctx: &Context, name: &str) -> Result<bool, CtrlError> {
    let api: kube::Api<Node> = kube::Api::all(ctx.client.clone());
    Ok(
        timed(ctx, || format!("reading node {name}"), api.get_opt(name))
            .await?
            .is_some(),
    )
}

/// Whether the PeerPod's pod exists: same name and, when the PeerPod
/// names its owner, the same uid (a new pod of the same name is another pod).
async fn pod_exists(ctx: &Context, pp: &PeerPod) -> Result<bool, CtrlError> {
    let ns = pp.namespace().unwrap_or_default();
    let api: kube::Api<Pod> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let name = &pp.spec.pod_name;
    let Some(pod) = timed(
        ctx,
        || format!("reading pod {ns}/{name}"),
        api.get_opt(name),
    )
    .await?
    else {
        return Ok(false);
    };
    let owner_uid = pp
        .owner_references()
        .iter()
        .find(|o| o.kind == "Pod" && o.name == *name)
        .map(|o| o.uid.clone());
    Ok(match owner_uid {
        Some(uid) => pod.metadata.uid.as_deref() == Some(uid.as_str()),
        None => true,
    })
}

/// Writes phase and message to the status (best effort: logged on failure).
async fn set_status(ctx: &Context, pp: &PeerPod, phase: &str, message: &str) {
    let ns = pp.namespace().unwrap_or_default();
    let api: kube::Api<PeerPod> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let message = peerpod_kube::notes::truncate(&peerpod_kube::notes::redact(message), 1024);
    let patch = serde_json::json!({"status": {"phase": phase, "message": message}});
    let r = timed(
        ctx,
        || format!("status of PeerPod {}", key(pp)),
        api.patch_status(
            &pp.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ),
    )
    .await;
    if let Err(e) = r {
        tracing::warn!(peerpod = %key(pp), error = %e, "cannot write the PeerPod's status");
    }
}

async fn apply(ctx: &Context, pp: &PeerPod) -> Result<Action, CtrlError> {
    let node = &pp.spec.node_name;
    if node_exists(ctx, node).await? {
        return Ok(Action::requeue(ctx.node_check_interval));
    }
    tracing::info!(peerpod = %key(pp), node = %node, instance_id = %pp.spec.instance_id, "the PeerPod's node is gone: deleting the PeerPod and its instance");
    set_status(
        ctx,
        pp,
        phase::NODE_GONE,
        &format!("node {node} no longer exists"),
    )
    .await;
    let ns = pp.namespace().unwrap_or_default();
    let api: kube::Api<PeerPod> = kube::Api::namespaced(ctx.client.clone(), &ns);
    match timed(
        ctx,
        || format!("deleting PeerPod {}", key(pp)),
        api.delete(&pp.name_any(), &DeleteParams::default()),
    )
    .await
    {
        Ok(_) => {}
        Err(CtrlError::Kube(e)) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    // The deletion comes back through the watch as a cleanup.
    Ok(Action::await_change())
}

async fn cleanup(ctx: &Context, pp: &PeerPod) -> Result<Action, CtrlError> {
    let id = pp.spec.instance_id.trim();
    if id.is_empty() {
        tracing::info!(peerpod = %key(pp), "PeerPod names no instance: nothing to delete");
        return Ok(Action::await_change());
    }
    if node_exists(ctx, &pp.spec.node_name).await? && pod_exists(ctx, pp).await? {
        tracing::info!(peerpod = %key(pp), node = %pp.spec.node_name, pod = %pp.spec.pod_name, "node and pod still exist: the node's adaptor owns instance {id}; only the finalizer is removed");
        return Ok(Action::await_change());
    }
    let ours = ctx.provider.name();
    if pp.spec.provider != ours {
        let e = CtrlError::OtherProvider {
            peerpod: key(pp),
            theirs: pp.spec.provider.clone(),
            ours: ours.to_string(),
        };
        set_status(ctx, pp, phase::DELETE_FAILED, &e.to_string()).await;
        return Err(e);
    }
    set_status(ctx, pp, phase::DELETING, &format!("deleting instance {id}")).await;
    match ctx.provider.delete_instance(id).await {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::NotFound => {}
        Err(source) => {
            let e = CtrlError::Delete {
                peerpod: key(pp),
                instance_id: id.to_string(),
                source,
            };
            set_status(ctx, pp, phase::DELETE_FAILED, &e.to_string()).await;
            return Err(e);
        }
    }
    tracing::info!(peerpod = %key(pp), instance_id = %id, provider = ours, "instance deleted; removing the finalizer");
    Ok(Action::await_change())
}

/// The Controller's reconcile function.
pub async fn reconcile(pp: Arc<PeerPod>, ctx: Arc<Context>) -> Result<Action, CtrlError> {
    let ns = pp.namespace().unwrap_or_default();
    let api: kube::Api<PeerPod> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let k = key(&pp);
    let c = ctx.clone();
    let r = finalizer(&api, FINALIZER, pp, |event| async move {
        match event {
            Event::Apply(pp) => apply(&c, &pp).await,
            Event::Cleanup(pp) => cleanup(&c, &pp).await,
        }
    })
    .await;
    match r {
        Ok(a) => {
            ctx.succeeded(&k);
            Ok(a)
        }
        Err(kube::runtime::finalizer::Error::ApplyFailed(e))
        | Err(kube::runtime::finalizer::Error::CleanupFailed(e)) => Err(e),
        Err(e) => Err(CtrlError::Finalizer(e.to_string())),
    }
}

/// The Controller's error policy: per-PeerPod exponential backoff.
pub fn error_policy(pp: Arc<PeerPod>, err: &CtrlError, ctx: Arc<Context>) -> Action {
    let d = ctx.backoff(&key(&pp));
    tracing::warn!(peerpod = %key(&pp), error = %err, retry_in = ?d, "reconcile failed");
    Action::requeue(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(backoff_for(1, min, max), Duration::from_secs(1));
        assert_eq!(backoff_for(4, min, max), Duration::from_secs(8));
        assert_eq!(backoff_for(40, min, max), max);
        assert_eq!(backoff_for(0, min, max), min);
    }
}
