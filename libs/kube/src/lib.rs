//! The Kubernetes side of peer pods, shared by the node daemon
//! (`cloud-api-adaptor`) and the cleanup controller (`peerpod-ctrl`):
//!
//! - [`reporter`]: a background worker that posts Events on the pod a
//!   sandbox belongs to (VM creating, running, failed, deleted) and keeps
//!   the sandbox's [`peerpod::PeerPod`] object, without ever making the
//!   caller wait (bounded queue, rate limits, drops when the API is away);
//! - [`peerpod`]: the `PeerPod` custom resource and its CRD;
//! - [`cluster_id`]: the default cluster id (the `kube-system` namespace's uid);
//! - [`client`]: when and how to reach the API server (in-cluster or a kubeconfig);
//! - [`rbac`]: the API calls the adaptor makes, as one table the chart is checked against.

pub mod client;
pub mod cluster_id;
pub mod error;
pub mod metrics;
pub mod notes;
pub mod peerpod;
pub mod peerpods;
pub mod pods;
pub mod ratelimit;
pub mod rbac;
pub mod reporter;

pub use error::KubeError;
pub use peerpod::{PeerPod, PeerPodSpec, PeerPodStatus, FINALIZER};
pub use reporter::{Activity, Notice, Reporter, ReporterConfig};
