//! A kata-agent test double: serves a handful of `grpc.AgentService` and
//! `grpc.Health` methods over real ttrpc on a unix socket and records every
//! request it receives (service, method, raw payload) so tests can assert
//! what arrived byte for byte. A fixture, never part of the product.

use base64::Engine;
use peerpod_protocols::agent::GuestDetailsResponse;
use peerpod_protocols::health::{
    health_check_response::ServingStatus, HealthCheckResponse, VersionCheckResponse,
};
use peerpod_protocols::protobuf::Message;
use peerpod_protocols::services::{AGENT, HEALTH};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use ttrpc::proto::ResponseInit;
use ttrpc::r#async::{MethodHandler, Server, Service, TtrpcContext};

/// The env var the real kata-agent reads its listen address from; the
/// double honours it too so a provider can start either the same way.
pub const SERVER_ADDR_ENV: &str = "KATA_AGENT_SERVER_ADDR";

/// The version the double reports from `grpc.Health/Version`.
pub const DOUBLE_AGENT_VERSION: &str = "kata-agent-double-1";

/// One request as it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub service: String,
    pub method: String,
    /// base64 of the request's payload bytes exactly as received (empty
    /// when the payload is larger than [`RECORD_LIMIT`]).
    pub payload_b64: String,
    /// The payload's length in bytes.
    #[serde(default)]
    pub payload_len: usize,
}

/// Payloads up to this size are recorded whole; larger ones (throughput
/// benchmarks) only by length, so recording does not dominate the cost.
pub const RECORD_LIMIT: usize = 64 * 1024;

impl Recorded {
    /// The raw payload bytes.
    pub fn payload(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.payload_b64)
            .unwrap_or_default()
    }
}

/// Appends one JSON line per request to a file (if any) and keeps a copy in
/// memory.
#[derive(Default)]
pub struct Recorder {
    file: Option<Mutex<std::fs::File>>,
    seen: Mutex<Vec<Recorded>>,
}

impl Recorder {
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Some(Mutex::new(f)),
            seen: Mutex::default(),
        })
    }

    fn record(&self, service: &str, method: &str, payload: &[u8]) {
        let r = Recorded {
            service: service.to_string(),
            method: method.to_string(),
            payload_b64: if payload.len() <= RECORD_LIMIT {
                base64::engine::general_purpose::STANDARD.encode(payload)
            } else {
                String::new()
            },
            payload_len: payload.len(),
        };
        if let Some(f) = &self.file {
            if let (Ok(mut f), Ok(line)) = (f.lock(), serde_json::to_string(&r)) {
                let _ = writeln!(f, "{line}");
            }
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(r);
        }
    }

    /// Requests seen so far by this process.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Reads a record file written by a double in another process.
pub fn read_records(path: &Path) -> Vec<Recorded> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[derive(Clone, Copy)]
enum Behaviour {
    Health,
    Version,
    GuestDetails,
    /// Answers with an empty message (google.protobuf.Empty).
    Empty,
    /// Echoes the request payload (methods the real agent does not have).
    Echo,
    /// Never answers: a long poll like WaitProcess for a container that
    /// keeps running.
    Hang,
}

struct Handler {
    service: &'static str,
    method: &'static str,
    behaviour: Behaviour,
    recorder: Arc<Recorder>,
}

fn ok(payload: Vec<u8>) -> ttrpc::Response {
    let mut r = ttrpc::Response::init_status(ttrpc::get_status(ttrpc::Code::OK, String::new()));
    r.set_payload(payload);
    r
}

fn encoded<M: Message>(m: &M) -> ttrpc::Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| ttrpc::Error::Others(format!("encode: {e}")))
}

#[async_trait::async_trait]
impl MethodHandler for Handler {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        self.recorder
            .record(self.service, self.method, &req.payload);
        let payload = match self.behaviour {
            Behaviour::Health => {
                let mut r = HealthCheckResponse::new();
                r.status = ServingStatus::SERVING.into();
                encoded(&r)?
            }
            Behaviour::Version => {
                let mut r = VersionCheckResponse::new();
                r.grpc_version = "ttrpc".into();
                r.agent_version = DOUBLE_AGENT_VERSION.into();
                encoded(&r)?
            }
            Behaviour::GuestDetails => {
                let mut r = GuestDetailsResponse::new();
                r.mem_block_size_bytes = 128 << 20;
                r.support_mem_hotplug_probe = false;
                encoded(&r)?
            }
            Behaviour::Empty => Vec::new(),
            Behaviour::Echo => req.payload,
            Behaviour::Hang => {
                futures::future::pending::<()>().await;
                Vec::new()
            }
        };
        Ok(ok(payload))
    }
}

/// The method table: (service, method, behaviour).
const METHODS: &[(&str, &str, Behaviour)] = &[
    (HEALTH, "Check", Behaviour::Health),
    (HEALTH, "Version", Behaviour::Version),
    (AGENT, "GetGuestDetails", Behaviour::GuestDetails),
    (AGENT, "CreateSandbox", Behaviour::Empty),
    (AGENT, "DestroySandbox", Behaviour::Empty),
    (AGENT, "CreateContainer", Behaviour::Empty),
    (AGENT, "StartContainer", Behaviour::Empty),
    (AGENT, "RemoveContainer", Behaviour::Empty),
    (AGENT, "WaitProcess", Behaviour::Hang),
    (AGENT, "SomeFutureCall", Behaviour::Echo),
    (AGENT, "Echo", Behaviour::Echo),
];

fn services(recorder: &Arc<Recorder>) -> HashMap<String, Service> {
    let mut out: HashMap<String, Service> = HashMap::new();
    for (service, method, behaviour) in METHODS {
        let entry = out.entry(service.to_string()).or_insert_with(|| Service {
            methods: HashMap::new(),
            streams: HashMap::new(),
        });
        entry.methods.insert(
            method.to_string(),
            Box::new(Handler {
                service,
                method,
                behaviour: *behaviour,
                recorder: recorder.clone(),
            }),
        );
    }
    out
}

/// A running double.
pub struct AgentDouble {
    server: Server,
    pub socket: PathBuf,
    pub recorder: Arc<Recorder>,
}

impl AgentDouble {
    /// Listens on `socket` (removed first if a stale file is there).
    pub async fn start(socket: &Path, recorder: Recorder) -> ttrpc::Result<Self> {
        let _ = std::fs::remove_file(socket);
        let recorder = Arc::new(recorder);
        let mut server = Server::new()
            .bind(&format!("unix://{}", socket.display()))?
            .register_service(services(&recorder));
        server.start().await?;
        Ok(Self {
            server,
            socket: socket.to_path_buf(),
            recorder,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.server.shutdown().await;
        let _ = std::fs::remove_file(&self.socket);
    }
}
