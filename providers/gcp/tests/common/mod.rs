//! A local Compute Engine REST server for the GCP provider's tests: the
//! real google-cloud-rust client talks HTTP to it. It implements the calls
//! the provider makes — instances insert/get/delete/list (paged, label
//! filter), zone operations get (RUNNING on the first poll, then DONE),
//! machineTypes get, images get, serialPort — with bodies shaped like the
//! documented API, records every request, and can fail chosen calls the
//! way GCE does. Instance addresses are in 127.0.0.0/8 so that an adaptor
//! dialing them never leaves this machine.

#![allow(dead_code)]

#[path = "../../../../test-fixtures/cloud-userdata/fixture.rs"]
pub mod userdata_fixture;

/// What the instance inserted with `body` reads from its metadata server
/// (`/computeMetadata/v1/instance/attributes/user-data`): the item of the
/// metadata key the shared fixture test-fixtures/cloud-userdata/gcp.json
/// names, served and decoded as it says (the forwarder's metadata
/// stand-in reads the same file). None: no such item.
pub fn vm_reads(body: &Value) -> Option<Vec<u8>> {
    let f = userdata_fixture::fixture("gcp");
    let key = userdata_fixture::text(&f, "/write/metadata_key");
    let written = body["metadata"]["items"]
        .as_array()?
        .iter()
        .find(|i| i["key"] == key)
        .and_then(|i| i["value"].as_str())?;
    let served = userdata_fixture::served(&f, written.as_bytes()).ok()?;
    userdata_fixture::decode(userdata_fixture::text(&f, "/read/body_encoding"), &served).ok()
}

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

/// What the server holds and how it misbehaves.
#[derive(Default)]
pub struct GceState {
    pub instances: BTreeMap<String, Value>,
    /// Operation name → (polls before DONE, the DONE operation).
    ops: HashMap<String, (u32, Value)>,
    pub seen: Vec<Seen>,
    /// Machine types whose insert operation ends in ZONE_RESOURCE_POOL_EXHAUSTED.
    pub no_capacity: HashSet<String>,
    /// Inserts answered 403 quotaExceeded.
    pub quota_exceeded: bool,
    /// Every call answered 403 forbidden.
    pub forbidden: bool,
    next: u32,
}

/// A running server; stops when dropped.
pub struct GceServer {
    pub url: String,
    pub state: Arc<Mutex<GceState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const PROJECT: &str = "peerpod-test";
pub const ZONE: &str = "us-central1-a";

impl GceServer {
    pub async fn start() -> GceServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(GceState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                        .await;
                });
            }
        });
        GceServer { url, state, task }
    }

    /// Requests seen with this method whose path ends with `suffix`.
    pub fn seen(&self, method: &str, suffix: &str) -> Vec<Seen> {
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.method == method && s.path.ends_with(suffix))
            .cloned()
            .collect()
    }

    pub fn instance_names(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .instances
            .keys()
            .cloned()
            .collect()
    }
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn error(status: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        json!({"error": {"code": status, "message": message,
               "errors": [{"message": message, "domain": "global", "reason": reason}]}}),
    )
}

fn machine_type(name: &str) -> Option<(i32, i32)> {
    Some(match name {
        "n2d-standard-2" => (2, 8192),
        "n2d-standard-4" => (4, 16384),
        "n2d-highcpu-4" => (4, 4096),
        "n2d-standard-8" => (8, 32768),
        _ => return None,
    })
}

