//! A small Azure Resource Manager stand-in on 127.0.0.1 for the provider's
//! tests (no ARM emulator exists): PUT/GET/DELETE of network interfaces,
//! virtual machines and disks with long-running operations reported
//! through `Azure-AsyncOperation` (first poll `InProgress`, then the
//! result), VM lists paged with `nextLink`, the region's `vmSizes`, the
//! resource group, subnet and gallery image reads, and the Entra ID token
//! endpoint. Bodies follow the documented ARM JSON. Every request is
//! recorded so tests assert on what the client really sent; faults
//! (capacity, quota, permission, throttling) are switched on per test.
//! What a VM would read from IMDS as its user data follows from the VM
//! PUT by the shared fixture `test-fixtures/cloud-userdata/azure.json`
//! (the forwarder's IMDS stand-in reads the same file).

#![allow(dead_code)]

pub mod token;
#[path = "../../../../test-fixtures/cloud-userdata/fixture.rs"]
pub mod userdata_fixture;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

pub const SUB: &str = "00000000-0000-0000-0000-0000000000aa";
pub const RG: &str = "peerpods";
pub const TOKEN: &str = "test-bearer-token";

pub fn subnet_id() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/vnet/subnets/pods")
}

pub fn image_id() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/podvm/versions/1.0.0")
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub auth: Option<String>,
    pub body: Option<Value>,
}

/// An ARM error answer: HTTP status, code, message.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Fault {
    pub fn new(status: u16, code: &str, message: &str) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

struct Op {
    polls: u32,
    error: Option<Fault>,
}

#[derive(Default)]
pub struct State {
    /// Resources by lower-cased path.
    pub resources: BTreeMap<String, Value>,
    pub requests: Vec<Recorded>,
    ops: HashMap<String, Op>,
    next_op: u64,
    next_ip: u8,
    /// VM PUTs for these sizes are refused at once.
    pub vm_put_faults: HashMap<String, Fault>,
    /// VM PUTs for these sizes are accepted, then their operation fails.
    pub vm_op_faults: HashMap<String, Fault>,
    /// Every VM PUT is refused with this (e.g. AuthorizationFailed).
    pub vm_write_fault: Option<Fault>,
    /// The next N requests are answered 429 with `Retry-After: 0`.
    pub throttle_next: u32,
    /// Status URLs of NIC PUTs point at this origin instead of ours.
    pub foreign_op_origin: Option<String>,
    /// VMs per list page.
    pub page_size: usize,
    pub sizes: Vec<(String, u64, u64)>,
    /// Per VM (lower-cased path): the user data as the VM PUT carried it
    /// where the fixture says ARM takes it (ARM does not return it on GET).
    pub vm_user_data: HashMap<String, String>,
}

/// The server; it stops when dropped.
pub struct FakeArm {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeArm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(path: &str) -> String {
    path.trim_end_matches('/').to_ascii_lowercase()
}

impl FakeArm {
    /// The provider settings that point at this stand-in: its
    /// subscription, region, resource group, subnet and image.
    pub fn raw_config(&self) -> peerpod_provider_azure::RawAzureConfig {
        peerpod_provider_azure::RawAzureConfig {
            subscription_id: Some(SUB.into()),
            region: Some("eastus".into()),
            resource_group: Some(RG.into()),
            subnet_id: Some(subnet_id()),
            image_id: Some(image_id()),
            arm_endpoint: Some(self.url.clone()),
            ..Default::default()
        }
    }

