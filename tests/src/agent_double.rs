//! A kata-agent test double: serves a handful of `grpc.AgentService` and
//! `grpc.Health` methods over real ttrpc on a unix socket and records every
//! request it receives (service, method, raw payload) so tests can assert
//! what arrived byte for byte. A fixture, never part of the product.
//!
//! Where the project's code depends on how the real kata-agent (4.1)
//! behaves, the double behaves the same (see design.md, "Facts about the
//! real Kata components"), so tests see what production sees:
//! - an unknown method of a known service is answered with code 12
//!   (UNIMPLEMENTED), an unknown service with 3 (INVALID_ARGUMENT);
//! - `GetOOMEvent` stays pending for the sandbox's life; `DestroySandbox`
//!   answers it with code 13 (INTERNAL), kills the containers' processes
//!   and makes the agent exit;
//! - `CreateContainer` starts the container's process (as the real agent
//!   starts the container's init) inside the network namespace the OCI
//!   spec names. That process is a `sleep` that ignores SIGTERM, as a
//!   container's PID 1 without a handler does; it is not killed when the
//!   agent is, only by `DestroySandbox` — on a real VM it dies with the
//!   VM, on the `local` provider the teardown must kill it.
//!
//! For relay tests and benchmarks that need a payload to come back, the
//! double also serves [`TEST_ECHO_SERVICE`]`/Echo`, a service the real
//! agent does not have (its name is not one the shim ever calls).

use base64::Engine;
use peerpod_protocols::agent::{CreateContainerRequest, GuestDetailsResponse};
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
use tokio::sync::watch;
use ttrpc::proto::ResponseInit;
use ttrpc::r#async::{MethodHandler, Server, Service, TtrpcContext};

/// The env var the real kata-agent reads its listen address from; the
/// double honours it too so a provider can start either the same way.
pub const SERVER_ADDR_ENV: &str = "KATA_AGENT_SERVER_ADDR";

/// The version the double reports from `grpc.Health/Version`.
pub const DOUBLE_AGENT_VERSION: &str = "kata-agent-double-1";

/// A service only the double serves (method `Echo`: the request payload
/// comes back unchanged), for relay tests and benchmarks.
pub const TEST_ECHO_SERVICE: &str = "peerpod.testing.Echo";

/// The message of the code-13 answer a pending `GetOOMEvent` gets when the
/// sandbox is destroyed.
pub const OOM_DESTROYED_MESSAGE: &str = "the sandbox was destroyed";

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
    /// Starts the container's process in the namespace the spec names.
    CreateContainer,
    /// Kills the containers, answers pending OOM polls, then the agent exits.
    DestroySandbox,
    /// Pending until the sandbox is destroyed, then code 13.
    OomEvent,
    /// Echoes the request payload ([`TEST_ECHO_SERVICE`] only).
    Echo,
    /// Never answers: a long poll like WaitProcess for a container that
    /// keeps running.
    Hang,
}

/// A container's process, started by CreateContainer.
struct Container {
    id: String,
    child: std::process::Child,
}

/// What every handler shares: the record, the containers, and whether
/// the sandbox was destroyed.
struct Agent {
    recorder: Arc<Recorder>,
    containers: Mutex<Vec<Container>>,
    destroyed: watch::Sender<bool>,
}

impl Agent {
    /// Kills (SIGKILL) and reaps every container process.
    fn kill_containers(&self) {
        let all: Vec<Container> = match self.containers.lock() {
            Ok(mut c) => c.drain(..).collect(),
            Err(_) => return,
        };
        for mut c in all {
            let _ = c.child.kill();
            let _ = c.child.wait();
            tracing::info!(container = %c.id, "container process killed");
        }
    }

    /// Starts the container's process: `sleep infinity` with SIGTERM
    /// ignored, in the network namespace at `netns` (the agent's own when
    /// the spec names none).
    fn start_container(&self, id: &str, netns: Option<&str>) -> std::io::Result<u32> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let ns = netns.map(std::fs::File::open).transpose()?;
        let fd = ns.as_ref().map(|f| f.as_raw_fd());
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("infinity")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls (setns, signal) run between
        // fork and exec; `ns` stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // An ignored signal stays ignored across exec.
                if libc::signal(libc::SIGTERM, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        if let Ok(mut c) = self.containers.lock() {
            c.push(Container {
                id: id.to_string(),
                child,
            });
        }
        Ok(pid)
    }
}

struct Handler {
    service: &'static str,
    method: &'static str,
    behaviour: Behaviour,
    agent: Arc<Agent>,
}

fn ok(payload: Vec<u8>) -> ttrpc::Response {
    let mut r = ttrpc::Response::init_status(ttrpc::get_status(ttrpc::Code::OK, String::new()));
    r.set_payload(payload);
    r
}

/// A response carrying an error status (what the agent's generated
/// handlers send for an `RpcStatus` error; a raw handler's `Err` would
/// always become code 2).
fn status(code: ttrpc::Code, message: impl Into<String>) -> ttrpc::Response {
    ttrpc::Response::init_status(ttrpc::get_status(code, message.into()))
}

