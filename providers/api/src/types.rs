//! What the adaptor asks a provider for and what it gets back.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Tag key naming the cluster that owns an instance (absent when no
/// cluster id is configured).
pub const TAG_CLUSTER: &str = "peerpod-cluster";
/// Tag key naming the worker node that owns an instance.
pub const TAG_NODE: &str = "peerpod-node";
/// Tag key naming the sandbox an instance was created for.
pub const TAG_SANDBOX: &str = "peerpod-sandbox";

/// The owner tags an instance carries so a restarted adaptor (or the
/// orphan collector) can find it again. Node names repeat across clusters,
/// so the cluster id is part of ownership: two clusters with equal node
/// names must never collect each other's VMs. An empty `sandbox_id` in a
/// filter means "any sandbox of this node"; an empty `cluster` means no
/// cluster id is configured (the tag is neither set nor filtered on).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct OwnerTags {
    #[serde(default)]
    pub cluster: String,
    pub node: String,
    pub sandbox_id: String,
}

impl OwnerTags {
    /// Owner tags of one sandbox (or, with an empty `sandbox_id`, the
    /// filter for every instance of the node).
    pub fn new(
        cluster: impl Into<String>,
        node: impl Into<String>,
        sandbox_id: impl Into<String>,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            node: node.into(),
            sandbox_id: sandbox_id.into(),
        }
    }

    /// The same owner with another sandbox id (empty: the whole node).
    pub fn for_sandbox(&self, sandbox_id: impl Into<String>) -> Self {
        Self {
            sandbox_id: sandbox_id.into(),
            ..self.clone()
        }
    }

    /// The tags as key/value pairs; an empty cluster, node or sandbox id is
    /// left out (a filter with an empty node selects every node's instances
    /// of the cluster: what the chart's uninstall hook deletes).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if !self.cluster.is_empty() {
            m.insert(TAG_CLUSTER.to_string(), self.cluster.clone());
        }
        if !self.node.is_empty() {
            m.insert(TAG_NODE.to_string(), self.node.clone());
        }
        if !self.sandbox_id.is_empty() {
            m.insert(TAG_SANDBOX.to_string(), self.sandbox_id.clone());
        }
        m
    }

    /// Whether `tags` carries every owner tag of this filter.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.to_map().iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

/// One instance to create.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceRequest {
    /// Deterministic name, see [`crate::instance_name`].
    pub name: String,
    pub owner: OwnerTags,
    /// Extra tags from configuration (`TAGS`).
    pub extra_tags: BTreeMap<String, String>,
    /// Whole vCPUs asked for by the pod, if any.
    pub vcpus: Option<u32>,
    /// Memory in MiB asked for by the pod, if any.
    pub memory_mib: Option<u64>,
    /// Image asked for by the pod (`…hypervisor.image`), if any.
    pub image: Option<String>,
    /// Machine type asked for by the pod (`…hypervisor.machine_type`), if any.
    pub machine_type: Option<String>,
    /// GPUs asked for by the pod (`…hypervisor.default_gpus`, which the
    /// webhook writes from `nvidia.com/gpu`), if any.
    pub gpus: Option<u32>,
    /// GPU model asked for by the pod (`…hypervisor.default_gpu_model`), if any.
    pub gpu_model: Option<String>,
    /// The document the VM reads at boot. Holds the VM's TLS key: never log it.
    pub user_data: Vec<u8>,
}

impl std::fmt::Debug for InstanceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceRequest")
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("extra_tags", &self.extra_tags)
            .field("vcpus", &self.vcpus)
            .field("memory_mib", &self.memory_mib)
            .field("image", &self.image)
            .field("machine_type", &self.machine_type)
            .field("gpus", &self.gpus)
            .field("gpu_model", &self.gpu_model)
            .field(
                "user_data",
                &format_args!("<{} bytes, redacted>", self.user_data.len()),
            )
            .finish()
    }
}

