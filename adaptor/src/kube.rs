//! The adaptor's Kubernetes wiring: when a kubeconfig is given or the
//! adaptor runs in a pod, sandbox life-cycle events become Events on the
//! pod and PeerPod objects (through `peerpod-kube`'s reporter, which never
//! blocks the manager), and the cluster id defaults to the `kube-system`
//! namespace's uid. Off otherwise, said once at start-up.

use crate::config::AdaptorConfig;
use crate::lifecycle::{EventKind, SandboxEvent, SandboxObserver};
use peerpod_kube::client::{detect, KubeAccess};
use peerpod_kube::metrics::KubeMetrics;
use peerpod_kube::{Activity, KubeError, Notice, Reporter, ReporterConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait at start-up for the cluster id (the API server may be
/// coming up with the node).
const CLUSTER_ID_PATIENCE: Duration = Duration::from_secs(60);
const CLUSTER_ID_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The Kubernetes flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// A kubeconfig for Events and PeerPods (default: the pod's service account when KUBERNETES_SERVICE_HOST is set; otherwise off).
    #[arg(long, env = "PEERPOD_KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// No Kubernetes integration even in a cluster (no Events, no PeerPods, no default cluster id).
    #[arg(long, env = "PEERPOD_NO_KUBE", global = true)]
    pub no_kube: bool,
}

/// Why the Kubernetes side could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSetupError {
    #[error("Kubernetes client ({access}): {source}")]
    Client { access: String, source: KubeError },
    #[error(
        "no cluster id given and the default (the uid of namespace kube-system) cannot be read: \
         {source}. Grant the adaptor `get` on `namespaces` or pass --cluster-id / PEERPOD_CLUSTER_ID"
    )]
    ClusterId { source: KubeError },
}

/// What the daemon plugs in.
pub struct KubeParts {
    pub observer: Arc<dyn SandboxObserver>,
    pub metrics: KubeMetrics,
    pub access: KubeAccess,
}

/// Hands every sandbox event to the reporter (a queue; never blocks).
pub struct KubeObserver {
    reporter: Reporter,
}

impl KubeObserver {
    pub fn new(reporter: Reporter) -> Self {
        Self { reporter }
    }
}

impl SandboxObserver for KubeObserver {
    fn on_event(&self, ev: &SandboxEvent) {
        self.reporter.notify(notice(ev));
    }
}

/// The reporter's notice for a manager event.
pub fn notice(ev: &SandboxEvent) -> Notice {
    let activity = match &ev.kind {
        EventKind::Creating {
            provider,
            vcpus,
            memory_mib,
        } => Activity::Creating {
            provider: provider.clone(),
            vcpus: *vcpus,
            memory_mib: *memory_mib,
        },
        EventKind::InstanceCreated { instance_id, .. } => Activity::InstanceCreated {
            instance_id: instance_id.clone(),
        },
        EventKind::Running {
            took,
            instance_id,
            instance_type,
            ip,
        } => Activity::Running {
            took: *took,
            instance_id: instance_id.clone(),
            instance_type: instance_type.clone(),
            ip: *ip,
        },
        EventKind::StartFailed { phase, message } => Activity::StartFailed {
            phase: (*phase).to_string(),
            message: message.clone(),
        },
        EventKind::Deleted { instance_id } => Activity::Deleted {
            instance_id: instance_id.clone(),
        },
    };
    Notice {
        sandbox_id: ev.sandbox_id.clone(),
        pod: ev.pod.clone(),
        namespace: ev.namespace.clone(),
        instance_name: ev.instance_name.clone(),
        activity,
    }
}

/// Connects when Kubernetes is on (see the module doc), fills in the
/// default cluster id and starts the reporter. `Ok(None)`: off.
pub async fn setup(
    args: &KubeArgs,
    cfg: &mut AdaptorConfig,
    provider: &str,
) -> Result<Option<KubeParts>, KubeSetupError> {
    let access = if args.no_kube {
        None
    } else {
        detect(args.kubeconfig.as_deref())
    };
    let Some(access) = access else {
        tracing::info!(
            "Kubernetes integration off (no --kubeconfig, not in a pod{}): no Events on pods, no PeerPod objects",
            if args.no_kube { ", or --no-kube" } else { "" }
        );
        return Ok(None);
    };
    let client = peerpod_kube::client::client(&access)
        .await
        .map_err(|source| KubeSetupError::Client {
            access: access.to_string(),
            source,
        })?;
    if cfg.cluster_id.is_empty() {
        cfg.cluster_id = peerpod_kube::cluster_id::kube_system_uid_retrying(
            &client,
            CLUSTER_ID_CALL_TIMEOUT,
            CLUSTER_ID_PATIENCE,
        )
        .await
        .map_err(|source| KubeSetupError::ClusterId { source })?;
        tracing::info!(cluster_id = %cfg.cluster_id, "cluster id: the uid of namespace kube-system");
    }
    let mut rc = ReporterConfig::new(cfg.node_name.clone(), provider);
    rc.cluster_id = cfg.cluster_id.clone();
    let metrics = KubeMetrics::default();
    let reporter = Reporter::start(client, rc, metrics.clone());
    tracing::info!(%access, "Kubernetes integration on: Events on pods, PeerPod objects");
    Ok(Some(KubeParts {
        observer: Arc::new(KubeObserver::new(reporter)),
        metrics,
        access,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manager_event_maps_to_its_notice() {
        let ev = |kind| SandboxEvent {
            sandbox_id: "s".into(),
            pod: "p".into(),
            namespace: "ns".into(),
            instance_name: "podvm-p-s".into(),
            kind,
        };
        let n = notice(&ev(EventKind::StartFailed {
            phase: "agent ready",
            message: "boom".into(),
        }));
        assert_eq!(
            (n.sandbox_id.as_str(), n.pod.as_str(), n.namespace.as_str()),
            ("s", "p", "ns")
        );
        assert_eq!(
            n.activity,
            Activity::StartFailed {
                phase: "agent ready".into(),
                message: "boom".into()
            }
        );
        let n = notice(&ev(EventKind::InstanceCreated {
            instance_id: "i-1".into(),
            instance_type: None,
            ip: None,
            took: Duration::from_secs(1),
        }));
        assert_eq!(
            n.activity,
            Activity::InstanceCreated {
                instance_id: "i-1".into()
            }
        );
    }

    #[tokio::test]
    async fn no_kube_flag_turns_it_off() {
        let mut cfg = AdaptorConfig::new("n");
        let args = KubeArgs {
            kubeconfig: Some("/nonexistent".into()),
            no_kube: true,
        };
        assert!(setup(&args, &mut cfg, "local").await.unwrap().is_none());
        assert_eq!(cfg.cluster_id, "");
    }
}