fn encoded<M: Message>(m: &M) -> ttrpc::Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| ttrpc::Error::Others(format!("encode: {e}")))
}

/// The network namespace path a CreateContainer spec names, if any.
fn network_namespace(req: &CreateContainerRequest) -> Option<String> {
    req.OCI
        .as_ref()?
        .Linux
        .as_ref()?
        .Namespaces
        .iter()
        .find(|n| n.Type == "network" && !n.Path.is_empty())
        .map(|n| n.Path.clone())
}

#[async_trait::async_trait]
impl MethodHandler for Handler {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        self.agent
            .recorder
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
            Behaviour::CreateContainer => {
                let c = match CreateContainerRequest::parse_from_bytes(&req.payload) {
                    Ok(c) => c,
                    Err(e) => {
                        return Ok(status(
                            ttrpc::Code::INVALID_ARGUMENT,
                            format!("CreateContainerRequest: {e}"),
                        ))
                    }
                };
                let netns = network_namespace(&c);
                let agent = self.agent.clone();
                let id = c.container_id.clone();
                let started = tokio::task::spawn_blocking(move || {
                    agent.start_container(&id, netns.as_deref())
                })
                .await
                .map_err(|e| ttrpc::Error::Others(format!("start container: {e}")))?;
                match started {
                    Ok(pid) => {
                        tracing::info!(container = %c.container_id, pid, "container process started");
                        Vec::new()
                    }
                    Err(e) => {
                        return Ok(status(
                            ttrpc::Code::INTERNAL,
                            format!("start the container's process: {e}"),
                        ))
                    }
                }
            }
            Behaviour::DestroySandbox => {
                let agent = self.agent.clone();
                let _ = tokio::task::spawn_blocking(move || agent.kill_containers()).await;
                self.agent.destroyed.send_replace(true);
                Vec::new()
            }
            Behaviour::OomEvent => {
                let mut destroyed = self.agent.destroyed.subscribe();
                // Ends when the sandbox is destroyed (or the double dropped).
                let _ = destroyed.wait_for(|d| *d).await;
                return Ok(status(ttrpc::Code::INTERNAL, OOM_DESTROYED_MESSAGE));
            }
            Behaviour::Echo => req.payload,
            Behaviour::Hang => {
                futures::future::pending::<()>().await;
                Vec::new()
            }
        };
        Ok(ok(payload))
    }
}

/// The method table: (service, method, behaviour). Any other method of
/// these services gets ttrpc's UNIMPLEMENTED (12), any other service
/// INVALID_ARGUMENT (3), as from the real agent.
const METHODS: &[(&str, &str, Behaviour)] = &[
    (HEALTH, "Check", Behaviour::Health),
    (HEALTH, "Version", Behaviour::Version),
    (AGENT, "GetGuestDetails", Behaviour::GuestDetails),
    (AGENT, "CreateSandbox", Behaviour::Empty),
    (AGENT, "DestroySandbox", Behaviour::DestroySandbox),
    (AGENT, "CreateContainer", Behaviour::CreateContainer),
    (AGENT, "StartContainer", Behaviour::Empty),
    (AGENT, "RemoveContainer", Behaviour::Empty),
    (AGENT, "WaitProcess", Behaviour::Hang),
    (AGENT, "GetOOMEvent", Behaviour::OomEvent),
    (TEST_ECHO_SERVICE, "Echo", Behaviour::Echo),
];

fn services(agent: &Arc<Agent>) -> HashMap<String, Service> {
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
                agent: agent.clone(),
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
    agent: Arc<Agent>,
}

impl AgentDouble {
    /// Listens on `socket` (removed first if a stale file is there).
    pub async fn start(socket: &Path, recorder: Recorder) -> ttrpc::Result<Self> {
        let _ = std::fs::remove_file(socket);
        let recorder = Arc::new(recorder);
        let agent = Arc::new(Agent {
            recorder: recorder.clone(),
            containers: Mutex::new(Vec::new()),
            destroyed: watch::channel(false).0,
        });
        let mut server = Server::new()
            .bind(&format!("unix://{}", socket.display()))?
            .register_service(services(&agent));
        server.start().await?;
        Ok(Self {
            server,
            socket: socket.to_path_buf(),
            recorder,
            agent,
        })
    }

    /// Returns once `DestroySandbox` was answered: the real agent exits
    /// then, and so should the owner of the double.
    pub async fn destroyed(&self) {
        let mut rx = self.agent.destroyed.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Pids of the container processes started so far and still held.
    pub fn container_pids(&self) -> Vec<u32> {
        self.agent
            .containers
            .lock()
            .map(|c| c.iter().map(|c| c.child.id()).collect())
            .unwrap_or_default()
    }

    /// Stops serving. Container processes are left running, as when the
    /// real agent is killed (only `DestroySandbox` stops them).
    pub async fn stop(mut self) {
        let _ = self.server.shutdown().await;
        let _ = std::fs::remove_file(&self.socket);
    }
}
