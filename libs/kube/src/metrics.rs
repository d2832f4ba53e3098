//! Counters of the Kubernetes reporter, registered into the daemon's
//! Prometheus registry: Events posted and dropped (by reason), PeerPod
//! operations by outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why an Event was not posted.
pub mod drop_reason {
    /// The reporter's queue was full (the API is slow or down).
    pub const QUEUE_FULL: &str = "queue_full";
    /// The pod used its burst.
    pub const RATE_PER_POD: &str = "rate_limited_pod";
    /// The node used its burst.
    pub const RATE_GLOBAL: &str = "rate_limited_global";
    /// The API server refused or did not answer.
    pub const API_ERROR: &str = "api_error";
    /// The API server failed recently: not tried again yet.
    pub const API_DOWN: &str = "api_down";
    /// The pod no longer exists.
    pub const POD_GONE: &str = "pod_gone";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
    pub outcome: String,
}

/// Cheap to clone: every clone counts into the same metrics.
#[derive(Clone, Default, Debug)]
pub struct KubeMetrics {
    pub events_posted: Counter,
    pub events_dropped: Family<ReasonLabel, Counter>,
    pub peerpod_ops: Family<OpLabels, Counter>,
}

impl KubeMetrics {
    /// Adds the metrics to `registry` (names get the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_events_posted",
            "Kubernetes Events posted on pods",
            self.events_posted.clone(),
        );
        registry.register(
            "kube_events_dropped",
            "Kubernetes Events not posted, by reason",
            self.events_dropped.clone(),
        );
        registry.register(
            "peerpod_objects",
            "PeerPod object operations (create, release) by outcome",
            self.peerpod_ops.clone(),
        );
    }

    pub fn dropped(&self, reason: &str) {
        self.events_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Events dropped for `reason` so far.
    pub fn dropped_count(&self, reason: &str) -> u64 {
        self.events_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    pub fn peerpod_op(&self, op: &str, outcome: &str) {
        self.peerpod_ops
            .get_or_create(&OpLabels {
                op: op.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }
}
