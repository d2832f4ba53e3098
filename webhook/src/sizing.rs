//! How big the pod's VM must be: cpu, memory and GPUs from the containers'
//! requests and limits, computed the way Kubernetes computes a pod's
//! effective request, because that is what runs in the VM at its peak.
//!
//! - Per container and resource, the larger of request and limit ("the
//!   limit wins when it is at least the request"; a limit alone counts, a
//!   request alone counts).
//! - Regular containers run together: summed.
//! - Init containers run one at a time before them: the largest counts, not
//!   the sum. Sidecars (init containers with `restartPolicy: Always`) keep
//!   running, so each adds to everything started after it. This is
//!   Kubernetes' formula: max(sum(containers) + sum(sidecars),
//!   max over init containers of (that init + sidecars started before it)).
//! - Pod-level `spec.resources` (Kubernetes 1.32+), when it names a
//!   resource, is the pod's total for that resource.
//!
//! The Go webhook sums init containers with the containers, which sizes a
//! pod with a 4-CPU init step and a 1-CPU app at 5 vCPUs; this gives 4.

use crate::quantity::{self, Nanos, QuantityError};
use serde::Deserialize;
use std::collections::BTreeMap;

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const GPU: &str = "nvidia.com/gpu";

/// The resources the VM is sized from.
const SIZED: [&str; 3] = [CPU, MEMORY, GPU];

/// The few pod fields the webhook reads; everything else stays untouched
/// in the raw JSON the patch is computed against.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub runtime_class_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
    pub resources: Option<Resources>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    pub resources: Option<Resources>,
    pub restart_policy: Option<String>,
}

/// `requests` and `limits`. Values are kept as JSON: the API server sends
/// strings, a hand-written review may hold numbers.
#[derive(Debug, Default, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub requests: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub limits: Option<BTreeMap<String, serde_json::Value>>,
}

/// A quantity that could not be read, with where it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {source}")]
pub struct SizingError {
    pub place: String,
    pub source: QuantityError,
}

/// The VM size the pod asks for; `None` where nothing asked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: Option<u128>,
    pub memory_mib: Option<u128>,
    pub gpus: Option<u128>,
}

type Amounts = BTreeMap<&'static str, Nanos>;

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// max(request, limit) per sized resource of one `resources` block.
fn effective(r: Option<&Resources>, place: &str) -> Result<Amounts, SizingError> {
    let mut out = Amounts::new();
    let Some(r) = r else { return Ok(out) };
    for (field, list) in [("requests", &r.requests), ("limits", &r.limits)] {
        let Some(list) = list else { continue };
        for name in SIZED {
            if let Some(v) = list.get(name) {
                let n = quantity::parse(&value_text(v)).map_err(|source| SizingError {
                    place: format!("{place} resources.{field}.{name}"),
                    source,
                })?;
                let e = out.entry(name).or_insert(0);
                *e = (*e).max(n);
            }
        }
    }
    Ok(out)
}

fn add(a: &mut Amounts, b: &Amounts) {
    for (k, v) in b {
        *a.entry(k).or_insert(0) += v;
    }
}

fn max_into(a: &mut Amounts, b: &Amounts) {
    for (k, v) in b {
        let e = a.entry(k).or_insert(0);
        *e = (*e).max(*v);
    }
}

/// The pod's effective amounts of cpu, memory and GPUs.
pub fn pod_amounts(spec: &PodSpec) -> Result<BTreeMap<&'static str, Nanos>, SizingError> {
    let mut app = Amounts::new();
    for c in &spec.containers {
        add(
            &mut app,
            &effective(c.resources.as_ref(), &format!("container {:?}", c.name))?,
        );
    }
    let mut sidecars = Amounts::new();
    let mut init_peak = Amounts::new();
    for c in &spec.init_containers {
        let own = effective(
            c.resources.as_ref(),
            &format!("init container {:?}", c.name),
        )?;
        if c.restart_policy.as_deref() == Some("Always") {
            add(&mut sidecars, &own);
            max_into(&mut init_peak, &sidecars);
        } else {
            let mut step = sidecars.clone();
            add(&mut step, &own);
            max_into(&mut init_peak, &step);
        }
    }
    let mut total = app;
    add(&mut total, &sidecars);
    max_into(&mut total, &init_peak);
    // Pod-level resources replace the aggregate for what they name.
    let pod_level = effective(spec.resources.as_ref(), "pod")?;
    total.extend(pod_level);
    Ok(total)
}

