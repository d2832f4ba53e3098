//! The `peerpods-webhook` binary end to end: real AdmissionReview v1 JSON
//! over HTTPS (verified against the CA it patched into the caBundle of the
//! API stand-in), a table of pods whose returned JSON Patch is applied and
//! the result checked, malformed reviews, the CA shared by two replicas,
//! and graceful shutdown.

mod support;

use base64::Engine;
use serde_json::{json, Value};
use support::apiserver::ApiServer;
use support::process::{self, wait_ca_bundle, wait_ready, Client, Webhook, CONFIG, NAMESPACE};

const VCPUS: &str = "io.katacontainers.config.hypervisor.default_vcpus";
const MEMORY: &str = "io.katacontainers.config.hypervisor.default_memory";
const GPUS: &str = "io.katacontainers.config.hypervisor.default_gpus";

fn review(uid: &str, pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

fn container(name: &str, requests: Value, limits: Value) -> Value {
    let mut r = json!({});
    if !requests.is_null() {
        r["requests"] = requests;
    }
    if !limits.is_null() {
        r["limits"] = limits;
    }
    json!({"name": name, "image": "nginx", "resources": r})
}

fn pod(class: Option<&str>, containers: Vec<Value>, init: Vec<Value>) -> Value {
    let mut spec = json!({"containers": containers, "restartPolicy": "Always"});
    if let Some(c) = class {
        spec["runtimeClassName"] = json!(c);
    }
    if !init.is_empty() {
        spec["initContainers"] = json!(init);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "t-", "namespace": "default", "labels": {"app": "t"}},
           "spec": spec})
}