/// The `labels.K = "V"` filter the provider sends.
fn filter_matches(filter: &str, inst: &Value) -> bool {
    let Some(rest) = filter.trim().strip_prefix("labels.") else {
        return true;
    };
    let Some((k, v)) = rest.split_once('=') else {
        return false;
    };
    let (k, v) = (k.trim(), v.trim().trim_matches('"'));
    inst["labels"][k].as_str() == Some(v)
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl GceState {
    fn operation(&mut self, kind: &str, target: &str, error: Option<Value>) -> Value {
        self.next += 1;
        let name = format!("operation-{}-{kind}", self.next);
        let base = json!({"kind": "compute#operation", "name": name, "zone": ZONE,
                          "operationType": kind, "targetLink": target});
        let mut done = base.clone();
        done["status"] = json!("DONE");
        done["progress"] = json!(100);
        if let Some(e) = error {
            done["error"] = json!({"errors": [e]});
            done["httpErrorStatusCode"] = json!(503);
            done["httpErrorMessage"] = json!("SERVICE UNAVAILABLE");
        }
        self.ops.insert(name, (1, done));
        let mut running = base;
        running["status"] = json!("RUNNING");
        running
    }
}

async fn handle(
    st: &Mutex<GceState>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut s = st.lock().unwrap();
    s.seen.push(Seen {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
    });
    if s.forbidden {
        return error(
            403,
            "forbidden",
            "Required 'compute.instances.list' permission for 'projects/peerpod-test'",
        );
    }
    let Some(rest) = path.strip_prefix(&format!("/compute/v1/projects/{PROJECT}/")) else {
        return error(
            404,
            "notFound",
            &format!("The resource '{path}' was not found"),
        );
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["zones", ZONE, "instances"]) => {
            if s.quota_exceeded {
                return error(
                    403,
                    "quotaExceeded",
                    "Quota 'N2D_CPUS' exceeded.  Limit: 8.0 in region us-central1.",
                );
            }
            let name = body["name"].as_str().unwrap_or_default().to_string();
            if s.instances.contains_key(&name) {
                return error(409, "alreadyExists", &format!("The resource 'projects/{PROJECT}/zones/{ZONE}/instances/{name}' already exists"));
            }
            let mt = body["machineType"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
            let target = format!("projects/{PROJECT}/zones/{ZONE}/instances/{name}");
            if s.no_capacity.contains(&mt) {
                let e = json!({"code": "ZONE_RESOURCE_POOL_EXHAUSTED",
                    "message": format!("The zone 'projects/{PROJECT}/zones/{ZONE}' does not have enough resources available to fulfill the request. Try a different zone, or try again later.")});
                let op = s.operation("insert", &target, Some(e));
                return reply(200, op);
            }
            let n = s.instances.len() as u32 + 2;
            let mut inst = body.clone();
            inst["status"] = json!("RUNNING");
            inst["id"] = json!(format!("{}", 1000 + n));
            if let Some(nic) = inst["networkInterfaces"].get_mut(0) {
                nic["networkIP"] = json!(format!("127.128.0.{n}"));
                if let Some(ac) = nic["accessConfigs"].get_mut(0) {
                    ac["natIP"] = json!(format!("127.129.0.{n}"));
                }
            }
            s.instances.insert(name, inst);
            let op = s.operation("insert", &target, None);
            reply(200, op)
        }
        ("GET", ["zones", ZONE, "operations", name]) => {
            let Some((polls, done)) = s.ops.get_mut(*name) else {
                return error(404, "notFound", &format!("The resource 'operations/{name}' was not found"));
            };
            if *polls > 0 {
                *polls -= 1;
                let mut running = done.clone();
                running["status"] = json!("RUNNING");
                running.as_object_mut().map(|o| {
                    o.remove("error");
                    o.remove("httpErrorStatusCode");
                    o.remove("httpErrorMessage")
                });
                return reply(200, running);
            }
            reply(200, done.clone())
        }
        ("GET", ["zones", ZONE, "instances", name]) => match s.instances.get(*name) {
            Some(i) => reply(200, i.clone()),
            None => error(404, "notFound", &format!("The resource 'projects/{PROJECT}/zones/{ZONE}/instances/{name}' was not found")),
        },
        ("GET", ["zones", ZONE, "instances", name, "serialPort"]) => match s.instances.get(*name) {
            Some(_) => reply(200, json!({"kind": "compute#serialPortOutput", "contents": "boot\nforwarder starting\nno route to the worker\n", "next": "3"})),
            None => error(404, "notFound", "not found"),
        },
        ("DELETE", ["zones", ZONE, "instances", name]) => {
            let target = format!("projects/{PROJECT}/zones/{ZONE}/instances/{name}");
            if s.instances.remove(*name).is_none() {
                return error(404, "notFound", &format!("The resource '{target}' was not found"));
            }
            let op = s.operation("delete", &target, None);
            reply(200, op)
        }
        ("GET", ["zones", ZONE, "instances"]) => {
            let filter = query_param(&query, "filter").unwrap_or_default();
            let start: usize = query_param(&query, "pageToken").and_then(|t| t.parse().ok()).unwrap_or(0);
            let all: Vec<&Value> = s.instances.values().filter(|i| filter_matches(&filter, i)).collect();
            // Two per page, so listing must follow nextPageToken.
            let page: Vec<Value> = all.iter().skip(start).take(2).map(|v| (*v).clone()).collect();
            let mut out = json!({"kind": "compute#instanceList", "items": page});
            if start + 2 < all.len() {
                out["nextPageToken"] = json!(format!("{}", start + 2));
            }
            reply(200, out)
        }
        ("GET", ["zones", ZONE, "machineTypes", name]) => match machine_type(name) {
            Some((cpus, mem)) => reply(200, json!({"kind": "compute#machineType", "name": name, "guestCpus": cpus, "memoryMb": mem, "zone": ZONE})),
            None => error(404, "notFound", &format!("The resource 'projects/{PROJECT}/zones/{ZONE}/machineTypes/{name}' was not found")),
        },
        ("GET", ["global", "images", name]) => match *name {
            "podvm" => reply(200, json!({"kind": "compute#image", "name": "podvm", "status": "READY"})),
            _ => error(404, "notFound", &format!("The resource 'projects/{PROJECT}/global/images/{name}' was not found")),
        },
        _ => error(400, "badRequest", &format!("the test server does not implement {method} {path}")),
    }
}

/// A provider configuration pointing at the server.
pub fn raw(url: &str) -> peerpod_provider_gcp::RawGcpConfig {
    peerpod_provider_gcp::RawGcpConfig {
        project: Some(PROJECT.into()),
        zone: Some(ZONE.into()),
        image: Some("podvm".into()),
        machine_types: Some("n2d-standard-2,n2d-standard-4,n2d-standard-8".into()),
        tags: Some("team=qa".into()),
        endpoint: Some(url.into()),
        ..Default::default()
    }
}

/// The provider against the server: anonymous credentials, fast polling.
pub async fn provider(
    raw: peerpod_provider_gcp::RawGcpConfig,
) -> peerpod_provider_gcp::GcpProvider {
    peerpod_provider_gcp::GcpProvider::new(
        raw.check().unwrap(),
        peerpod_provider_gcp::ClientOptions {
            credentials: Some(google_cloud_auth::credentials::anonymous::Builder::new().build()),
            poll_backoff: Some((
                std::time::Duration::from_millis(10),
                std::time::Duration::from_millis(50),
            )),
        },
    )
    .await
    .unwrap()
}