/// Whole vCPUs and MiB (rounded up) and GPUs; zero amounts are "not set".
pub fn vm_size(spec: &PodSpec) -> Result<VmSize, SizingError> {
    let a = pod_amounts(spec)?;
    let get = |k: &str, f: fn(Nanos) -> u128| a.get(k).copied().filter(|n| *n > 0).map(f);
    Ok(VmSize {
        vcpus: get(CPU, quantity::ceil_units),
        memory_mib: get(MEMORY, quantity::ceil_mib),
        gpus: get(GPU, quantity::ceil_units),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    fn res(req: serde_json::Value, lim: serde_json::Value) -> serde_json::Value {
        json!({"requests": req, "limits": lim})
    }

    #[test]
    fn containers_sum_and_limit_wins() {
        let s = spec(json!({"containers": [
            {"name": "a", "resources": res(json!({"cpu": "500m", "memory": "1Gi"}), json!({"cpu": "1"}))},
            {"name": "b", "resources": res(json!({"cpu": "1.5"}), json!({"memory": "512Mi"}))},
        ]}));
        assert_eq!(
            vm_size(&s).unwrap(),
            VmSize {
                vcpus: Some(3),
                memory_mib: Some(1536),
                gpus: None
            }
        );
    }

    #[test]
    fn a_limit_below_the_request_does_not_shrink_it() {
        let s = spec(json!({"containers": [
            {"name": "a", "resources": res(json!({"cpu": "2"}), json!({"cpu": "1"}))}]}));
        assert_eq!(vm_size(&s).unwrap().vcpus, Some(2));
    }

    #[test]
    fn init_containers_count_at_their_peak_not_summed() {
        let s = spec(json!({
            "initContainers": [
                {"name": "i1", "resources": res(json!({"cpu": "4", "memory": "256Mi"}), json!({}))},
                {"name": "i2", "resources": res(json!({"cpu": "2"}), json!({}))}],
            "containers": [
                {"name": "a", "resources": res(json!({"cpu": "1", "memory": "1Gi"}), json!({}))}]}));
        assert_eq!(
            vm_size(&s).unwrap(),
            VmSize {
                vcpus: Some(4),
                memory_mib: Some(1024),
                gpus: None
            }
        );
    }

    #[test]
    fn sidecars_add_to_what_starts_after_them() {
        let s = spec(json!({
            "initContainers": [
                {"name": "side", "restartPolicy": "Always", "resources": res(json!({"cpu": "1"}), json!({}))},
                {"name": "init", "resources": res(json!({"cpu": "3"}), json!({}))}],
            "containers": [
                {"name": "a", "resources": res(json!({"cpu": "1"}), json!({}))}]}));
        // init runs beside the sidecar: 1 + 3 = 4 > app 1 + sidecar 1.
        assert_eq!(vm_size(&s).unwrap().vcpus, Some(4));
    }

    #[test]
    fn pod_level_resources_win_for_what_they_name() {
        let s = spec(json!({
            "resources": res(json!({"cpu": "6"}), json!({})),
            "containers": [
                {"name": "a", "resources": res(json!({"cpu": "1", "memory": "2Gi"}), json!({}))}]}));
        assert_eq!(
            vm_size(&s).unwrap(),
            VmSize {
                vcpus: Some(6),
                memory_mib: Some(2048),
                gpus: None
            }
        );
    }

    #[test]
    fn gpus_and_nothing_set() {
        let s = spec(json!({"containers": [
            {"name": "a", "resources": res(json!({}), json!({"nvidia.com/gpu": 2}))},
            {"name": "b"}]}));
        assert_eq!(
            vm_size(&s).unwrap(),
            VmSize {
                vcpus: None,
                memory_mib: None,
                gpus: Some(2)
            }
        );
        assert_eq!(
            vm_size(&spec(json!({"containers": [{"name": "a"}]}))).unwrap(),
            VmSize::default()
        );
    }

    #[test]
    fn a_bad_quantity_names_its_place() {
        let s = spec(json!({"containers": [
            {"name": "web", "resources": res(json!({}), json!({"memory": "lots"}))}]}));
        let e = vm_size(&s).unwrap_err().to_string();
        assert!(
            e.contains("container \"web\" resources.limits.memory") && e.contains("lots"),
            "{e}"
        );
    }
}
