//! The mutation of a peer pod, as a JSON Patch (RFC 6902) computed against
//! the pod JSON the API server sent: VM size annotations from the
//! containers' resources, the resources cleared (the node does not run the
//! containers), and one unit of the VM extended resource on the first
//! container so the scheduler counts the node's peer pod slots.
//!
//! Pods of another runtime class, or none, are never changed.

use crate::sizing::{self, PodSpec, SizingError};
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub const DEFAULT_VCPUS: &str = "io.katacontainers.config.hypervisor.default_vcpus";
pub const DEFAULT_MEMORY: &str = "io.katacontainers.config.hypervisor.default_memory";
pub const DEFAULT_GPUS: &str = "io.katacontainers.config.hypervisor.default_gpus";

/// What the webhook does to pods.
#[derive(Debug, Clone)]
pub struct MutationConfig {
    /// Only pods with this `spec.runtimeClassName` are changed.
    pub runtime_class: String,
    /// The extended resource each peer pod takes one of.
    pub vm_resource: String,
}

impl Default for MutationConfig {
    fn default() -> Self {
        Self {
            runtime_class: "kata-remote".into(),
            vm_resource: "kata.peerpods.io/vm".into(),
        }
    }
}

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Not ours (other runtime class, not a pod): allowed unchanged.
    Skip(&'static str),
    /// A peer pod: allowed with these JSON Patch operations.
    Patch(Vec<Value>),
}

/// Why a peer pod cannot be admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MutationError {
    #[error("the pod object is not a pod: {0}")]
    NotAPod(String),
    #[error(transparent)]
    Sizing(#[from] SizingError),
}

/// RFC 6901 escaping of one path segment.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Computes the mutation of `pod` (the raw JSON object).
pub fn mutate(pod: &Value, cfg: &MutationConfig) -> Result<Mutation, MutationError> {
    let spec_json = pod.get("spec").cloned().unwrap_or(Value::Null);
    if spec_json.is_null() {
        return Ok(Mutation::Skip("no spec"));
    }
    let spec: PodSpec =
        serde_json::from_value(spec_json).map_err(|e| MutationError::NotAPod(e.to_string()))?;
    if spec.runtime_class_name.as_deref() != Some(cfg.runtime_class.as_str()) {
        return Ok(Mutation::Skip("not the target runtime class"));
    }
    if spec.containers.is_empty() {
        // Validation rejects such a pod after us; nothing to put the
        // VM resource on.
        return Ok(Mutation::Skip("no containers"));
    }
    let size = sizing::vm_size(&spec)?;
    let mut ops = Vec::new();

    // Annotations: the computed size. A value the pod's author set
    // explicitly is kept (they asked for that VM size).
    let existing = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let mut wanted = BTreeMap::new();
    for (key, v) in [
        (DEFAULT_VCPUS, size.vcpus),
        (DEFAULT_MEMORY, size.memory_mib),
        (DEFAULT_GPUS, size.gpus),
    ] {
        let Some(v) = v else { continue };
        let set_by_author = existing
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty());
        if !set_by_author {
            wanted.insert(key, v.to_string());
        }
    }
    if !wanted.is_empty() {
        match existing {
            Some(_) => {
                for (k, v) in &wanted {
                    ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(k)), "value": v}));
                }
            }
            None => {
                if pod.get("metadata").is_none_or(Value::is_null) {
                    ops.push(json!({"op": "add", "path": "/metadata", "value": {}}));
                }
                ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": wanted}));
            }
        }
    }

    // Resources: the VM's, not the node's. Cleared everywhere, then one
    // VM slot on the first container.
    let has_resources = |path: &str| pod.pointer(path).is_some();
    if has_resources("/spec/resources") {
        ops.push(json!({"op": "remove", "path": "/spec/resources"}));
    }
    for i in 0..spec.init_containers.len() {
        let p = format!("/spec/initContainers/{i}/resources");
        if has_resources(&p) {
            ops.push(json!({"op": "remove", "path": p}));
        }
    }
    for i in 1..spec.containers.len() {
        let p = format!("/spec/containers/{i}/resources");
        if has_resources(&p) {
            ops.push(json!({"op": "remove", "path": p}));
        }
    }
    let one = json!({ cfg.vm_resource.clone(): "1" });
    ops.push(json!({
        "op": "add",
        "path": "/spec/containers/0/resources",
        "value": {"requests": one, "limits": one},
    }));
    Ok(Mutation::Patch(ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn other_pods_are_skipped() {
        let cfg = MutationConfig::default();
        let c = json!([{"name": "a", "resources": {"limits": {"cpu": "1"}}}]);
        for spec in [
            json!({"containers": c}),
            json!({"runtimeClassName": "kata-qemu", "containers": c}),
            json!({"runtimeClassName": null, "containers": c}),
        ] {
            assert!(matches!(mutate(&pod(spec), &cfg), Ok(Mutation::Skip(_))));
        }
    }

    #[test]
    fn author_annotations_are_kept() {
        let cfg = MutationConfig::default();
        let mut p = pod(json!({"runtimeClassName": "kata-remote",
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}]}));
        p["metadata"]["annotations"] = json!({DEFAULT_VCPUS: "8", "other": "x"});
        let Mutation::Patch(ops) = mutate(&p, &cfg).unwrap() else {
            panic!()
        };
        let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
        assert!(paths
            .contains(&"/metadata/annotations/io.katacontainers.config.hypervisor.default_memory"));
        assert!(
            !paths.iter().any(|p| p.ends_with("default_vcpus")),
            "{paths:?}"
        );
    }

    #[test]
    fn mutating_a_mutated_pod_changes_nothing_more() {
        // The API server may call the webhook again on its own output
        // (reinvocationPolicy: IfNeeded).
        let cfg = MutationConfig::default();
        let mut p = pod(json!({"runtimeClassName": "kata-remote",
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}],
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                           {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]}));
        let apply = |p: &mut Value| {
            let Mutation::Patch(ops) = mutate(p, &cfg).unwrap() else {
                panic!("a peer pod is patched")
            };
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
            json_patch::patch(p, &patch).unwrap();
        };
        apply(&mut p);
        let once = p.clone();
        assert_eq!(once["metadata"]["annotations"][DEFAULT_VCPUS], "3");
        assert_eq!(once["metadata"]["annotations"][DEFAULT_MEMORY], "1024");
        assert_eq!(once["metadata"]["annotations"][DEFAULT_GPUS], "1");
        apply(&mut p);
        assert_eq!(p, once);
    }

    #[test]
    fn escape_follows_rfc6901() {
        assert_eq!(escape("kata.peerpods.io/vm"), "kata.peerpods.io~1vm");
        assert_eq!(escape("a~b"), "a~0b");
    }
}
