//! A small Kubernetes API server stand-in on loopback for the tests of the
//! adaptor's Kubernetes code and `peerpod-ctrl` (no kube-apiserver can be
//! installed here). The real kube-rs client talks to it over TLS (its own
//! CA, handed over in a kubeconfig) with a bearer token, as it talks to a
//! cluster.
//!
//! It keeps objects as JSON by resource (`v1/pods`, `events.k8s.io/v1/events`,
//! `confidentialcontainers.org/v1alpha1/peerpods`, `coordination.k8s.io/v1/leases`,
//! …) and implements what the code under test calls, with the API
//! server's semantics: GET (404 Status when absent), list and
//! `?watch=true` (chunked JSON watch events from a resourceVersion), POST
//! (409 AlreadyExists), PUT (409 Conflict on a stale resourceVersion),
//! PATCH (JSON patch with `test` ops, merge patch), DELETE (an object with
//! finalizers only gets its deletionTimestamp; it goes when the last
//! finalizer does). Objects the tests seed are built from the k8s-openapi
//! types and error bodies from kube's `Status`: the very types the client
//! decodes, so the two sides cannot disagree on a shape.
//!
//! Every request is recorded (method, path, query, body, which listener);
//! a delay can hold every answer back (a slow API server). Several
//! listeners can share one store, so two clients can be told apart.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// The bearer token every request must carry.
pub const TOKEN: &str = "peerpod-test-token-8f1e2d";

/// Resource keys.
pub const PODS: &str = "v1/pods";
pub const NODES: &str = "v1/nodes";
pub const NAMESPACES: &str = "v1/namespaces";
pub const EVENTS: &str = "events.k8s.io/v1/events";
pub const PEERPODS: &str = "confidentialcontainers.org/v1alpha1/peerpods";
pub const LEASES: &str = "coordination.k8s.io/v1/leases";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which listener (0, 1, …) it came in on.
    pub listener: usize,
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    pub authorized: bool,
}

/// A change, as a watch reports it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    /// (resource, namespace or "", name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    rv: u64,
    log: Vec<Change>,
    seen: Vec<Seen>,
    next_uid: u64,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    delay_ms: AtomicU64,
    answered: AtomicU64,
}

/// A running stand-in; stops when dropped.
pub struct ApiServer {
    /// One URL per listener.
    pub urls: Vec<String>,
    shared: Arc<Shared>,
    ca_pem: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> Value {
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or(Value::Null)
}

/// Kind and apiVersion of the objects of a resource.
fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        PODS => ("Pod", "v1"),
        NODES => ("Node", "v1"),
        NAMESPACES => ("Namespace", "v1"),
        EVENTS => ("Event", "events.k8s.io/v1"),
        PEERPODS => ("PeerPod", "confidentialcontainers.org/v1alpha1"),
        LEASES => ("Lease", "coordination.k8s.io/v1"),
        _ => ("Unknown", "v1"),
    }
}

fn plural_of(resource: &str) -> &str {
    resource.rsplit('/').next().unwrap_or(resource)
}

/// A kube `Status` body (the type the client decodes errors into).
fn status(code: u16, reason: &str, message: String) -> Response<BoxBody<Bytes, Infallible>> {
    let s = kube::core::Status::failure(&message, reason).with_code(code);
    reply(code, serde_json::to_value(&s).unwrap_or(Value::Null))
}

fn not_found(resource: &str, name: &str) -> Response<BoxBody<Bytes, Infallible>> {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", plural_of(resource)),
    )
}