struct Case {
    name: &'static str,
    pod: Value,
    /// None: the pod must come back untouched (no patch).
    want: Option<[Option<&'static str>; 3]>,
}

fn cases() -> Vec<Case> {
    let n = Value::Null;
    let kr = Some("kata-remote");
    vec![
        Case {
            name: "multi-container, fractional cpu and decimal memory",
            pod: pod(
                kr,
                vec![
                    container("a", json!({"cpu": "500m", "memory": "1Gi"}), n.clone()),
                    container(
                        "b",
                        json!({"cpu": "1.5"}),
                        json!({"cpu": "2", "memory": "1500M"}),
                    ),
                ],
                vec![],
            ),
            // cpu 0.5 + 2 = 2.5 -> 3; memory 1Gi + 1500M = 2454.5 MiB -> 2455
            want: Some([Some("3"), Some("2455"), None]),
        },
        Case {
            name: "init containers count at their peak",
            pod: pod(
                kr,
                vec![container(
                    "app",
                    json!({"cpu": "1", "memory": "512Mi"}),
                    n.clone(),
                )],
                vec![container(
                    "init",
                    json!({"cpu": "2", "memory": "2Gi"}),
                    n.clone(),
                )],
            ),
            want: Some([Some("2"), Some("2048"), None]),
        },
        Case {
            name: "limits only",
            pod: pod(
                kr,
                vec![container(
                    "a",
                    n.clone(),
                    json!({"cpu": "1500m", "memory": "1Gi"}),
                )],
                vec![],
            ),
            want: Some([Some("2"), Some("1024"), None]),
        },
        Case {
            name: "requests only",
            pod: pod(
                kr,
                vec![container(
                    "a",
                    json!({"cpu": "250m", "memory": "100Mi"}),
                    n.clone(),
                )],
                vec![],
            ),
            want: Some([Some("1"), Some("100"), None]),
        },
        Case {
            name: "GPU",
            pod: pod(
                kr,
                vec![
                    container(
                        "a",
                        json!({"cpu": "4"}),
                        json!({"cpu": "4", "nvidia.com/gpu": "1"}),
                    ),
                    container("b", n.clone(), json!({"nvidia.com/gpu": "2"})),
                ],
                vec![],
            ),
            want: Some([Some("4"), None, Some("3")]),
        },
        Case {
            name: "no resources at all",
            pod: pod(kr, vec![json!({"name": "a", "image": "nginx"})], vec![]),
            want: Some([None, None, None]),
        },
        Case {
            name: "other runtime class untouched",
            pod: pod(
                Some("kata-qemu"),
                vec![container("a", json!({"cpu": "1"}), n.clone())],
                vec![],
            ),
            want: None,
        },
        Case {
            name: "no runtimeClassName untouched",
            pod: pod(
                None,
                vec![container("a", json!({"cpu": "1"}), n.clone())],
                vec![],
            ),
            want: None,
        },
    ]
}

/// Checks one answered review against its case.
fn check(case: &Case, uid: &str, status: u16, body: &[u8]) {
    assert_eq!(
        status,
        200,
        "{}: {}",
        case.name,
        String::from_utf8_lossy(body)
    );
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    let r = &v["response"];
    assert_eq!(r["uid"], uid, "{}", case.name);
    assert_eq!(r["allowed"], true, "{}", case.name);
    let Some(want) = case.want else {
        assert!(
            r.get("patch").is_none() && r.get("patchType").is_none(),
            "{}: {r}",
            case.name
        );
        return;
    };
    assert_eq!(r["patchType"], "JSONPatch", "{}", case.name);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().expect("patch is a base64 string"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut pod = case.pod.clone();
    json_patch::patch(&mut pod, &patch)
        .unwrap_or_else(|e| panic!("{}: patch applies: {e}", case.name));
    for (key, want) in [VCPUS, MEMORY, GPUS].into_iter().zip(want) {
        let got = pod["metadata"]["annotations"]
            .get(key)
            .and_then(Value::as_str);
        assert_eq!(got, want, "{}: {key}", case.name);
    }
    assert_eq!(
        pod["metadata"]["labels"]["app"], "t",
        "{}: other metadata kept",
        case.name
    );
    let containers = pod["spec"]["containers"].as_array().unwrap();
    let one = json!({"kata.peerpods.io/vm": "1"});
    assert_eq!(
        containers[0]["resources"],
        json!({"requests": one, "limits": one}),
        "{}",
        case.name
    );
    for c in containers.iter().skip(1) {
        assert!(c.get("resources").is_none(), "{}: {c}", case.name);
    }
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert!(c.get("resources").is_none(), "{}: {c}", case.name);
    }
    assert_eq!(
        containers[0]["image"], "nginx",
        "{}: the rest is kept",
        case.name
    );
}

#[tokio::test]
async fn mutates_a_table_of_pods_over_https() {
    let api = ApiServer::start().await;
    let w = Webhook::start(&api.kubeconfig, &[]).await;
    let ca = wait_ca_bundle(&api, &w).await;
    wait_ready(&w, &ca).await;
    let mut c = Client::connect(w.addr, &ca).await;
    for (i, case) in cases().iter().enumerate() {
        let uid = format!("uid-{i}");
        let (status, body) = c.request("POST", "/mutate", review(&uid, &case.pod)).await;
        check(case, &uid, status, &body);
    }
    // Existing annotations stay; ours are added beside them.
    let mut p = cases().remove(0).pod;
    p["metadata"]["annotations"] = json!({"team": "a/b"});
    let (_, body) = c.request("POST", "/mutate", review("u-ann", &p)).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["response"]["patch"].as_str().unwrap())
        .unwrap();
    json_patch::patch(
        &mut p,
        &serde_json::from_slice::<json_patch::Patch>(&bytes).unwrap(),
    )
    .unwrap();
    assert_eq!(p["metadata"]["annotations"]["team"], "a/b");
    assert_eq!(p["metadata"]["annotations"][VCPUS], "3");
}