    pub async fn start() -> FakeArm {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut st = State {
            page_size: 2,
            next_ip: 4,
            sizes: [
                ("Standard_DC2as_v5", 2, 8192),
                ("Standard_DC4as_v5", 4, 16384),
                ("Standard_DC8as_v5", 8, 32768),
                ("Standard_EC4as_v5", 4, 32768),
                ("Standard_D2as_v5", 2, 8192),
            ]
            .into_iter()
            .map(|(n, c, m)| (n.to_string(), c, m))
            .collect(),
            ..Default::default()
        };
        st.resources.insert(
            key(&format!("/subscriptions/{SUB}/resourceGroups/{RG}")),
            json!({"id": format!("/subscriptions/{SUB}/resourceGroups/{RG}"), "name": RG, "location": "eastus",
                   "properties": {"provisioningState": "Succeeded"}}),
        );
        st.resources.insert(
            key(&subnet_id()),
            json!({"id": subnet_id(), "name": "pods", "properties": {"addressPrefix": "10.20.1.0/24", "provisioningState": "Succeeded"}}),
        );
        st.resources.insert(
            key(&image_id()),
            json!({"id": image_id(), "name": "1.0.0", "location": "eastus", "properties": {"provisioningState": "Succeeded"}}),
        );
        let state = Arc::new(Mutex::new(st));
        let (s2, base) = (state.clone(), url.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s3, b3) = (s2.clone(), base.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (s4, b4) = (s3.clone(), b3.clone());
                        async move { Ok::<_, Infallible>(handle(&s4, &b4, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeArm { url, state, task }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// Requests with this method whose path contains `part` (case-insensitive).
    pub fn sent(&self, method: &str, part: &str) -> Vec<Recorded> {
        let part = part.to_ascii_lowercase();
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.to_ascii_lowercase().contains(&part))
            .collect()
    }

    pub fn exists(&self, path: &str) -> bool {
        self.with(|s| s.resources.contains_key(&key(path)))
    }

    /// Paths of the stored resources of a type (e.g. `virtualmachines`).
    pub fn of_type(&self, kind: &str) -> Vec<String> {
        let kind = format!("/{}/", kind.to_ascii_lowercase());
        self.with(|s| {
            s.resources
                .keys()
                .filter(|k| k.contains(&kind))
                .cloned()
                .collect()
        })
    }

    pub fn rg_path() -> String {
        format!("/subscriptions/{SUB}/resourceGroups/{RG}")
    }

    pub fn vm_path(name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Compute/virtualMachines/{name}",
            Self::rg_path()
        )
    }

    pub fn nic_path(name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Network/networkInterfaces/{name}-nic",
            Self::rg_path()
        )
    }

    pub fn disk_path(name: &str) -> String {
        format!(
            "{}/providers/Microsoft.Compute/disks/{name}-osdisk",
            Self::rg_path()
        )
    }

    /// What the VM `name`'s IMDS would serve at the fixture's `read.path`
    /// (None: the VM PUT carried no user data where ARM takes it).
    pub fn imds_user_data(&self, name: &str) -> Option<Result<Vec<u8>, String>> {
        let f = userdata_fixture::fixture("azure");
        let written = self.with(|s| s.vm_user_data.get(&key(&Self::vm_path(name))).cloned())?;
        Some(userdata_fixture::served(&f, written.as_bytes()))
    }

    /// Puts a VM into the store directly (one someone else created).
    pub fn seed_vm(&self, name: &str, tags: Value) {
        self.with(|s| {
            s.resources.insert(
                key(&Self::vm_path(name)),
                json!({"id": Self::vm_path(name), "name": name, "location": "eastus", "tags": tags,
                       "properties": {"provisioningState": "Succeeded"}}),
            );
        });
    }
}

fn reply(status: u16, body: Value, headers: &[(&'static str, String)]) -> Response<Full<Bytes>> {
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let mut r = Response::new(Full::new(bytes));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for (k, v) in headers {
        r.headers_mut().insert(*k, v.parse().unwrap());
    }
    r
}

fn error(f: &Fault) -> Response<Full<Bytes>> {
    reply(
        f.status,
        json!({"error": {"code": f.code, "message": f.message}}),
        &[],
    )
}

fn not_found(path: &str) -> Response<Full<Bytes>> {
    error(&Fault::new(
        404,
        "ResourceNotFound",
        &format!("The Resource '{path}' was not found."),
    ))
}

impl State {
    fn new_op(&mut self, base: &str, error: Option<Fault>) -> String {
        self.next_op += 1;
        let id = format!("op{}", self.next_op);
        self.ops.insert(id.clone(), Op { polls: 0, error });
        format!(
            "{base}/subscriptions/{SUB}/providers/Microsoft.Compute/locations/eastus/operations/{id}?api-version=2024-07-01"
        )
    }
}

async fn handle(
    state: &Arc<Mutex<State>>,
    base: &str,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let raw = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&raw).ok();
    let mut st = state.lock().unwrap();
    st.requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        auth: auth.clone(),
        body: body.clone(),
    });
    let lower = key(&path);
    // The token endpoint (client credentials flow).
    if method == Method::POST && lower.ends_with("/oauth2/v2.0/token") {
        return reply(
            200,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": TOKEN}),
            &[],
        );
    }
    // A serial log blob (SAS URL: no bearer token wanted).
    if method == Method::GET && lower.starts_with("/blob/serial/") {
        let name = lower.rsplit('/').next().unwrap_or("").to_string();
        let text: String = (1..=40)
            .map(|i| format!("[{i:>3}] {name} boot line {i}\n"))
            .collect();
        let mut r = Response::new(Full::new(Bytes::from(text)));
        r.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        return r;
    }
    if auth.as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return error(&Fault::new(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or invalid.",
        ));
    }
    if !query.contains("api-version=") {
        return error(&Fault::new(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    }
    if st.throttle_next > 0 {
        st.throttle_next -= 1;
        return reply(
            429,
            json!({"error": {"code": "TooManyRequests", "message": "The request is being throttled."}}),
            &[("retry-after", "0".into())],
        );
    }
    // Operation status.
    if lower.contains("/operations/") && method == Method::GET {
        let id = lower.rsplit('/').next().unwrap_or("").to_string();
        let Some(op) = st.ops.get_mut(&id) else {
            return not_found(&path);
        };
        op.polls += 1;
        if op.polls == 1 {
            return reply(200, json!({"name": id, "status": "InProgress"}), &[]);
        }
        return match &op.error {
            None => reply(200, json!({"name": id, "status": "Succeeded"}), &[]),
            Some(f) => reply(
                200,
                json!({"name": id, "status": "Failed", "error": {"code": f.code, "message": f.message}}),
                &[],
            ),
        };
    }
    // VM sizes of the region.
    if lower.ends_with("/vmsizes") && method == Method::GET {
        let value: Vec<Value> = st
            .sizes
            .iter()
            .map(|(n, c, m)| json!({"name": n, "numberOfCores": c, "memoryInMB": m, "maxDataDiskCount": 4, "osDiskSizeInMB": 1047552, "resourceDiskSizeInMB": 0}))
            .collect();
        return reply(200, json!({ "value": value }), &[]);
    }
    // VM list, paged.
    if (lower.ends_with("/providers/microsoft.compute/virtualmachines")
        || lower.ends_with("/providers/microsoft.network/networkinterfaces"))
        && method == Method::GET
    {
        let skip: usize = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("$skiptoken="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let prefix = format!("{lower}/");
        let all: Vec<Value> = st
            .resources
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
            .map(|(_, v)| v.clone())
            .collect();
        let page: Vec<Value> = all.iter().skip(skip).take(st.page_size).cloned().collect();
        let mut out = json!({ "value": page });
        if skip + st.page_size < all.len() {
            out["nextLink"] = json!(format!(
                "{base}{path}?api-version=2024-07-01&$skiptoken={}",
                skip + st.page_size
            ));
        }
        return reply(200, out, &[]);
    }
    if method == Method::POST && lower.ends_with("/retrievebootdiagnosticsdata") {
        let vm = lower.trim_end_matches("/retrievebootdiagnosticsdata");
        if !st.resources.contains_key(vm) {
            return not_found(&path);
        }
        let name = vm.rsplit('/').next().unwrap_or("");
        return reply(
            200,
            json!({
                "consoleScreenshotBlobUri": format!("{base}/blob/screenshot/{name}?sv=2022-11-02&sig=x"),
                "serialConsoleLogBlobUri": format!("{base}/blob/serial/{name}?sv=2022-11-02&sig=x"),
            }),
            &[],
        );
    }
    let is_vm = lower.contains("/providers/microsoft.compute/virtualmachines/");
    let is_nic = lower.contains("/providers/microsoft.network/networkinterfaces/");
    let is_disk = lower.contains("/providers/microsoft.compute/disks/");
    match method {
        Method::GET => match st.resources.get(&lower) {
            Some(v) => reply(200, v.clone(), &[]),
            None => not_found(&path),
        },
        Method::PUT if is_nic => {
            let mut v = body.unwrap_or(Value::Null);
            let subnet = v
                .pointer("/properties/ipConfigurations/0/properties/subnet/id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if !st.resources.contains_key(&key(&subnet)) {
                return error(&Fault::new(
                    400,
                    "InvalidResourceReference",
                    &format!("Resource {subnet} referenced by resource {path} was not found."),
                ));
            }
            st.next_ip += 1;
            // Loopback addresses: the adaptor test connects to them (nothing
            // listens there), and no test traffic may leave the machine.
            let ip = format!("127.0.0.{}", st.next_ip);
            v["id"] = json!(path);
            v["name"] = json!(path.rsplit('/').next().unwrap_or(""));
            v["properties"]["provisioningState"] = json!("Succeeded");
            v["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] = json!(ip);
            st.resources.insert(lower.clone(), v.clone());
            let op = st.new_op(base, None);
            let op = match &st.foreign_op_origin {
                Some(o) => op.replacen(base, o, 1),
                None => op,
            };
            reply(201, v, &[("azure-asyncoperation", op)])
        }
        Method::PUT if is_vm => {
            if let Some(f) = &st.vm_write_fault {
                return error(f);
            }
            let mut v = body.unwrap_or(Value::Null);
            let size = v
                .pointer("/properties/hardwareProfile/vmSize")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if let Some(f) = st.vm_put_faults.get(&size) {
                return error(f);
            }
            let nic = v
                .pointer("/properties/networkProfile/networkInterfaces/0/id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if !st.resources.contains_key(&key(&nic)) {
                return error(&Fault::new(
                    400,
                    "InvalidResourceReference",
                    &format!("Resource {nic} referenced by resource {path} was not found."),
                ));
            }
            let name = path.rsplit('/').next().unwrap_or("").to_string();
            let disk_name = v
                .pointer("/properties/storageProfile/osDisk/name")
                .and_then(Value::as_str)
                .unwrap_or("osdisk")
                .to_string();
            let disk_id = format!(
                "{}/providers/Microsoft.Compute/disks/{disk_name}",
                FakeArm::rg_path()
            );
            let op_fault = st.vm_op_faults.get(&size).cloned();
            v["id"] = json!(path);
            v["name"] = json!(name);
            v["properties"]["provisioningState"] = json!(if op_fault.is_some() {
                "Failed"
            } else {
                "Succeeded"
            });
            v["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"] = json!(disk_id);
            if let Some(o) = v.pointer_mut("/properties/osProfile") {
                // ARM never returns customData.
                if let Some(m) = o.as_object_mut() {
                    m.remove("customData");
                }
            }
            // User data: kept aside where the fixture says ARM takes it
            // (returned only with $expand=userData, which we do not use).
            let f = userdata_fixture::fixture("azure");
            let pointer = userdata_fixture::text(&f, "/write/json_pointer");
            if let Some(ud) = v.pointer(pointer).and_then(Value::as_str).map(String::from) {
                st.vm_user_data.insert(lower.clone(), ud);
                let (parent, field) = pointer.rsplit_once('/').unwrap_or(("", pointer));
                if let Some(m) = v.pointer_mut(parent).and_then(Value::as_object_mut) {
                    m.remove(field);
                }
            }
            st.resources.insert(lower.clone(), v.clone());
            st.resources.insert(
                key(&disk_id),
                json!({"id": disk_id, "name": disk_name, "properties": {"provisioningState": "Succeeded"}}),
            );
            let op = st.new_op(base, op_fault);
            reply(201, v, &[("azure-asyncoperation", op)])
        }
        Method::DELETE if is_vm || is_nic || is_disk => {
            if st.resources.remove(&lower).is_none() {
                // Compute answers 204 for a resource that is not there;
                // Network answers 404 here (both happen on real ARM).
                return if is_nic {
                    not_found(&path)
                } else {
                    reply(204, Value::Null, &[])
                };
            }
            let op = st.new_op(base, None);
            reply(
                202,
                Value::Null,
                &[("azure-asyncoperation", op.clone()), ("location", op)],
            )
        }
        _ => error(&Fault::new(
            400,
            "UnsupportedByFake",
            &format!("{method} {path} is not implemented by the test server"),
        )),
    }
}
