//! The `PeerPod` custom resource (`peerpods.confidentialcontainers.org`,
//! `v1alpha1`): one object per pod VM, in the pod's namespace, made by the
//! node's adaptor once the instance exists. It is owned by the Pod (so it
//! goes when the pod goes) and carries [`FINALIZER`], so its deletion
//! waits until someone has deleted the cloud instance: the adaptor when
//! its own teardown did, else `peerpod-ctrl` — also when the node and its
//! adaptor are gone for good.
//!
//! The CRD YAML under `install/` is generated from these types
//! ([`crd_yaml`]); a test keeps the two equal.

use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Held by every PeerPod until its cloud instance is deleted.
pub const FINALIZER: &str = "confidentialcontainers.org/peerpod-instance";
/// The CRD's API group.
pub const GROUP: &str = "confidentialcontainers.org";
/// Where the chart keeps the generated CRD (relative to the repository root).
pub const CRD_PATH: &str = "install/charts/peerpods/crds/peerpods.confidentialcontainers.org.yaml";

/// The pod VM a peer pod runs in.
// clippy reads the printcolumn arguments as repeated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "confidentialcontainers.org",
    version = "v1alpha1",
    kind = "PeerPod",
    plural = "peerpods",
    singular = "peerpod",
    shortname = "ppod",
    namespaced,
    status = "PeerPodStatus",
    doc = "The cloud instance (pod VM) of one peer pod. Owned by the pod; its finalizer holds it until the instance is deleted.",
    printcolumn(name = "Pod", type_ = "string", json_path = ".spec.podName"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Instance", type_ = "string", json_path = ".spec.instanceId"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.nodeName"
)]
#[serde(rename_all = "camelCase")]
pub struct PeerPodSpec {
    /// The provider that made the instance (aws, azure, gcp, libvirt, local, …); only a controller running the same provider deletes it.
    pub provider: String,
    /// The cloud's id of the instance (what the provider deletes).
    pub instance_id: String,
    /// The instance's name (podvm-<pod>-<sandbox id prefix>).
    #[serde(default)]
    pub instance_name: String,
    /// The node whose adaptor made the instance.
    pub node_name: String,
    /// The pod sandbox the instance runs.
    pub sandbox_id: String,
    /// The pod (in this PeerPod's namespace).
    pub pod_name: String,
    /// The cluster id the instance is tagged with (empty: untagged).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
}

/// What the controller last did about the instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerPodStatus {
    /// NodeGone, Deleting or DeleteFailed; unset while the instance runs undisturbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why, in words (the cloud's own message when a delete failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Status phases the controller writes.
pub mod phase {
    pub const NODE_GONE: &str = "NodeGone";
    pub const DELETING: &str = "Deleting";
    pub const DELETE_FAILED: &str = "DeleteFailed";
}

/// The CRD as YAML, exactly as committed under `install/` ([`CRD_PATH`]).
pub fn crd_yaml() -> Result<String, yaml_serde::Error> {
    let body = yaml_serde::to_string(&PeerPod::crd())?;
    Ok(format!(
        "# Generated from libs/kube/src/peerpod.rs (peerpod_kube::peerpod::crd_yaml);\n\
         # do not edit: `cargo run -p peerpod-kube --example crd > {CRD_PATH}`.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_names_and_scope() {
        let crd = PeerPod::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("peerpods.confidentialcontainers.org")
        );
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "PeerPod");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(v
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
    }

    #[test]
    fn spec_uses_camel_case_on_the_wire() {
        let s = PeerPodSpec {
            provider: "aws".into(),
            instance_id: "i-1".into(),
            instance_name: "podvm-a-1".into(),
            node_name: "n1".into(),
            sandbox_id: "s1".into(),
            pod_name: "a".into(),
            cluster_id: String::new(),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["instanceId"], "i-1");
        assert_eq!(v["nodeName"], "n1");
        assert_eq!(v["sandboxId"], "s1");
        assert_eq!(v["podName"], "a");
        assert!(v.get("clusterId").is_none(), "empty cluster id left out");
    }

    /// The committed CRD is the generated one (regenerate with the
    /// command in the file's header when the types change).
    #[test]
    fn committed_crd_is_generated() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let path = root.join(CRD_PATH);
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            committed,
            crd_yaml().unwrap(),
            "{CRD_PATH} is stale: cargo run -p peerpod-kube --example crd > {CRD_PATH}"
        );
    }
}