impl InstanceRequest {
    /// A request for `name` owned by `owner` booting with `user_data`:
    /// no extra tags and nothing asked of the VM's size, image or GPUs
    /// (set those fields where a pod asks for them).
    pub fn new(name: impl Into<String>, owner: OwnerTags, user_data: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            owner,
            extra_tags: BTreeMap::new(),
            vcpus: None,
            memory_mib: None,
            image: None,
            machine_type: None,
            gpus: None,
            gpu_model: None,
            user_data,
        }
    }

    /// For providers that cannot give a VM GPUs: an error naming what the
    /// pod asked for, instead of a VM without them.
    pub fn refuse_gpus(&self, provider: &str) -> Result<(), crate::ProviderError> {
        match self.gpus.filter(|g| *g > 0) {
            None => Ok(()),
            Some(g) => Err(crate::ProviderError::new(
                crate::ErrorKind::InvalidRequest,
                format!(
                    "the pod asks for {g} GPU(s){} (default_gpus annotation, from nvidia.com/gpu), \
                     but the {provider} provider cannot attach GPUs to its VMs",
                    self.gpu_model
                        .as_deref()
                        .map(|m| format!(" of model {m}"))
                        .unwrap_or_default()
                ),
            )),
        }
    }

    /// Owner tags plus the configured extra tags (owner tags win).
    pub fn all_tags(&self) -> BTreeMap<String, String> {
        let mut m = self.extra_tags.clone();
        m.extend(self.owner.to_map());
        m
    }
}

/// An instance as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    /// The cloud's id for the instance; what `delete_instance` takes.
    pub id: String,
    pub name: String,
    /// Addresses the adaptor can reach the VM on, preferred first.
    pub ips: Vec<IpAddr>,
    pub tags: BTreeMap<String, String>,
    /// The instance type or size the provider chose, where it knows it.
    #[serde(default)]
    pub instance_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_filter_matches_only_its_tags() {
        let owner = OwnerTags::new("", "n1", "");
        let mut tags = BTreeMap::new();
        tags.insert(TAG_NODE.to_string(), "n1".to_string());
        tags.insert(TAG_SANDBOX.to_string(), "s".to_string());
        assert!(owner.matches(&tags));
        tags.insert(TAG_NODE.to_string(), "n2".to_string());
        assert!(!owner.matches(&tags));
    }

    #[test]
    fn cluster_id_separates_equal_node_names() {
        let a = OwnerTags::new("cluster-a", "worker-0", "");
        let b = OwnerTags::new("cluster-b", "worker-0", "");
        let made_by_a = a.for_sandbox("s1").to_map();
        assert_eq!(
            made_by_a.get(TAG_CLUSTER).map(String::as_str),
            Some("cluster-a")
        );
        assert!(a.matches(&made_by_a));
        assert!(
            !b.matches(&made_by_a),
            "cluster b must not claim cluster a's VM"
        );
        // An instance made before a cluster id was configured carries none:
        // only a filter without a cluster id claims it.
        let legacy = OwnerTags::new("", "worker-0", "s1").to_map();
        assert!(!legacy.contains_key(TAG_CLUSTER));
        assert!(!a.matches(&legacy));
        assert!(OwnerTags::new("", "worker-0", "").matches(&legacy));
    }

    #[test]
    fn a_cluster_filter_without_node_selects_every_node_of_that_cluster() {
        let all = OwnerTags::new("cluster-a", "", "");
        assert_eq!(
            all.to_map().len(),
            1,
            "only the cluster tag: {:?}",
            all.to_map()
        );
        assert!(all.matches(&OwnerTags::new("cluster-a", "worker-0", "s1").to_map()));
        assert!(all.matches(&OwnerTags::new("cluster-a", "worker-1", "s2").to_map()));
        assert!(!all.matches(&OwnerTags::new("cluster-b", "worker-0", "s1").to_map()));
        assert!(!all.matches(&OwnerTags::new("", "worker-0", "s1").to_map()));
    }

    #[test]
    fn debug_never_shows_user_data() {
        let req = InstanceRequest::new(
            "podvm-x-1",
            OwnerTags::new("", "n", "s"),
            b"-----BEGIN PRIVATE KEY-----secret".to_vec(),
        );
        let shown = format!("{req:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn gpus_are_refused_by_name() {
        let mut req = InstanceRequest::new("podvm-x-1", OwnerTags::new("", "n", "s"), Vec::new());
        assert!(req.refuse_gpus("local").is_ok());
        req.gpus = Some(0);
        assert!(req.refuse_gpus("local").is_ok(), "zero GPUs is none");
        req.gpus = Some(2);
        req.gpu_model = Some("a100".into());
        let e = req.refuse_gpus("libvirt").unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::InvalidRequest);
        assert!(
            e.message.contains("2 GPU(s) of model a100") && e.message.contains("libvirt"),
            "{}",
            e.message
        );
    }
}
