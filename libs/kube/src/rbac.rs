//! The Kubernetes API calls the adaptor's Kubernetes code makes, as RBAC
//! rules: (API group, resource, verbs). The chart's ClusterRole for the
//! adaptor must grant exactly these (its test compares the two). Each rule
//! names the code that needs it.

/// One rule: API group ("" is the core group), resource, verbs.
pub type Rule = (&'static str, &'static str, &'static [&'static str]);

/// What `cloud-api-adaptor` calls (cluster-wide: pods are in any namespace).
pub const ADAPTOR_RULES: &[Rule] = &[
    // pods::lookup: the pod's uid for Events and the PeerPod's ownerReference.
    ("", "pods", &["get"]),
    // cluster_id::kube_system_uid: the default cluster id.
    ("", "namespaces", &["get"]),
    // reporter (kube-runtime Recorder): new Events, and repeats as a series.
    ("events.k8s.io", "events", &["create", "patch"]),
    // peerpods::create / release: create, read back, finalizer off, delete.
    (
        "confidentialcontainers.org",
        "peerpods",
        &["create", "get", "patch", "delete"],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_resource_and_known_verbs() {
        let mut seen = std::collections::HashSet::new();
        for (g, r, verbs) in ADAPTOR_RULES {
            assert!(seen.insert((g, r)), "{g}/{r} twice");
            for v in *verbs {
                assert!(
                    ["get", "list", "watch", "create", "update", "patch", "delete"].contains(v),
                    "{v}"
                );
            }
        }
    }
}
