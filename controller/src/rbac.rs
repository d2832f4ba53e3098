//! The Kubernetes API calls `peerpod-ctrl` makes, as RBAC rules (API
//! group, resource, verbs). The chart's rules for the controller must be
//! exactly these (its test compares them). Leases are only used in the
//! controller's own namespace (a Role there); the rest is cluster-wide.

pub use peerpod_kube::rbac::Rule;

/// Cluster-wide (ClusterRole).
pub const CONTROLLER_RULES: &[Rule] = &[
    // The controller's watch (list + watch), the finalizer helper (patch),
    // deleting the PeerPod of a node that is gone (delete).
    (
        "confidentialcontainers.org",
        "peerpods",
        &["get", "list", "watch", "patch", "delete"],
    ),
    // Phase and message of what the controller did.
    ("confidentialcontainers.org", "peerpods/status", &["patch"]),
    // Is the PeerPod's node still there?
    ("", "nodes", &["get"]),
    // Is the PeerPod's pod still there?
    ("", "pods", &["get"]),
];

/// In the controller's namespace (Role): the leader-election Lease.
pub const LEASE_RULES: &[Rule] = &[(
    "coordination.k8s.io",
    "leases",
    &["get", "create", "update"],
)];
