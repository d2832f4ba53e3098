//! The Kubernetes API calls each of our binaries makes, as RBAC rules: one
//! table per component, in one place. `cloud-api-adaptor config-reference`
//! prints them into the chart's `generated/reference.json`, the chart
//! renders its Roles from that file, and the chart test compares the two,
//! so a call added in code without its rule (or a rule nothing uses) fails
//! a test. Each rule names the code that needs it.

/// One rule: API group ("" is the core group), resource, verbs, and the
/// object names it is restricted to (empty: any object; `create` cannot
/// be restricted by name in Kubernetes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub names: &'static [&'static str],
}

const fn rule(group: &'static str, resource: &'static str, verbs: &'static [&'static str]) -> Rule {
    Rule {
        group,
        resource,
        verbs,
        names: &[],
    }
}

/// The MutatingWebhookConfiguration the webhook keeps the caBundle of
/// (its `--webhook-config` default and the chart's object name).
pub const WEBHOOK_CONFIG_NAME: &str = "peerpods-webhook";
/// The Secret holding the webhook's CA (its `--ca-secret` default and the
/// name the chart's Role is restricted to).
pub const WEBHOOK_CA_SECRET_NAME: &str = "peerpods-webhook-ca";

/// What `cloud-api-adaptor` calls (cluster-wide: pods are in any namespace).
pub const ADAPTOR_RULES: &[Rule] = &[
    // pods::lookup: the pod's uid for Events and the PeerPod's ownerReference.
    rule("", "pods", &["get"]),
    // cluster_id::kube_system_uid: the default cluster id.
    rule("", "namespaces", &["get"]),
    // reporter (kube-runtime Recorder): new Events, and repeats as a series.
    rule("events.k8s.io", "events", &["create", "patch"]),
    // peerpods::create / release: create, read back, finalizer off, delete.
    rule(
        "confidentialcontainers.org",
        "peerpods",
        &["create", "get", "patch", "delete"],
    ),
];

/// What `peerpod-ctrl` calls cluster-wide (ClusterRole).
pub const CONTROLLER_RULES: &[Rule] = &[
    // The controller's watch (list + watch), the finalizer helper (patch),
    // deleting the PeerPod of a node that is gone (delete).
    rule(
        "confidentialcontainers.org",
        "peerpods",
        &["get", "list", "watch", "patch", "delete"],
    ),
    // Phase and message of what the controller did.
    rule("confidentialcontainers.org", "peerpods/status", &["patch"]),
    // Is the PeerPod's node still there?
    rule("", "nodes", &["get"]),
    // Is the PeerPod's pod still there?
    rule("", "pods", &["get"]),
];

/// What `peerpod-ctrl` calls in its own namespace (Role): the
/// leader-election Lease.
pub const CONTROLLER_NAMESPACE_RULES: &[Rule] = &[rule(
    "coordination.k8s.io",
    "leases",
    &["get", "create", "update"],
)];

/// What `peerpods-webhook` calls cluster-wide (ClusterRole): its
/// MutatingWebhookConfiguration is read and its caBundle patched
/// (`ca_secret::patch_ca_bundle`).
pub const WEBHOOK_RULES: &[Rule] = &[Rule {
    group: "admissionregistration.k8s.io",
    resource: "mutatingwebhookconfigurations",
    verbs: &["get", "patch"],
    names: &[WEBHOOK_CONFIG_NAME],
}];

/// What `peerpods-webhook` calls in its own namespace (Role): the CA
/// Secret is read and, on first start, created
/// (`ca_secret::load_or_create_ca`).
pub const WEBHOOK_NAMESPACE_RULES: &[Rule] = &[
    Rule {
        group: "",
        resource: "secrets",
        verbs: &["get"],
        names: &[WEBHOOK_CA_SECRET_NAME],
    },
    rule("", "secrets", &["create"]),
];

/// Every table by the chart's key: `<component>` is a ClusterRole,
/// `<component>-namespace` a Role in the release namespace.
pub const COMPONENTS: &[(&str, &[Rule])] = &[
    ("adaptor", ADAPTOR_RULES),
    ("controller", CONTROLLER_RULES),
    ("controller-namespace", CONTROLLER_NAMESPACE_RULES),
    ("webhook", WEBHOOK_RULES),
    ("webhook-namespace", WEBHOOK_NAMESPACE_RULES),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_verbs_and_no_secrets_or_wildcards_cluster_wide() {
        for (key, rules) in COMPONENTS {
            let mut seen = std::collections::HashSet::new();
            for r in *rules {
                assert!(
                    seen.insert((r.group, r.resource, r.verbs)),
                    "{key}: {}/{} twice",
                    r.group,
                    r.resource
                );
                for v in r.verbs {
                    assert!(
                        ["get", "list", "watch", "create", "update", "patch", "delete"].contains(v),
                        "{key}: {v}"
                    );
                }
                assert!(r.resource != "*" && r.group != "*", "{key}: wildcard");
                if !key.ends_with("-namespace") {
                    assert_ne!(r.resource, "secrets", "{key}: Secrets cluster-wide");
                }
                if !r.names.is_empty() {
                    assert!(
                        !r.verbs.contains(&"create"),
                        "{key}: create cannot be restricted by name"
                    );
                }
            }
        }
    }
}
