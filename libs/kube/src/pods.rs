//! Finds the pod a sandbox belongs to. The CreateVM annotations name it
//! (namespace and name) but do not carry its uid, and both an Event that
//! `kubectl describe pod` lists (it selects on `involvedObject.uid`) and
//! an ownerReference need the uid: one GET of the pod gives it.

use crate::error::call;
use crate::KubeError;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use std::time::Duration;

/// The facts about a pod the reporter uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    /// The `regarding` / `involvedObject` of an Event on the pod.
    pub fn object_reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: Some(self.uid.clone()),
            ..Default::default()
        }
    }

    /// An ownerReference to the pod, so its deletion takes the dependent
    /// with it. Not `blockOwnerDeletion` (that needs `update` on
    /// `pods/finalizers`, and nothing should hold up the pod's deletion).
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: None,
            block_owner_deletion: None,
        }
    }
}

/// GETs the pod; `Ok(None)` when it does not exist.
pub async fn lookup(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Option<PodRef>, KubeError> {
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let pod = call(
        || format!("reading pod {namespace}/{name}"),
        timeout,
        api.get_opt(name),
    )
    .await?;
    let Some(pod) = pod else { return Ok(None) };
    let uid = pod
        .metadata
        .uid
        .filter(|u| !u.is_empty())
        .ok_or_else(|| KubeError::Invalid {
            what: format!("pod {namespace}/{name}"),
            message: "the API server returned it without a uid".into(),
        })?;
    Ok(Some(PodRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid,
    }))
}
