//! A Kubernetes API stand-in on loopback for the calls the webhook makes:
//! Secrets get/create (with create-if-absent conflict) and the
//! MutatingWebhookConfiguration get/JSON-patch. It answers with the
//! fixtures in testdata/ (the same files the crate's unit tests parse) and
//! records every request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{TESTDATA}/{name}")).unwrap()
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub body: String,
    pub status: u16,
}

#[derive(Default)]
pub struct World {
    pub secrets: HashMap<String, Value>,
    pub mwcs: HashMap<String, Value>,
    pub requests: Vec<Recorded>,
    /// Answer every secrets call with 403 (RBAC missing).
    pub forbid_secrets: bool,
    /// Another replica wins the create: on the first create, this Secret is
    /// stored instead and the create answered 409 AlreadyExists.
    pub winner: Option<Value>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    pub world: Arc<Mutex<World>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    pub kubeconfig: std::path::PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const SECRETS: &str = "/api/v1/namespaces/";
const MWC: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/";

impl ApiServer {
    /// Serves the fixture MutatingWebhookConfiguration, no secrets yet.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let world = Arc::new(Mutex::new(World::default()));
        let mwc: Value =
            serde_json::from_str(&fixture("mutatingwebhookconfiguration.json")).unwrap();
        let name = mwc["metadata"]["name"].as_str().unwrap().to_string();
        world.lock().unwrap().mwcs.insert(name, mwc);
        let w = world.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let w = w.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let w = w.clone();
                        async move { Ok::<_, Infallible>(handle(&w, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{addr}\nusers:\n- name: webhook\n  user:\n    token: not-a-real-token\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: webhook\ncurrent-context: standin\n"
            ),
        )
        .unwrap();
        Self {
            addr,
            world,
            task,
            _dir: dir,
            kubeconfig,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.world.lock().unwrap().requests.clone()
    }

    pub fn mwc(&self, name: &str) -> Value {
        self.world.lock().unwrap().mwcs[name].clone()
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

async fn handle(
    world: &Mutex<World>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut w = world.lock().unwrap();
    let resp = route(&mut w, &method, &path, &body);
    w.requests.push(Recorded {
        method: method.to_string(),
        path,
        content_type,
        body,
        status: resp.status().as_u16(),
    });
    resp
}

fn route(w: &mut World, method: &Method, path: &str, body: &str) -> Response<Full<Bytes>> {
    if let Some(rest) = path.strip_prefix(SECRETS) {
        if w.forbid_secrets {
            return json(StatusCode::FORBIDDEN, fixture("status-forbidden.json"));
        }
        // <ns>/secrets[/<name>]
        let parts: Vec<&str> = rest.split('/').collect();
        match (method, parts.as_slice()) {
            (&Method::GET, [ns, "secrets", name]) => match w.secrets.get(&format!("{ns}/{name}")) {
                Some(s) => json(StatusCode::OK, s.to_string()),
                None => json(StatusCode::NOT_FOUND, fixture("status-notfound.json")),
            },
            (&Method::POST, [ns, "secrets"]) => {
                let mut s: Value = serde_json::from_str(body).unwrap();
                let name = s["metadata"]["name"].as_str().unwrap().to_string();
                let key = format!("{ns}/{name}");
                if let Some(winner) = w.winner.take() {
                    w.secrets.insert(key.clone(), winner);
                }
                if w.secrets.contains_key(&key) {
                    return json(StatusCode::CONFLICT, fixture("status-alreadyexists.json"));
                }
                s["metadata"]["uid"] = Value::from(format!("uid-{}", w.requests.len()));
                s["metadata"]["resourceVersion"] = Value::from("1");
                w.secrets.insert(key, s.clone());
                json(StatusCode::CREATED, s.to_string())
            }
            _ => json(StatusCode::NOT_FOUND, fixture("status-notfound.json")),
        }
    } else if let Some(name) = path.strip_prefix(MWC) {
        let Some(cur) = w.mwcs.get(name).cloned() else {
            return json(StatusCode::NOT_FOUND, fixture("status-notfound.json"));
        };
        match *method {
            Method::GET => json(StatusCode::OK, cur.to_string()),
            Method::PATCH => {
                let patch: json_patch::Patch = match serde_json::from_str(body) {
                    Ok(p) => p,
                    Err(_) => {
                        return json(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            fixture("status-invalid.json"),
                        )
                    }
                };
                let mut doc = cur;
                if json_patch::patch(&mut doc, &patch).is_err() {
                    return json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        fixture("status-invalid.json"),
                    );
                }
                w.mwcs.insert(name.to_string(), doc.clone());
                json(StatusCode::OK, doc.to_string())
            }
            _ => json(
                StatusCode::METHOD_NOT_ALLOWED,
                fixture("status-invalid.json"),
            ),
        }
    } else {
        json(StatusCode::NOT_FOUND, fixture("status-notfound.json"))
    }
}
