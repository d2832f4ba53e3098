//! The controller's error type.

use peerpod_kube::KubeError;
use peerpod_provider_api::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum CtrlError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("deleting instance {instance_id} of PeerPod {peerpod}: {source}")]
    Delete {
        peerpod: String,
        instance_id: String,
        #[source]
        source: ProviderError,
    },
    #[error(
        "PeerPod {peerpod} was made by provider {theirs}; this controller runs {ours}: \
         not deleting its instance (run a controller with that provider)"
    )]
    OtherProvider {
        peerpod: String,
        theirs: String,
        ours: String,
    },
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("the leader lease {0} was lost (another controller took over, or the API server was unreachable past the renew deadline)")]
    LostLease(String),
    #[error("the controller stopped unexpectedly")]
    Stopped,
}
