//! The sandbox registry and its life cycle: one state machine per sandbox
//! (`Created → Provisioning → Running → Stopping → gone`, plus `Failed`),
//! each transition persisted before the side effect it announces. It owns
//! the provider calls, readiness and the per-sandbox agent sockets, and
//! resumes all of it after a restart.

use crate::agent_socket::{AgentSocket, SocketError, Target};
use crate::annotations::{AnnotationError, PodSpec};
use crate::ca::{CaError, NodeCa};
use crate::config::AdaptorConfig;
use crate::pod_network::PodNetworks;
use crate::readiness::wait_ready;
use crate::state::{Phase, SandboxRecord, Store, StoreError};
use crate::upstream::{DialError, Upstream};
use peerpod_provider_api::{instance_name, InstanceRequest, OwnerTags, Provider, ProviderError};
use peerpod_relay::relay::RelayCounters;
use peerpod_relay::RelayOptions;
use peerpod_vmconfig::userdata::UserData;
use peerpod_vmconfig::ForwarderConfig;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, Mutex};

/// Longest accepted sandbox id (containerd uses 64 hex characters).
const MAX_ID_LEN: usize = 128;
/// Teardown retries back off up to this.
const MAX_TEARDOWN_BACKOFF: Duration = Duration::from_secs(30);