fn reply(code: u16, body: Value) -> Response<BoxBody<Bytes, Infallible>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// Where a request points.
struct Target {
    resource: String,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] => (ns.to_string(), {
            let mut v = vec![*plural];
            v.extend_from_slice(more);
            v
        }),
        other => (String::new(), other.to_vec()),
    };
    let plural = rest.first()?;
    Some(Target {
        resource: format!("{gv}/{plural}"),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

impl Store {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(
        &mut self,
        tx: &broadcast::Sender<Change>,
        resource: &str,
        ns: &str,
        kind: &'static str,
        object: Value,
    ) {
        let c = Change {
            rv: self.rv,
            resource: resource.to_string(),
            namespace: ns.to_string(),
            kind,
            object,
        };
        self.log.push(c.clone());
        let _ = tx.send(c);
    }

    /// Stores `obj` (new rv) or removes it when it is being deleted and
    /// has no finalizers left; records the change.
    fn commit(
        &mut self,
        tx: &broadcast::Sender<Change>,
        resource: &str,
        ns: &str,
        name: &str,
        mut obj: Value,
        created: bool,
    ) -> Value {
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (resource.to_string(), ns.to_string(), name.to_string());
        let deleting = !obj["metadata"]["deletionTimestamp"].is_null();
        let no_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if deleting && no_finalizers {
            self.objects.remove(&key);
            self.record(tx, resource, ns, "DELETED", obj.clone());
        } else {
            self.objects.insert(key, obj.clone());
            let kind = if created { "ADDED" } else { "MODIFIED" };
            self.record(tx, resource, ns, kind, obj.clone());
        }
        obj
    }
}

async fn handle(
    shared: Arc<Shared>,
    listener: usize,
    req: Request<hyper::body::Incoming>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    let bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Ok(mut s) = shared.store.lock() {
        s.seen.push(Seen {
            listener,
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
            authorized,
        });
    }
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let r = if !authorized {
        status(401, "Unauthorized", "Unauthorized".into())
    } else {
        answer(&shared, &method, &path, &query, &content_type, body)
    };
    shared.answered.fetch_add(1, Ordering::SeqCst);
    r
}

fn answer(
    shared: &Arc<Shared>,
    method: &str,
    path: &str,
    query: &str,
    content_type: &str,
    body: Value,
) -> Response<BoxBody<Bytes, Infallible>> {
    let Some(t) = parse_path(path) else {
        return status(404, "NotFound", format!("no such path {path}"));
    };
    let tx = &shared.changes;
    let Ok(mut s) = shared.store.lock() else {
        return status(500, "InternalError", "store poisoned".into());
    };
    let (kind, api_version) = kind_of(&t.resource);
    match (method, &t.name) {
        ("GET", None) => {
            if matches!(query_param(query, "watch").as_deref(), Some("true" | "1")) {
                drop(s);
                return watch(shared, &t, query);
            }
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|((r, ns, _), _)| {
                    *r == t.resource && (t.namespace.is_empty() || *ns == t.namespace)
                })
                .map(|(_, v)| v.clone())
                .collect();
            reply(
                200,
                json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                       "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
            )
        }
        ("GET", Some(name)) => {
            match s
                .objects
                .get(&(t.resource.clone(), t.namespace.clone(), name.clone()))
            {
                Some(v) => reply(200, v.clone()),
                None => not_found(&t.resource, name),
            }
        }
        ("POST", None) => {
            let mut obj = body;
            let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                return status(422, "Invalid", "metadata.name: Required value".into());
            };
            let key = (t.resource.clone(), t.namespace.clone(), name.clone());
            if s.objects.contains_key(&key) {
                return status(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", plural_of(&t.resource)),
                );
            }
            s.next_uid += 1;
            obj["apiVersion"] = json!(api_version);
            obj["kind"] = json!(kind);
            obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", s.next_uid));
            obj["metadata"]["creationTimestamp"] = now();
            if !t.namespace.is_empty() {
                obj["metadata"]["namespace"] = json!(t.namespace);
            }
            let obj = s.commit(tx, &t.resource, &t.namespace, &name, obj, true);
            reply(201, obj)
        }
        ("PUT", Some(name)) => {
            let key = (t.resource.clone(), t.namespace.clone(), name.clone());
            let Some(cur) = s.objects.get(&key).cloned() else {
                return not_found(&t.resource, name);
            };
            let want = body["metadata"]["resourceVersion"].as_str();
            if want.is_some() && want != cur["metadata"]["resourceVersion"].as_str() {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        plural_of(&t.resource)
                    ),
                );
            }
            let mut obj = body;
            obj["metadata"]["uid"] = cur["metadata"]["uid"].clone();
            obj["metadata"]["creationTimestamp"] = cur["metadata"]["creationTimestamp"].clone();
            obj["apiVersion"] = json!(api_version);
            obj["kind"] = json!(kind);
            let obj = s.commit(tx, &t.resource, &t.namespace, name, obj, false);
            reply(200, obj)
        }
        ("PATCH", Some(name)) => {
            let key = (t.resource.clone(), t.namespace.clone(), name.clone());
            let Some(cur) = s.objects.get(&key).cloned() else {
                return not_found(&t.resource, name);
            };
            let mut obj = cur.clone();
            if content_type.starts_with("application/json-patch+json") {
                let p: json_patch::Patch = match serde_json::from_value(body) {
                    Ok(p) => p,
                    Err(e) => return status(400, "BadRequest", format!("bad JSON patch: {e}")),
                };
                if let Err(e) = json_patch::patch(&mut obj, &p) {
                    return status(422, "Invalid", format!("the JSON patch failed: {e}"));
                }
            } else if content_type.starts_with("application/merge-patch+json") {
                let want = body["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                if want.is_some() && want.as_deref() != cur["metadata"]["resourceVersion"].as_str()
                {
                    return status(409, "Conflict", "the object has been modified".into());
                }
                json_patch::merge(&mut obj, &body);
            } else {
                return status(
                    415,
                    "UnsupportedMediaType",
                    format!("the stand-in does not do {content_type} patches"),
                );
            }
            // The status subresource changes status only; the main
            // resource ignores status changes (as the API server does).
            if t.sub.as_deref() == Some("status") {
                let st = obj["status"].clone();
                obj = cur;
                obj["status"] = st;
            } else if !cur["status"].is_null() || !obj["status"].is_null() {
                obj["status"] = cur["status"].clone();
            }
            let obj = s.commit(tx, &t.resource, &t.namespace, name, obj, false);
            reply(200, obj)
        }
        ("DELETE", Some(name)) => {
            let key = (t.resource.clone(), t.namespace.clone(), name.clone());
            let Some(mut obj) = s.objects.get(&key).cloned() else {
                return not_found(&t.resource, name);
            };
            if obj["metadata"]["deletionTimestamp"].is_null() {
                obj["metadata"]["deletionTimestamp"] = now();
            }
            let obj = s.commit(tx, &t.resource, &t.namespace, name, obj, false);
            reply(200, obj)
        }
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} {path} is not served by the stand-in"),
        ),
    }
}