#[tokio::test]
async fn malformed_reviews_get_400_and_the_server_keeps_serving() {
    let api = ApiServer::start().await;
    let w = Webhook::start(&api.kubeconfig, &[]).await;
    let ca = wait_ca_bundle(&api, &w).await;
    wait_ready(&w, &ca).await;
    let mut c = Client::connect(w.addr, &ca).await;
    for (bad, says) in [
        (b"{not json".to_vec(), "not JSON"),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(), "v1beta1"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "no request"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"object":{}}}"#.to_vec(), "no uid"),
    ] {
        let (status, body) = c.request("POST", "/mutate", bad).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(says), "{text}");
    }
    // A pod that cannot be sized: denied with the reason, not a 500.
    let p = pod(
        Some("kata-remote"),
        vec![container("web", json!({"memory": "lots"}), Value::Null)],
        vec![],
    );
    let (status, body) = c.request("POST", "/mutate", review("u-bad", &p)).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["response"]["allowed"], false);
    let msg = v["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.contains("\"web\"") && msg.contains("lots"), "{msg}");
    // Same connection and a new one both still work.
    let case = &cases()[2];
    let (status, body) = c
        .request("POST", "/mutate", review("u-after", &case.pod))
        .await;
    check(case, "u-after", status, &body);
    let mut c2 = Client::connect(w.addr, &ca).await;
    let (status, body) = c2
        .request("POST", "/mutate", review("u-new", &case.pod))
        .await;
    check(case, "u-new", status, &body);
    assert_eq!(c2.request("GET", "/mutate", vec![]).await.0, 405);
    assert_eq!(c2.request("GET", "/nope", vec![]).await.0, 404);
    assert_eq!(c2.request("GET", "/healthz", vec![]).await.0, 200);
}

#[tokio::test]
async fn two_replicas_share_one_ca_and_patch_the_ca_bundle() {
    let api = ApiServer::start().await;
    let (a, b) = tokio::join!(
        Webhook::start(&api.kubeconfig, &[]),
        Webhook::start(&api.kubeconfig, &[])
    );
    let ca = wait_ca_bundle(&api, &a).await;
    wait_ready(&a, &ca).await;
    wait_ready(&b, &ca).await;

    let secret =
        api.world.lock().unwrap().secrets[&format!("{NAMESPACE}/peerpods-webhook-ca")].clone();
    let secret_ca = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["ca.crt"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(secret_ca).unwrap(),
        ca,
        "caBundle is the Secret's CA"
    );
    assert!(secret["data"]["ca.key"].as_str().is_some());

    let reqs = api.requests();
    let creates: Vec<_> = reqs.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(
        creates.iter().filter(|r| r.status == 201).count(),
        1,
        "one CA Secret created: {creates:?}"
    );
    assert!(creates.iter().all(|r| r.status == 201 || r.status == 409));
    assert!(creates
        .iter()
        .all(|r| r.path == format!("/api/v1/namespaces/{NAMESPACE}/secrets")));

    let patches: Vec<_> = reqs.iter().filter(|r| r.method == "PATCH").collect();
    assert!(!patches.is_empty());
    let want = base64::engine::general_purpose::STANDARD.encode(ca.as_bytes());
    for p in &patches {
        assert_eq!(
            p.path,
            format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{CONFIG}")
        );
        assert_eq!(p.content_type, "application/json-patch+json");
        let ops: Vec<Value> = serde_json::from_str(&p.body).unwrap();
        for op in ops.iter().filter(|o| o["op"] == "add") {
            assert_eq!(
                op["value"],
                want.as_str(),
                "every patch writes the one shared CA"
            );
        }
        assert!(
            ops.iter().any(|o| o["op"] == "test"),
            "guarded by test ops: {ops:?}"
        );
    }
    let mwc = api.mwc(CONFIG);
    for h in mwc["webhooks"].as_array().unwrap() {
        assert_eq!(
            h["clientConfig"]["caBundle"],
            want.as_str(),
            "every webhook entry"
        );
    }
    // Both replicas serve certificates the one caBundle verifies.
    for w in [&a, &b] {
        let mut c = Client::connect(w.addr, &ca).await;
        assert_eq!(c.request("GET", "/readyz", vec![]).await.0, 200);
    }
    // A third start finds everything current: reads, no create, no patch.
    let before = api.requests().len();
    let c3 = Webhook::start(&api.kubeconfig, &[]).await;
    wait_ready(&c3, &ca).await;
    let later: Vec<_> = api.requests().into_iter().skip(before).collect();
    assert!(later.iter().all(|r| r.method == "GET"), "{later:?}");
}

