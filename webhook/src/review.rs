//! AdmissionReview v1 in and out: the few fields the webhook reads, and the
//! response with our JSON Patch, base64-encoded here (kube-rs serialises
//! patch bytes as a number array on some paths, which the API server
//! rejects; see design.md).
//!
//! A body that is not an AdmissionReview v1 with a request and a uid is the
//! caller's error: [`ReviewError`], answered with HTTP 400. A review of a
//! pod we cannot size is answered (HTTP 200) with `allowed: false` and a
//! message naming the container and the value.

use crate::mutate::{mutate, Mutation, MutationConfig, MutationError};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Why a body is not a review we can answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    Json(serde_json::Error),
    #[error("expected apiVersion {API_VERSION} kind {KIND}, got {api_version:?} {kind:?}")]
    Version { api_version: String, kind: String },
    #[error("the review has no request")]
    NoRequest,
    #[error("the review request has no uid")]
    NoUid,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    #[serde(default)]
    uid: String,
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    object: Option<Value>,
}

/// What the webhook did with one review (for logs and metrics).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Skipped(&'static str),
    Mutated { ops: usize },
    Denied(String),
}

/// Answers one AdmissionReview body: the response body and what happened.
pub fn answer(body: &[u8], cfg: &MutationConfig) -> Result<(Vec<u8>, Outcome), ReviewError> {
    let review: Review = serde_json::from_slice(body).map_err(ReviewError::Json)?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::Version {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let req = review.request.ok_or(ReviewError::NoRequest)?;
    if req.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    let is_pod = req
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.kind == "Pod");
    let outcome = match (&req.object, is_pod, req.operation.as_str()) {
        (_, false, _) => Ok(Mutation::Skip("not a pod")),
        (_, true, op) if op != "CREATE" => Ok(Mutation::Skip("not a create")),
        (None, true, _) => Ok(Mutation::Skip("no object")),
        (Some(pod), true, _) => mutate(pod, cfg),
    };
    let mut response = json!({"uid": req.uid, "allowed": true});
    let outcome = match outcome {
        Ok(Mutation::Skip(why)) => Outcome::Skipped(why),
        Ok(Mutation::Patch(ops)) => {
            let bytes = serde_json::to_vec(&ops).map_err(ReviewError::Json)?;
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            Outcome::Mutated { ops: ops.len() }
        }
        Err(e) => {
            let pod = if req.name.is_empty() {
                pod_name(req.object.as_ref())
            } else {
                req.name.clone()
            };
            let message = match &e {
                MutationError::Sizing(s) => {
                    format!("peer pod {}/{pod}: cannot size its VM: {s}", req.namespace)
                }
                MutationError::NotAPod(_) => format!("peer pod {}/{pod}: {e}", req.namespace),
            };
            response["allowed"] = json!(false);
            response["status"] = json!({"code": 400, "reason": "BadRequest", "message": message});
            Outcome::Denied(message)
        }
    };
    let out = json!({"apiVersion": API_VERSION, "kind": KIND, "response": response});
    Ok((
        serde_json::to_vec(&out).map_err(ReviewError::Json)?,
        outcome,
    ))
}

/// A pod being created often has only `generateName`.
fn pod_name(object: Option<&Value>) -> String {
    let meta = object.and_then(|o| o.get("metadata"));
    let get = |k| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    get("name")
        .map(str::to_string)
        .or_else(|| get("generateName").map(|g| format!("{g}*")))
        .unwrap_or_else(|| "<unnamed>".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "operation": "CREATE", "namespace": "ns", "object": object}
        }))
        .unwrap()
    }

    #[test]
    fn malformed_reviews_are_errors() {
        let cfg = MutationConfig::default();
        assert!(matches!(answer(b"{", &cfg), Err(ReviewError::Json(_))));
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#;
        assert!(answer(v1beta1, &cfg)
            .unwrap_err()
            .to_string()
            .contains("v1beta1"));
        let no_req = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert!(matches!(answer(no_req, &cfg), Err(ReviewError::NoRequest)));
        let no_uid =
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#;
        assert!(matches!(answer(no_uid, &cfg), Err(ReviewError::NoUid)));
    }

    #[test]
    fn unsizable_pod_is_denied_with_a_named_reason() {
        let body = review(json!({"metadata": {"generateName": "web-"}, "spec": {
            "runtimeClassName": "kata-remote",
            "containers": [{"name": "c", "resources": {"limits": {"cpu": "fast"}}}]}}));
        let (out, outcome) = answer(&body, &MutationConfig::default()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], false);
        let msg = v["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("ns/web-*") && msg.contains("\"fast\"") && msg.contains("limits.cpu"),
            "{msg}"
        );
        assert!(matches!(outcome, Outcome::Denied(_)));
    }

    #[test]
    fn patch_is_a_base64_string() {
        let body = review(json!({"metadata": {"name": "p"}, "spec": {
            "runtimeClassName": "kata-remote", "containers": [{"name": "c"}]}}));
        let (out, _) = answer(&body, &MutationConfig::default()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let b = base64::engine::general_purpose::STANDARD
            .decode(
                v["response"]["patch"]
                    .as_str()
                    .expect("a string, not a number array"),
            )
            .unwrap();
        let ops: Vec<Value> = serde_json::from_slice(&b).unwrap();
        assert_eq!(ops.last().unwrap()["path"], "/spec/containers/0/resources");
    }
}
