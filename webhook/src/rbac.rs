//! The Kubernetes API calls the webhook makes, as RBAC rules: the chart's
//! Role/ClusterRole must grant exactly these (its test asserts against
//! this table).

/// One RBAC rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// API group ("" for the core group).
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// Namespaced rules go in a Role in the webhook's namespace; the others
    /// in a ClusterRole.
    pub namespaced: bool,
    /// Whether the rule can be restricted to the configured object name
    /// (`resourceNames`): `create` cannot be.
    pub named: bool,
}

/// Every call the code makes: the CA Secret is read and, on first start,
/// created ([`crate::ca_secret::load_or_create_ca`]); the
/// MutatingWebhookConfiguration is read and its caBundle patched
/// ([`crate::ca_secret::patch_ca_bundle`]).
pub const RBAC: &[Rule] = &[
    Rule {
        api_group: "",
        resource: "secrets",
        verbs: &["get"],
        namespaced: true,
        named: true,
    },
    Rule {
        api_group: "",
        resource: "secrets",
        verbs: &["create"],
        namespaced: true,
        named: false,
    },
    Rule {
        api_group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["get", "patch"],
        namespaced: false,
        named: true,
    },
];