/// A watch: the changes after `resourceVersion` (default: now), then new
/// ones as they happen, as newline-separated JSON watch events, until
/// `timeoutSeconds` or the client goes.
fn watch(shared: &Arc<Shared>, t: &Target, query: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let mut rx = shared.changes.subscribe();
    let (backlog, from) = match shared.store.lock() {
        Ok(s) => {
            let from = query_param(query, "resourceVersion")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(s.rv);
            (
                s.log
                    .iter()
                    .filter(|c| c.rv > from)
                    .cloned()
                    .collect::<Vec<_>>(),
                from,
            )
        }
        Err(_) => return status(500, "InternalError", "store poisoned".into()),
    };
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(290);
    let (resource, namespace) = (t.resource.clone(), t.namespace.clone());
    let wanted = move |c: &Change| {
        c.resource == resource && (namespace.is_empty() || c.namespace == namespace)
    };
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    tokio::spawn(async move {
        let line = |c: &Change| {
            Ok(Frame::data(Bytes::from(format!(
                "{}\n",
                json!({"type": c.kind, "object": c.object})
            ))))
        };
        let mut last = from;
        for c in backlog.iter().filter(|c| wanted(c)) {
            last = last.max(c.rv);
            if tx.send(line(c)).await.is_err() {
                return;
            }
        }
        let end = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(end);
        loop {
            tokio::select! {
                _ = &mut end => return,
                _ = tx.closed() => return,
                c = rx.recv() => match c {
                    Ok(c) if c.rv > last && wanted(&c) => {
                        last = c.rv;
                        if tx.send(line(&c)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream =
        futures::stream::unfold(
            body_rx,
            |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
        );
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

impl ApiServer {
    /// Starts with `listeners` TLS listeners on 127.0.0.1 sharing one store.
    pub async fn start(listeners: usize) -> ApiServer {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("test certificate");
        let ca_pem = ck.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        );
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server certificate");
        let mut cfg = cfg;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes: broadcast::channel(4096).0,
            delay_ms: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        });
        let mut urls = Vec::new();
        let mut tasks = Vec::new();
        for index in 0..listeners.max(1) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            urls.push(format!(
                "https://{}",
                listener.local_addr().expect("local address")
            ));
            let (acceptor, shared) = (acceptor.clone(), shared.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let (acceptor, shared) = (acceptor.clone(), shared.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(conn).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(shared, index, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    });
                }
            }));
        }
        ApiServer {
            urls,
            shared,
            ca_pem,
            tasks,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A kubeconfig for listener `index` (server, CA, token).
    pub fn kubeconfig(&self, index: usize) -> PathBuf {
        kubeconfig_file(self.dir.path(), &self.urls[index], &self.ca_pem, index)
    }

    /// Holds every answer back by `d` (zero: answer at once).
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::SeqCst)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .store
            .lock()
            .map(|s| s.seen.clone())
            .unwrap_or_default()
    }

    /// Requests with this method whose path contains `part`.
    pub fn seen_matching(&self, method: &str, part: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.path.contains(part))
            .collect()
    }

    /// Stores an object directly (as if another client created it).
    pub fn put(&self, resource: &str, namespace: &str, mut obj: Value) -> Value {
        let Ok(mut s) = self.shared.store.lock() else {
            return Value::Null;
        };
        let (kind, api_version) = kind_of(resource);
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        s.next_uid += 1;
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-9000-{:012}", s.next_uid));
        }
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = now();
        }
        if !namespace.is_empty() {
            obj["metadata"]["namespace"] = json!(namespace);
        }
        let tx = self.shared.changes.clone();
        let exists =
            s.objects
                .contains_key(&(resource.to_string(), namespace.to_string(), name.clone()));
        s.commit(&tx, resource, namespace, &name, obj, !exists)
    }

    /// One object, if it exists.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.shared.store.lock().ok().and_then(|s| {
            s.objects
                .get(&(
                    resource.to_string(),
                    namespace.to_string(),
                    name.to_string(),
                ))
                .cloned()
        })
    }

    /// Every object of a resource.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        self.shared
            .store
            .lock()
            .map(|s| {
                s.objects
                    .iter()
                    .filter(|((r, _, _), _)| r == resource)
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deletes as a client would (finalizers hold it); false if absent.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> bool {
        let Ok(mut s) = self.shared.store.lock() else {
            return false;
        };
        let key = (
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        let Some(mut obj) = s.objects.get(&key).cloned() else {
            return false;
        };
        if obj["metadata"]["deletionTimestamp"].is_null() {
            obj["metadata"]["deletionTimestamp"] = now();
        }
        let tx = self.shared.changes.clone();
        s.commit(&tx, resource, namespace, name, obj, false);
        true
    }

    /// Removes an object at once, finalizers or not (a node that is gone).
    pub fn remove(&self, resource: &str, namespace: &str, name: &str) -> bool {
        let Ok(mut s) = self.shared.store.lock() else {
            return false;
        };
        let key = (
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        let Some(obj) = s.objects.remove(&key) else {
            return false;
        };
        s.bump();
        let tx = self.shared.changes.clone();
        s.record(&tx, resource, namespace, "DELETED", obj);
        true
    }

    /// A pod (as the k8s-openapi type serializes it) on `node`; returns its uid.
    pub fn add_pod(&self, namespace: &str, name: &str, node: &str) -> String {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                runtime_class_name: Some("kata-remote".into()),
                ..Default::default()
            }),
            status: None,
        };
        let v = self.put(
            PODS,
            namespace,
            serde_json::to_value(&pod).unwrap_or_default(),
        );
        v["metadata"]["uid"].as_str().unwrap_or("").to_string()
    }

    pub fn add_node(&self, name: &str) {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        self.put(NODES, "", serde_json::to_value(&node).unwrap_or_default());
    }

    /// The `kube-system` namespace with this uid.
    pub fn add_kube_system(&self, uid: &str) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("kube-system".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        self.put(
            NAMESPACES,
            "",
            serde_json::to_value(&ns).unwrap_or_default(),
        );
    }
}

/// Writes a kubeconfig for `url` with `ca_pem` and [`TOKEN`].
pub fn kubeconfig_file(dir: &std::path::Path, url: &str, ca_pem: &str, index: usize) -> PathBuf {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
         users:\n- name: tester\n  user:\n    token: {TOKEN}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: tester\n    namespace: default\n\
         current-context: standin\n"
    );
    let path = dir.join(format!("kubeconfig-{index}"));
    std::fs::write(&path, text).expect("writing a kubeconfig");
    path
}

/// A kubeconfig pointing at an address where nothing listens (an API
/// server that is down): a port bound and released at once.
pub fn unreachable_kubeconfig(dir: &std::path::Path) -> PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(1);
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("certificate");
    kubeconfig_file(
        dir,
        &format!("https://127.0.0.1:{port}"),
        &ck.cert.pem(),
        99,
    )
}