#[tokio::test]
async fn losing_the_create_race_uses_the_winners_ca() {
    let api = ApiServer::start().await;
    let winner = peerpods_webhook::tls::WebhookCa::generate().unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    api.world.lock().unwrap().winner = Some(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "peerpods-webhook-ca", "namespace": NAMESPACE, "uid": "w", "resourceVersion": "7"},
        "data": {"ca.crt": b64(winner.cert_pem()), "ca.key": b64(winner.key_pem())}
    }));
    let w = Webhook::start(&api.kubeconfig, &[]).await;
    let ca = wait_ca_bundle(&api, &w).await;
    assert_eq!(ca, winner.cert_pem(), "the winner's CA, not our own");
    wait_ready(&w, &ca).await;
    let statuses: Vec<(String, u16)> = api
        .requests()
        .iter()
        .filter(|r| r.path.contains("/secrets"))
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("GET".to_string(), 404),
            ("POST".into(), 409),
            ("GET".into(), 200)
        ],
        "read, lose the create, read the winner's"
    );
    assert!(
        !w.log_text().contains("PRIVATE KEY"),
        "the CA key is never logged"
    );
}

#[tokio::test]
async fn forbidden_secret_stops_with_a_clear_error() {
    let api = ApiServer::start().await;
    api.world.lock().unwrap().forbid_secrets = true;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_peerpods-webhook"))
        .args(["--listen", "127.0.0.1:0", "--namespace", NAMESPACE])
        .env("KUBECONFIG", &api.kubeconfig)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let _ = &mut child;
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secret peerpods-system/peerpods-webhook-ca") && err.contains("forbidden"),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_drains_then_exits() {
    let api = ApiServer::start().await;
    let mut w = Webhook::start(&api.kubeconfig, &["--drain", "2", "--grace", "2"]).await;
    let ca = wait_ca_bundle(&api, &w).await;
    wait_ready(&w, &ca).await;
    let mut c = Client::connect(w.addr, &ca).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &w.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // While draining: not ready, still answering reviews.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        if c.request("GET", "/readyz", vec![]).await.0 == 503 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never went unready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let case = &cases()[0];
    let (s, body) = c
        .request("POST", "/mutate", review("u-drain", &case.pod))
        .await;
    check(case, "u-drain", s, &body);
    drop(c);
    let child = &mut w.child;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(code.success(), "clean exit: {code:?}\n{}", w.log_text());
    let _ = process::ca_bundle;
}

#[tokio::test]
async fn not_ready_until_its_webhook_configuration_exists() {
    let api = ApiServer::start().await;
    let mwc = api.world.lock().unwrap().mwcs.remove(CONFIG).unwrap();
    let w = Webhook::start(&api.kubeconfig, &[]).await;
    // It serves (the CA Secret exists by now) but is not ready: nothing
    // would trust its certificate yet.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let ca = loop {
        let secret = api
            .world
            .lock()
            .unwrap()
            .secrets
            .get(&format!("{NAMESPACE}/peerpods-webhook-ca"))
            .cloned();
        if let Some(s) = secret {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(s["data"]["ca.crt"].as_str().unwrap())
                .unwrap();
            break String::from_utf8(pem).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no CA secret; log:\n{}",
            w.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut c = Client::connect(w.addr, &ca).await;
    assert_eq!(c.request("GET", "/readyz", vec![]).await.0, 503);
    assert_eq!(c.request("GET", "/healthz", vec![]).await.0, 200);
    // The chart creates the configuration later: the webhook retries.
    api.world
        .lock()
        .unwrap()
        .mwcs
        .insert(CONFIG.to_string(), mwc);
    assert_eq!(wait_ca_bundle(&api, &w).await, ca);
    wait_ready(&w, &ca).await;
    assert!(
        api.requests()
            .iter()
            .any(|r| r.method == "GET" && r.status == 404 && r.path.ends_with(CONFIG)),
        "it asked before the configuration existed"
    );
}
