//! Making and letting go of PeerPod objects. The adaptor creates one once
//! its instance exists (owned by the pod, holding [`FINALIZER`]) and
//! releases it when its own teardown has deleted the instance: finalizer
//! off first, then the object deleted — so `peerpod-ctrl` never sees a
//! deleting PeerPod whose instance the adaptor already took care of.

use crate::error::call;
use crate::peerpod::{PeerPod, PeerPodSpec, FINALIZER};
use crate::pods::PodRef;
use crate::KubeError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use std::time::Duration;

/// Label on every PeerPod naming its node (for `kubectl get -l`).
pub const NODE_LABEL: &str = "confidentialcontainers.org/node";

/// A Kubernetes object name (DNS-1123 subdomain) for the PeerPod of
/// `instance_name`: instance names are already lower-case DNS labels on
/// every provider, this only guards against a surprise.
pub fn object_name(instance_name: &str, sandbox_id: &str) -> String {
    let clean: String = instance_name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(253)
        .collect();
    let clean = clean.trim_matches(|c: char| c == '-' || c == '.');
    if clean.is_empty() {
        let id: String = sandbox_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(16)
            .collect::<String>()
            .to_ascii_lowercase();
        format!("podvm-{id}")
    } else {
        clean.to_string()
    }
}

/// Label values are at most 63 characters of [A-Za-z0-9._-], starting and
/// ending alphanumeric; node names longer than that get no label.
fn label_value(v: &str) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    ok.then(|| v.to_string())
}

/// The PeerPod object for `spec`, owned by `pod`.
pub fn build(pod: &PodRef, name: &str, spec: PeerPodSpec) -> PeerPod {
    let labels =
        label_value(&spec.node_name).map(|n| [(NODE_LABEL.to_string(), n)].into_iter().collect());
    PeerPod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(pod.namespace.clone()),
            owner_references: Some(vec![pod.owner_reference()]),
            finalizers: Some(vec![FINALIZER.to_string()]),
            labels,
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// What [`create`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created,
    /// Already there for the same sandbox (an earlier try went through).
    AlreadyThere,
}

/// Creates the PeerPod; an existing one for the same sandbox is success,
/// one for another sandbox is an error.
pub async fn create(
    client: &kube::Client,
    obj: &PeerPod,
    timeout: Duration,
) -> Result<Created, KubeError> {
    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let api: kube::Api<PeerPod> = kube::Api::namespaced(client.clone(), ns);
    let what = || format!("creating PeerPod {ns}/{name}");
    match call(what, timeout, api.create(&PostParams::default(), obj)).await {
        Ok(_) => Ok(Created::Created),
        Err(e) if e.is_conflict() => {
            let existing = call(
                || format!("reading PeerPod {ns}/{name}"),
                timeout,
                api.get(name),
            )
            .await?;
            if existing.spec.sandbox_id == obj.spec.sandbox_id {
                Ok(Created::AlreadyThere)
            } else {
                Err(KubeError::Invalid {
                    what: what(),
                    message: format!(
                        "a PeerPod of that name exists for another sandbox ({})",
                        existing.spec.sandbox_id
                    ),
                })
            }
        }
        Err(e) => Err(e),
    }
}

/// JSON patch removing `finalizer` from `obj`, guarded by a test so a
/// concurrent change of the list makes it fail (409/422) instead of
/// removing someone else's entry. `None` when the finalizer is not there.
pub fn remove_finalizer_patch(obj: &PeerPod, finalizer: &str) -> Option<serde_json::Value> {
    let idx = obj
        .metadata
        .finalizers
        .as_ref()?
        .iter()
        .position(|f| f == finalizer)?;
    let path = format!("/metadata/finalizers/{idx}");
    Some(serde_json::json!([
        {"op": "test", "path": path, "value": finalizer},
        {"op": "remove", "path": path},
    ]))
}

/// Removes [`FINALIZER`] from the PeerPod (no-op when absent).
pub async fn remove_finalizer(
    client: &kube::Client,
    obj: &PeerPod,
    timeout: Duration,
) -> Result<(), KubeError> {
    let Some(patch) = remove_finalizer_patch(obj, FINALIZER) else {
        return Ok(());
    };
    let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let api: kube::Api<PeerPod> = kube::Api::namespaced(client.clone(), ns);
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| KubeError::Invalid {
            what: format!("finalizer patch for PeerPod {ns}/{name}"),
            message: e.to_string(),
        })?;
    let r = call(
        || format!("removing the finalizer of PeerPod {ns}/{name}"),
        timeout,
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch)),
    )
    .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// What [`release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Finalizer removed and object deleted.
    Released,
    /// There was no PeerPod.
    NotFound,
    /// The PeerPod of that name belongs to another sandbox: left alone.
    OtherSandbox,
}

/// After the adaptor deleted the instance itself: removes the finalizer
/// and deletes the PeerPod. Idempotent.
pub async fn release(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    sandbox_id: &str,
    timeout: Duration,
) -> Result<Released, KubeError> {
    let api: kube::Api<PeerPod> = kube::Api::namespaced(client.clone(), namespace);
    let Some(obj) = call(
        || format!("reading PeerPod {namespace}/{name}"),
        timeout,
        api.get_opt(name),
    )
    .await?
    else {
        return Ok(Released::NotFound);
    };
    if obj.spec.sandbox_id != sandbox_id {
        return Ok(Released::OtherSandbox);
    }
    remove_finalizer(client, &obj, timeout).await?;
    match call(
        || format!("deleting PeerPod {namespace}/{name}"),
        timeout,
        api.delete(name, &DeleteParams::default()),
    )
    .await
    {
        Ok(_) => Ok(Released::Released),
        Err(e) if e.is_not_found() => Ok(Released::Released),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_dns_subdomains() {
        assert_eq!(
            object_name("podvm-nginx-01234567", "x"),
            "podvm-nginx-01234567"
        );
        assert_eq!(object_name("PodVM_A", "x"), "podvm-a");
        assert_eq!(
            object_name("--", "ABCdef0123456789ffff"),
            "podvm-abcdef0123456789"
        );
    }

    #[test]
    fn finalizer_patch_tests_then_removes_its_own_entry() {
        let pod = PodRef {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
        };
        let mut obj = build(
            &pod,
            "podvm-p-1",
            PeerPodSpec {
                provider: "local".into(),
                instance_id: "i".into(),
                instance_name: "podvm-p-1".into(),
                node_name: "n".into(),
                sandbox_id: "s".into(),
                pod_name: "p".into(),
                cluster_id: String::new(),
            },
        );
        obj.metadata.finalizers = Some(vec!["other/x".into(), FINALIZER.into()]);
        let p = remove_finalizer_patch(&obj, FINALIZER).unwrap();
        assert_eq!(p[0]["op"], "test");
        assert_eq!(p[0]["path"], "/metadata/finalizers/1");
        assert_eq!(p[1]["op"], "remove");
        obj.metadata.finalizers = Some(vec!["other/x".into()]);
        assert!(remove_finalizer_patch(&obj, FINALIZER).is_none());
        assert_eq!(
            build(&pod, "a", obj.spec.clone()).metadata.labels.unwrap()[NODE_LABEL],
            "n"
        );
    }
}