/// What went wrong, with the ttrpc code the shim gets.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("invalid sandbox id {id:?}: {why}")]
    InvalidId { id: String, why: &'static str },
    #[error("CreateVM {id}: {source}")]
    Annotation { id: String, source: AnnotationError },
    #[error("CreateVM {id}: sandbox id is already in use (phase {phase})")]
    Duplicate { id: String, phase: &'static str },
    #[error(
        "CreateVM {id}: this node already runs {limit} peer pods, its limit \
         (PEERPODS_LIMIT_PER_NODE); stop one or raise the limit"
    )]
    NodeFull { id: String, limit: usize },
    #[error("StartVM {0}: no such sandbox (CreateVM was not called, or it was stopped)")]
    Unknown(String),
    #[error("StartVM {id}: sandbox is {phase}, not created")]
    WrongPhase { id: String, phase: &'static str },
    #[error("StartVM {id} failed in phase \"{phase}\": {message}")]
    Start {
        id: String,
        phase: &'static str,
        message: String,
        provider_error: Option<ProviderError>,
    },
    #[error("StartVM {id}: stopped by StopVM before it was ready")]
    Cancelled { id: String },
    #[error("persisting sandbox state: {0}")]
    Store(#[from] StoreError),
    #[error("agent socket: {0}")]
    Socket(#[from] SocketError),
    #[error("node CA: {0}")]
    Ca(#[from] CaError),
    #[error("CreateVM {id}: {source}")]
    Network {
        id: String,
        source: peerpod_podnet::PodnetError,
    },
    #[error("pod network settings: {0}")]
    NetworkConfig(peerpod_podnet::PodnetError),
}

impl ManagerError {
    /// The ttrpc status code for this error.
    pub fn code(&self) -> ttrpc::Code {
        use peerpod_provider_api::ErrorKind as K;
        match self {
            ManagerError::InvalidId { .. } | ManagerError::Annotation { .. } => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            ManagerError::Duplicate { .. } => ttrpc::Code::ALREADY_EXISTS,
            ManagerError::NodeFull { .. } => ttrpc::Code::RESOURCE_EXHAUSTED,
            ManagerError::Unknown(_) => ttrpc::Code::NOT_FOUND,
            ManagerError::WrongPhase { .. } => ttrpc::Code::FAILED_PRECONDITION,
            ManagerError::Cancelled { .. } => ttrpc::Code::CANCELLED,
            ManagerError::Start {
                provider_error,
                phase,
                ..
            } => match provider_error.as_ref().map(|e| e.kind) {
                Some(K::Throttled | K::QuotaExceeded | K::InsufficientCapacity) => {
                    ttrpc::Code::RESOURCE_EXHAUSTED
                }
                Some(K::InvalidConfig | K::InvalidRequest) => ttrpc::Code::INVALID_ARGUMENT,
                Some(K::PermissionDenied) => ttrpc::Code::PERMISSION_DENIED,
                Some(K::NotFound) => ttrpc::Code::NOT_FOUND,
                Some(K::Transient) => ttrpc::Code::UNAVAILABLE,
                Some(K::Permanent) => ttrpc::Code::FAILED_PRECONDITION,
                None if *phase == PHASE_READY => ttrpc::Code::DEADLINE_EXCEEDED,
                None => ttrpc::Code::INTERNAL,
            },
            ManagerError::Network { .. } => ttrpc::Code::FAILED_PRECONDITION,
            ManagerError::Store(_)
            | ManagerError::Socket(_)
            | ManagerError::Ca(_)
            | ManagerError::NetworkConfig(_) => ttrpc::Code::INTERNAL,
        }
    }
}

const PHASE_CREATE: &str = "provider create";
const PHASE_READY: &str = "agent ready";
const PHASE_CONFIG: &str = "VM config";
const PHASE_NETWORK: &str = "pod network";

/// Checks a sandbox id before it is used in paths and tags.
pub fn check_sandbox_id(id: &str) -> Result<(), ManagerError> {
    let bad = |why| {
        Err(ManagerError::InvalidId {
            id: id.chars().take(MAX_ID_LEN).collect(),
            why,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > MAX_ID_LEN {
        return bad("longer than 128 characters");
    }
    if id.starts_with('.') {
        return bad("starts with a dot");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One sandbox in memory.
struct Sandbox {
    record: Mutex<SandboxRecord>,
    /// Held by StartVM for its whole run and by the teardown, so the two
    /// never act on the instance at the same time.
    op: Mutex<()>,
    socket: StdMutex<Option<AgentSocket>>,
    stop_requested: watch::Sender<bool>,
}

impl Sandbox {
    fn new(record: SandboxRecord) -> Arc<Self> {
        Arc::new(Self {
            record: Mutex::new(record),
            op: Mutex::new(()),
            socket: StdMutex::new(None),
            stop_requested: watch::channel(false).0,
        })
    }

    fn set_target(&self, t: Target) {
        if let Ok(s) = self.socket.lock() {
            if let Some(s) = s.as_ref() {
                s.set_target(t);
            }
        }
    }

    fn close_socket(&self) {
        if let Ok(mut s) = self.socket.lock() {
            s.take();
        }
    }
}

/// A short summary for `list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SandboxSummary {
    pub id: String,
    pub pod: String,
    pub namespace: String,
    pub phase: Phase,
    pub instance_id: Option<String>,
    pub instance_ip: Option<std::net::IpAddr>,
    pub created_at: u64,
}

/// The registry.
pub struct Manager {
    cfg: AdaptorConfig,
    provider: Arc<dyn Provider>,
    store: Store,
    ca: Option<NodeCa>,
    client_tls: Option<Arc<rustls::ClientConfig>>,
    sandboxes: StdMutex<HashMap<String, Arc<Sandbox>>>,
    counters: Arc<RelayCounters>,
    /// Background teardowns still running (tests and shutdown wait on it).
    teardowns: watch::Sender<usize>,
    nets: PodNetworks,
    /// Bounds provider creates in flight.
    create_slots: tokio::sync::Semaphore,
    orphans: crate::orphans::OrphanCollector,
    metrics: crate::metrics::Metrics,
}

impl Manager {
    /// Opens the state directory and the node CA.
    pub fn new(cfg: AdaptorConfig, provider: Arc<dyn Provider>) -> Result<Arc<Self>, ManagerError> {
        let provider: Arc<dyn Provider> = Arc::new(crate::provider_timeout::TimedProvider::new(
            provider,
            cfg.provider_timeout,
        ));
        let store = Store::open(&cfg.state_dir)?;
        let (ca, client_tls) = if cfg.tls {
            let ca = NodeCa::load_or_create(&cfg.state_dir)?;
            let client = ca.client_config()?;
            (Some(ca), Some(client))
        } else {
            tracing::warn!(
                "TLS TO POD VMS IS OFF (--no-tls): agent traffic crosses the network in clear text \
                 and any host can drive a pod's kata-agent. Use this only for debugging."
            );
            (None, None)
        };
        let nets = PodNetworks::new(cfg.vxlan_port, cfg.vni_base, cfg.worker_ip)
            .map_err(ManagerError::NetworkConfig)?;
        Ok(Arc::new(Self {
            orphans: crate::orphans::OrphanCollector::default(),
            metrics: crate::metrics::Metrics::new(),
            create_slots: tokio::sync::Semaphore::new(cfg.max_concurrent_creates.max(1)),
            nets,
            cfg,
            provider,
            store,
            ca,
            client_tls,
            sandboxes: StdMutex::new(HashMap::new()),
            counters: Arc::new(RelayCounters::default()),
            teardowns: watch::channel(0).0,
        }))
    }

    pub fn config(&self) -> &AdaptorConfig {
        &self.cfg
    }

    pub fn provider_name(&self) -> &str {
        self.provider.name()
    }

    /// Relay byte and connection counters of every sandbox.
    pub fn relay_counters(&self) -> Arc<RelayCounters> {
        self.counters.clone()
    }

    /// The metrics in the Prometheus text format, gauges brought up to
    /// date first (sandboxes by phase, relay totals).
    pub async fn metrics_text(&self) -> String {
        let all: Vec<Arc<Sandbox>> = match self.sandboxes.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut counts: Vec<(&'static str, i64)> =
            Phase::ALL.iter().map(|p| (p.as_str(), 0)).collect();
        for sb in all {
            let phase = sb.record.lock().await.phase.as_str();
            if let Some(c) = counts.iter_mut().find(|(p, _)| *p == phase) {
                c.1 += 1;
            }
        }
        self.metrics.set_sandboxes(&counts);
        self.metrics.set_relay(
            &self.counters.bytes_to_upstream,
            &self.counters.bytes_to_downstream,
            &self.counters.active_connections,
        );
        self.metrics.render()
    }

    fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.sandboxes.lock().ok().and_then(|m| m.get(id).cloned())
    }

    fn relay_options(&self, id: &str) -> RelayOptions {
        RelayOptions {
            max_payload: self.cfg.max_frame_bytes,
            label: id.to_string(),
            counters: self.counters.clone(),
        }
    }

    fn owner(&self, id: &str) -> OwnerTags {
        OwnerTags {
            node: self.cfg.node_name.clone(),
            sandbox_id: id.to_string(),
        }
    }

    /// How to reach the forwarder of instance `name` at `ip`.
    fn upstream(&self, name: &str, ip: std::net::IpAddr) -> Result<Upstream, DialError> {
        Upstream::new(
            SocketAddr::new(ip, self.cfg.forwarder_port),
            name,
            self.client_tls.clone(),
            self.cfg.connect_timeout,
        )
    }

    /// Every sandbox, oldest first.
    pub async fn list(&self) -> Vec<SandboxSummary> {
        let all: Vec<Arc<Sandbox>> = match self.sandboxes.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut out = Vec::new();
        for sb in all {
            let r = sb.record.lock().await;
            out.push(SandboxSummary {
                id: r.id.clone(),
                pod: r.spec.pod_name.clone(),
                namespace: r.spec.pod_namespace.clone(),
                phase: r.phase,
                instance_id: r.instance_id.clone(),
                instance_ip: r.instance_ip,
                created_at: r.created_at,
            });
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    /// CreateVM: validates, persists the sandbox and serves its agent
    /// socket (connections wait until the VM is ready). Returns the socket.
    pub async fn create_vm(
        &self,
        id: &str,
        annotations: &HashMap<String, String>,
        netns_path: &str,
    ) -> Result<std::path::PathBuf, ManagerError> {
        check_sandbox_id(id)?;
        let spec =
            PodSpec::from_annotations(annotations).map_err(|source| ManagerError::Annotation {
                id: id.to_string(),
                source,
            })?;
        if self.get(id).is_some() {
            return Err(self.duplicate(id));
        }
        self.check_node_limit(id).await?;
        let netns_path = Some(netns_path.to_string()).filter(|p| !p.is_empty());
        let network = match &netns_path {
            Some(p) => {
                Some(
                    self.nets
                        .prepare(p)
                        .await
                        .map_err(|source| ManagerError::Network {
                            id: id.to_string(),
                            source,
                        })?,
                )
            }
            None => {
                tracing::info!(
                    sandbox = id,
                    "no network namespace given: the pod VM gets no pod network"
                );
                None
            }
        };
        let record = SandboxRecord {
            id: id.to_string(),
            instance_name: instance_name(&spec.pod_name, id, self.cfg.instance_name_max),
            spec,
            netns_path,
            network,
            phase: Phase::Created,
            instance_id: None,
            instance_ip: None,
            last_error: None,
            created_at: now_secs(),
        };
        let sb = {
            let mut map = self
                .sandboxes
                .lock()
                .map_err(|_| ManagerError::Unknown(id.into()))?;
            if let Some(existing) = map.get(id) {
                let phase = existing
                    .record
                    .try_lock()
                    .map(|r| r.phase.as_str())
                    .unwrap_or("busy");
                if let Some(n) = &record.network {
                    self.nets.release(n);
                }
                return Err(ManagerError::Duplicate {
                    id: id.to_string(),
                    phase,
                });
            }
            let sb = Sandbox::new(record.clone());
            map.insert(id.to_string(), sb.clone());
            sb
        };
        tracing::info!(
            "create a sandbox {} for pod {} in namespace {}",
            id,
            record.spec.pod_name,
            record.spec.pod_namespace
        );
        let result = async {
            self.store.save(&record)?;
            let path = self.cfg.agent_socket(id);
            let socket = AgentSocket::serve(&path, Target::Pending, self.relay_options(id))?;
            if let Ok(mut s) = sb.socket.lock() {
                *s = Some(socket);
            }
            Ok::<_, ManagerError>(path)
        }
        .await;
        if result.is_err() {
            // Nothing was created outside this process: forget it whole.
            if let Ok(mut m) = self.sandboxes.lock() {
                m.remove(id);
            }
            let _ = self.store.remove(id);
            let _ = std::fs::remove_dir_all(self.cfg.pods_dir.join(id));
            if let Some(n) = &record.network {
                self.nets.release(n);
            }
        }
        result
    }

    /// Refuses a new sandbox when the node runs its limit already
    /// (sandboxes being torn down do not count).
    async fn check_node_limit(&self, id: &str) -> Result<(), ManagerError> {
        let all: Vec<Arc<Sandbox>> = match self.sandboxes.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut live = 0;
        for sb in all {
            if sb.record.lock().await.phase != Phase::Stopping {
                live += 1;
            }
        }
        if live >= self.cfg.limit_per_node {
            return Err(ManagerError::NodeFull {
                id: id.to_string(),
                limit: self.cfg.limit_per_node,
            });
        }
        Ok(())
    }

    fn duplicate(&self, id: &str) -> ManagerError {
        let phase = self
            .get(id)
            .and_then(|sb| sb.record.try_lock().ok().map(|r| r.phase.as_str()))
            .unwrap_or("busy");
        ManagerError::Duplicate {
            id: id.to_string(),
            phase,
        }
    }

    /// StartVM: creates the instance and returns once the agent answered a
    /// Health check through the forwarder. The work runs in its own task,
    /// so a caller that goes away cannot leave a half-made VM behind.
    pub async fn start_vm(
        self: &Arc<Self>,
        id: &str,
        caller_timeout: Option<Duration>,
    ) -> Result<(), ManagerError> {
        check_sandbox_id(id)?;
        let sb = self
            .get(id)
            .ok_or_else(|| ManagerError::Unknown(id.to_string()))?;
        let budget = match caller_timeout {
            // Leave the caller time to receive our answer.
            Some(t) => t
                .saturating_sub(Duration::from_millis(200))
                .min(self.cfg.start_timeout),
            None => self.cfg.start_timeout,
        };
        let started = Instant::now();
        let deadline = started + budget;
        let this = self.clone();
        let id_owned = id.to_string();
        let task = tokio::spawn(async move { this.run_start(&id_owned, sb, deadline).await });
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(ManagerError::Start {
                id: id.to_string(),
                phase: "internal",
                message: format!("start task ended: {e}"),
                provider_error: None,
            }),
        };
        self.metrics
            .observe_start(result.is_ok(), started.elapsed());
        result
    }

    async fn run_start(
        &self,
        id: &str,
        sb: Arc<Sandbox>,
        deadline: Instant,
    ) -> Result<(), ManagerError> {
        let _op = sb.op.lock().await;
        let mut stop_rx = sb.stop_requested.subscribe();
        if *stop_rx.borrow() {
            return Err(ManagerError::Cancelled { id: id.into() });
        }
        // Created → Provisioning, persisted before the provider is asked.
        let request = {
            let mut r = sb.record.lock().await;
            match r.phase {
                Phase::Created => {}
                Phase::Running => return Ok(()),
                other => {
                    return Err(ManagerError::WrongPhase {
                        id: id.into(),
                        phase: other.as_str(),
                    })
                }
            }
            let request = self
                .instance_request(&r)
                .await
                .map_err(|e| ManagerError::Start {
                    id: id.into(),
                    phase: PHASE_CONFIG,
                    message: e.to_string(),
                    provider_error: None,
                })?;
            r.phase = Phase::Provisioning;
            self.store.save(&r)?;
            request
        };
        let name = request.name.clone();
        let started = Instant::now();
        tracing::info!(sandbox = id, instance = %name, provider = self.provider.name(), "creating the pod VM");
        let created = {
            // Closed never: the semaphore lives as long as the manager.
            let _slot = self.create_slots.acquire().await.ok();
            self.provider.create_instance(request).await
        };
        let instance = match created {
            Ok(i) => i,
            Err(e) => {
                self.metrics.provider_error("create", e.kind);
                tracing::warn!(sandbox = id, error = %e, "provider create failed");
                // A failed create may still have made something: sweep by owner tags.
                self.delete_owned_instances(id, None).await;
                self.mark_failed(&sb, &e.to_string()).await?;
                return Err(ManagerError::Start {
                    id: id.into(),
                    phase: PHASE_CREATE,
                    message: e.to_string(),
                    provider_error: Some(e),
                });
            }
        };
        let create_took = started.elapsed();
        let ip = instance.ips.first().copied();
        let (netns_path, network) = {
            let mut r = sb.record.lock().await;
            r.instance_id = Some(instance.id.clone());
            r.instance_ip = ip;
            self.store.save(&r)?;
            (r.netns_path.clone(), r.network.clone())
        };
        tracing::info!(sandbox = id, instance_id = %instance.id, ip = ?ip, took = ?create_took, "pod VM created");
        let fail = |phase: &'static str, message: String| ManagerError::Start {
            id: id.into(),
            phase,
            message,
            provider_error: None,
        };
        let outcome: Result<Duration, ManagerError> = async {
            let Some(ip) = ip else {
                return Err(fail(PHASE_CREATE, format!("provider returned instance {} without an IP address", instance.id)));
            };
            let up = self
                .upstream(&name, ip)
                .map_err(|e| fail(PHASE_CONFIG, e.to_string()))?;
            if let (Some(path), Some(net)) = (&netns_path, &network) {
                let t = Instant::now();
                let report = self
                    .nets
                    .attach(path, net, ip)
                    .await
                    .map_err(|e| fail(PHASE_NETWORK, e.to_string()))?;
                tracing::info!(sandbox = id, vni = net.vni, vm_ip = %ip, took = ?t.elapsed(), underlay_mtu = ?report.underlay_mtu, "pod network tunnel up");
            }
            let ready = tokio::select! {
                r = wait_ready(&up, deadline) => r,
                _ = stop_rx.wait_for(|s| *s) => return Err(ManagerError::Cancelled { id: id.into() }),
            };
            match ready {
                Ok(took) => {
                    let mut r = sb.record.lock().await;
                    if r.phase != Phase::Provisioning {
                        return Err(ManagerError::Cancelled { id: id.into() });
                    }
                    r.phase = Phase::Running;
                    r.last_error = None;
                    self.store.save(&r)?;
                    sb.set_target(Target::Ready(up));
                    Ok(took)
                }
                Err(e) => {
                    let mut msg = e.to_string();
                    if let Some(console) = self.provider.console_tail(&instance.id).await {
                        msg.push_str("; console tail:\n");
                        msg.push_str(&console);
                    }
                    Err(fail(PHASE_READY, msg))
                }
            }
        }
        .await;
        match outcome {
            Ok(ready_took) => {
                tracing::info!(sandbox = id, provider_create = ?create_took, agent_ready = ?ready_took, "sandbox running");
                Ok(())
            }
            Err(ManagerError::Cancelled { .. }) => {
                // StopVM owns the teardown from here (it waits for `op`).
                Err(ManagerError::Cancelled { id: id.into() })
            }
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "StartVM failed; deleting the instance it created");
                self.delete_owned_instances(id, Some(&instance.id)).await;
                self.detach_network(id, &sb).await;
                self.mark_failed(&sb, &e.to_string()).await?;
                Err(e)
            }
        }
    }

    async fn instance_request(&self, r: &SandboxRecord) -> Result<InstanceRequest, ManagerError> {
        let tls = match &self.ca {
            Some(ca) => Some(ca.issue_server(&r.instance_name)?),
            None => None,
        };
        let mut fwd = ForwarderConfig::new(r.id.clone(), tls);
        fwd.listen = format!("0.0.0.0:{}", self.cfg.forwarder_port);
        fwd.max_frame_bytes = self.cfg.max_frame_bytes;
        if let Some(n) = &r.network {
            fwd.pod_network = Some(
                self.nets
                    .vm_spec(n)
                    .await
                    .map_err(ManagerError::NetworkConfig)?,
            );
        }
        // The one place the VM's user data is built, for every provider.
        let user_data = UserData {
            forwarder: fwd,
            initdata: r
                .spec
                .initdata
                .clone()
                .or_else(|| self.cfg.initdata.clone()),
            registry_auth: self.cfg.registry_auth.clone(),
        }
        .to_cloud_config();
        Ok(InstanceRequest {
            name: r.instance_name.clone(),
            owner: self.owner(&r.id),
            extra_tags: BTreeMap::new(),
            vcpus: r.spec.vcpus,
            memory_mib: r.spec.memory_mib,
            image: r.spec.image.clone(),
            machine_type: r.spec.machine_type.clone(),
            user_data,
        })
    }

    async fn mark_failed(&self, sb: &Sandbox, why: &str) -> Result<(), ManagerError> {
        let mut r = sb.record.lock().await;
        if r.phase == Phase::Stopping {
            return Ok(());
        }
        r.phase = Phase::Failed;
        r.instance_id = None;
        r.instance_ip = None;
        r.last_error = Some(why.chars().take(2000).collect());
        self.store.save(&r)?;
        sb.set_target(Target::Closed);
        Ok(())
    }

    /// Deletes the instance `known` (if any) and every other instance
    /// carrying this sandbox's owner tags; returns whether all are gone.
    async fn delete_owned_instances(&self, id: &str, known: Option<&str>) -> bool {
        let mut all_gone = true;
        let mut ids: Vec<String> = known.map(|k| vec![k.to_string()]).unwrap_or_default();
        match self.provider.list_instances(&self.owner(id)).await {
            Ok(found) => {
                for i in found {
                    if !ids.contains(&i.id) {
                        ids.push(i.id);
                    }
                }
            }
            Err(e) => {
                self.metrics.provider_error("list", e.kind);
                tracing::warn!(sandbox = id, error = %e, "listing instances by owner tags failed");
                all_gone = false;
            }
        }
        for iid in ids {
            match self.provider.delete_instance(&iid).await {
                Ok(()) => tracing::info!(sandbox = id, instance_id = %iid, "pod VM deleted"),
                Err(e) => {
                    self.metrics.provider_error("delete", e.kind);
                    tracing::warn!(sandbox = id, instance_id = %iid, error = %e, "deleting the pod VM failed");
                    all_gone = false;
                }
            }
        }
        all_gone
    }

    /// StopVM: answers at once; the teardown (relay closed, instance
    /// deleted, pod directory removed, record forgotten) is persisted and
    /// runs in the background until done.
    pub async fn stop_vm(self: &Arc<Self>, id: &str) -> Result<(), ManagerError> {
        check_sandbox_id(id)?;
        let Some(sb) = self.get(id) else {
            tracing::info!(
                sandbox = id,
                "StopVM for a sandbox this adaptor does not know (already stopped?): nothing to do"
            );
            return Ok(());
        };
        {
            let mut r = sb.record.lock().await;
            if r.phase == Phase::Stopping {
                tracing::info!(sandbox = id, "StopVM again: teardown already under way");
                return Ok(());
            }
            r.phase = Phase::Stopping;
            self.store.save(&r)?;
        }
        sb.stop_requested.send_replace(true);
        sb.close_socket();
        tracing::info!(
            sandbox = id,
            "StopVM: tearing the sandbox down in the background"
        );
        self.spawn_teardown(id.to_string(), sb);
        Ok(())
    }

    fn spawn_teardown(self: &Arc<Self>, id: String, sb: Arc<Sandbox>) {
        self.teardowns.send_modify(|n| *n += 1);
        let this = self.clone();
        tokio::spawn(async move {
            this.teardown(&id, &sb).await;
            this.teardowns.send_modify(|n| *n = n.saturating_sub(1));
        });
    }

    async fn teardown(&self, id: &str, sb: &Sandbox) {
        let started = Instant::now();
        // Wait for a StartVM in progress to hand over.
        let _op = sb.op.lock().await;
        let mut backoff = Duration::from_millis(100);
        loop {
            let known = sb.record.lock().await.instance_id.clone();
            let instances_gone = self.delete_owned_instances(id, known.as_deref()).await;
            if self.detach_network(id, sb).await && instances_gone {
                break;
            }
            tracing::warn!(sandbox = id, retry_in = ?backoff, "teardown incomplete; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_TEARDOWN_BACKOFF);
        }
        let dir = self.cfg.pods_dir.join(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(sandbox = id, dir = %dir.display(), error = %e, "cannot remove the pod directory");
            }
        }
        loop {
            match self.store.remove(id) {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(sandbox = id, error = %e, "cannot forget the sandbox record; retrying");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        if let Some(n) = &sb.record.lock().await.network {
            self.nets.release(n);
        }
        if let Ok(mut m) = self.sandboxes.lock() {
            m.remove(id);
        }
        self.metrics
            .stop_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            sandbox = id,
            "sandbox stopped: instance deleted, tunnel and pod directory removed"
        );
    }

    /// Removes the worker end of the sandbox's tunnel, if it has one;
    /// returns whether it is gone (the VXLAN id stays held until the
    /// record is forgotten).
    async fn detach_network(&self, id: &str, sb: &Sandbox) -> bool {
        let (path, net) = {
            let r = sb.record.lock().await;
            (r.netns_path.clone(), r.network.clone())
        };
        let (Some(path), Some(net)) = (path, net) else {
            return true;
        };
        match self.nets.detach(&path, &net).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "removing the pod network tunnel failed");
                false
            }
        }
    }

    /// One orphan-collection pass over this node's instances (see
    /// [`crate::orphans`]). Sandboxes this adaptor knows — in any phase —
    /// own their instances.
    pub async fn collect_orphans(
        &self,
    ) -> Result<crate::orphans::PassReport, peerpod_provider_api::ProviderError> {
        let live: std::collections::HashSet<String> = match self.sandboxes.lock() {
            Ok(m) => m.keys().cloned().collect(),
            Err(_) => {
                return Err(ProviderError::new(
                    peerpod_provider_api::ErrorKind::Transient,
                    "sandbox registry unavailable",
                ))
            }
        };
        let report = self
            .orphans
            .pass(
                self.provider.as_ref(),
                &self.cfg.node_name,
                &live,
                &self.cfg.orphans,
            )
            .await
            .inspect_err(|e| self.metrics.provider_error("list", e.kind))?;
        self.metrics
            .orphans_collected
            .inc_by(report.deleted.len() as u64);
        for (_, kind) in &report.failed {
            self.metrics.provider_error("delete", *kind);
        }
        Ok(report)
    }

    /// Runs orphan passes now and every `interval` until the manager is
    /// dropped (a zero interval: only the start-up pass).
    pub fn spawn_orphan_collector(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = self.cfg.orphans.interval;
        tokio::spawn(async move {
            loop {
                let Some(m) = weak.upgrade() else { return };
                match m.collect_orphans().await {
                    Ok(r) if !r.orphans.is_empty() => tracing::info!(
                        orphans = r.orphans.len(),
                        deleted = r.deleted.len(),
                        failed = r.failed.len(),
                        "orphan collection pass"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "orphan collection: listing this node's instances failed")
                    }
                }
                let grace = m.cfg.orphans.grace;
                drop(m);
                if interval.is_zero() {
                    // One more pass once the start-up orphans are past grace.
                    tokio::time::sleep(grace).await;
                    if let Some(m) = weak.upgrade() {
                        let _ = m.collect_orphans().await;
                    }
                    return;
                }
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Waits until no teardown is running (for tests and orderly shutdown).
    pub async fn wait_teardowns(&self) {
        let mut rx = self.teardowns.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Ids of every instance carrying this node's owner tag; `None` when
    /// the provider cannot list (then nothing is concluded from absence).
    async fn node_instance_ids(&self) -> Option<std::collections::HashSet<String>> {
        match self.provider.list_instances(&self.owner("")).await {
            Ok(v) => Some(v.into_iter().map(|i| i.id).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "listing this node's instances at start-up failed; running sandboxes are recovered unchecked");
                None
            }
        }
    }

    /// Reloads every persisted sandbox after a (re)start: running ones get
    /// their agent socket and relay back (or are marked failed when the
    /// provider no longer lists their instance), interrupted starts are
    /// cleaned up, interrupted teardowns resume.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, ManagerError> {
        let (records, bad) = self.store.load_all()?;
        for e in bad {
            tracing::error!(error = %e, "skipping an unreadable sandbox record (left on disk for inspection)");
        }
        let n = records.len();
        let listed = self.node_instance_ids().await;
        for mut r in records {
            let id = r.id.clone();
            if check_sandbox_id(&id).is_err() {
                tracing::error!(sandbox = %id, "skipping a record with an invalid id");
                continue;
            }
            if let Some(n) = &r.network {
                self.nets.mark_held(n);
            }
            let netns_gone = r
                .netns_path
                .as_ref()
                .is_some_and(|p| !std::path::Path::new(p).exists());
            if netns_gone && r.phase != Phase::Stopping {
                tracing::warn!(sandbox = %id, netns = ?r.netns_path, "the pod's network namespace is gone (pod deleted while the adaptor was down): stopping the sandbox");
                r.phase = Phase::Stopping;
                self.store.save(&r)?;
            }
            if r.phase == Phase::Provisioning {
                tracing::warn!(sandbox = %id, "adaptor stopped during StartVM; deleting what it may have created");
                self.delete_owned_instances(&id, r.instance_id.as_deref())
                    .await;
                r.phase = Phase::Failed;
                r.instance_id = None;
                r.instance_ip = None;
                r.last_error = Some("adaptor restarted during StartVM".into());
                self.store.save(&r)?;
            }
            if let (Phase::Running, Some(listed)) = (r.phase, &listed) {
                if !r.instance_id.as_ref().is_some_and(|i| listed.contains(i)) {
                    tracing::warn!(sandbox = %id, instance_id = ?r.instance_id, "the pod VM of a running sandbox is gone (deleted while the adaptor was down): marking the sandbox failed");
                    r.phase = Phase::Failed;
                    r.last_error = Some(format!(
                        "pod VM {} disappeared while the adaptor was down",
                        r.instance_id.as_deref().unwrap_or("(none)")
                    ));
                    r.instance_id = None;
                    r.instance_ip = None;
                    self.store.save(&r)?;
                }
            }
            let target = match r.phase {
                Phase::Running => match r.instance_ip.map(|ip| self.upstream(&r.instance_name, ip))
                {
                    Some(Ok(up)) => Target::Ready(up),
                    _ => Target::Closed,
                },
                Phase::Created => Target::Pending,
                _ => Target::Closed,
            };
            let phase = r.phase;
            let sb = Sandbox::new(r);
            if let Ok(mut m) = self.sandboxes.lock() {
                m.insert(id.clone(), sb.clone());
            }
            if phase == Phase::Stopping {
                tracing::info!(sandbox = %id, "resuming an interrupted teardown");
                sb.stop_requested.send_replace(true);
                self.spawn_teardown(id, sb);
                continue;
            }
            match AgentSocket::serve(&self.cfg.agent_socket(&id), target, self.relay_options(&id)) {
                Ok(s) => {
                    if let Ok(mut slot) = sb.socket.lock() {
                        *slot = Some(s);
                    }
                    tracing::info!(sandbox = %id, phase = phase.as_str(), "sandbox recovered");
                }
                Err(e) => {
                    tracing::error!(sandbox = %id, error = %e, "cannot serve the recovered sandbox's agent socket")
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_id_rules() {
        check_sandbox_id("a1b2c3-d_e.f").unwrap();
        for bad in ["", "../etc", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            let e = check_sandbox_id(bad).unwrap_err().to_string();
            assert!(e.contains("invalid sandbox id"), "{bad}: {e}");
        }
    }
}
