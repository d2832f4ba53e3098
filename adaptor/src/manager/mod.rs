//! The sandbox registry and its life cycle: one state machine per sandbox
//! (`Created → Provisioning → Running → Stopping → gone`, plus `Failed`),
//! each transition persisted before the side effect it announces. It owns
//! the provider calls, readiness and the per-sandbox agent sockets, and
//! resumes all of it after a restart. Each call lives in its own module:
//! [`create`] (CreateVM and the node limit), [`start`] (StartVM, step by
//! step), [`teardown`] (StopVM and the background teardown), [`recover`]
//! (after a restart) and [`collect`] (orphan collection passes).

mod collect;
mod create;
mod error;
mod liveness;
mod recover;
mod start;
mod teardown;
pub mod warm;

pub use error::{
    check_sandbox_id, ManagerError, PHASE_BIND, PHASE_CONFIG, PHASE_CREATE, PHASE_NETWORK,
    PHASE_READY,
};

use crate::agent_socket::{AgentSocket, Target};
use crate::ca::NodeCa;
use crate::config::AdaptorConfig;
use crate::lifecycle::{EventKind, Observers, SandboxEvent, SandboxObserver};
use crate::pod_network::PodNetworks;
use crate::state::{Phase, SandboxRecord, Store};
use crate::upstream::{DialError, Upstream};
use peerpod_provider_api::{OwnerTags, Provider};
use peerpod_relay::relay::RelayCounters;
use peerpod_relay::RelayOptions;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::SystemTime;
use tokio::sync::{watch, Mutex};

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
    /// Whether StopVM (or a resumed teardown) has taken this sandbox: it
    /// no longer counts toward the node's limit.
    fn stopping(&self) -> bool {
        *self.stop_requested.borrow()
    }

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
    /// The warm pool VM the sandbox was bound to, if it came from the pool.
    pub pool_vm: Option<String>,
    pub created_at: u64,
}

/// The sandboxes in memory, and the ids CreateVM has reserved a place for
/// while it prepares their network. Both sit under one lock so that the
/// per-node limit is checked and taken in one step.
#[derive(Default)]
struct Registry {
    sandboxes: HashMap<String, Arc<Sandbox>>,
    reserved: HashSet<String>,
}

impl Registry {
    /// Sandboxes that count toward the node's limit.
    fn live(&self) -> usize {
        self.sandboxes.values().filter(|s| !s.stopping()).count() + self.reserved.len()
    }
}

/// The registry.
pub struct Manager {
    cfg: AdaptorConfig,
    provider: Arc<dyn Provider>,
    store: Store,
    ca: Option<NodeCa>,
    client_tls: Option<Arc<rustls::ClientConfig>>,
    registry: StdMutex<Registry>,
    counters: Arc<RelayCounters>,
    /// Background teardowns still running (tests and shutdown wait on it).
    teardowns: watch::Sender<usize>,
    /// Set at daemon shutdown: the background loops (pool refill, liveness,
    /// orphan collection) end instead of acting for a stopped daemon.
    background_stopped: std::sync::atomic::AtomicBool,
    nets: PodNetworks,
    /// Bounds provider creates in flight.
    create_slots: tokio::sync::Semaphore,
    orphans: crate::orphans::OrphanCollector,
    metrics: crate::metrics::Metrics,
    observers: Observers,
    /// The warm pool's bookkeeping (always open: records of an earlier
    /// configuration are deleted even when the pool is now off).
    pool: Arc<crate::pool::WarmPool>,
    /// The adaptor's client identity for the pool's bootstrap channels.
    client_identity: Option<crate::pool::bind::ClientIdentity>,
    /// Consecutive pool VM failures (create or boot); the filler backs off.
    pool_failures: std::sync::atomic::AtomicUsize,
    /// Consecutive failed liveness checks per running sandbox.
    liveness: crate::liveness::Tracker,
}

impl Manager {
    /// Opens the state directory and the node CA.
    pub fn new(cfg: AdaptorConfig, provider: Arc<dyn Provider>) -> Result<Arc<Self>, ManagerError> {
        let provider: Arc<dyn Provider> = Arc::new(crate::provider_timeout::TimedProvider::new(
            provider,
            cfg.provider_timeout,
        ));
        let store = Store::open(&cfg.state_dir)?;
        let (ca, client_tls, client_identity) = if cfg.tls {
            let ca = NodeCa::load_or_create(&cfg.state_dir)?;
            let client = ca.client_config()?;
            let id = ca.issue_client()?;
            (Some(ca), Some(client), Some(id))
        } else {
            tracing::warn!(
                "TLS TO POD VMS IS OFF (--no-tls): agent traffic crosses the network in clear text \
                 and any host can drive a pod's kata-agent. Use this only for debugging."
            );
            (None, None, None)
        };
        if cfg.warm_pool.enabled() && !cfg.tls {
            return Err(ManagerError::PoolConfig(
                "the warm pool needs TLS: pool VMs are bound over mutual TLS".into(),
            ));
        }
        let pool = Arc::new(crate::pool::WarmPool::open(
            &cfg.state_dir,
            cfg.warm_pool.clone(),
        )?);
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
            registry: StdMutex::new(Registry::default()),
            counters: Arc::new(RelayCounters::default()),
            teardowns: watch::channel(0).0,
            background_stopped: std::sync::atomic::AtomicBool::new(false),
            observers: Observers::default(),
            pool,
            client_identity,
            pool_failures: std::sync::atomic::AtomicUsize::new(0),
            liveness: crate::liveness::Tracker::default(),
        }))
    }

    /// Adds an observer of every sandbox's life-cycle events (see
    /// [`crate::lifecycle`]); add observers before the daemon serves.
    pub fn add_observer(&self, o: Arc<dyn SandboxObserver>) {
        self.observers.add(o);
    }

    /// Adds another part's metrics to the ones `/metrics` renders.
    pub fn register_metrics(&self, f: impl FnOnce(&mut prometheus_client::registry::Registry)) {
        self.metrics.register_with(f);
    }

    /// Tells the observers about a step of `r`'s sandbox.
    fn emit(&self, r: &SandboxRecord, kind: EventKind) {
        self.observers.emit(SandboxEvent {
            sandbox_id: r.id.clone(),
            pod: r.spec.pod_name.clone(),
            namespace: r.spec.pod_namespace.clone(),
            instance_name: r.instance_name.clone(),
            kind,
        });
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
        let all = self.all();
        let mut counts: Vec<(&'static str, i64)> =
            Phase::ALL.iter().map(|p| (p.as_str(), 0)).collect();
        for sb in all {
            let phase = sb.record.lock().await.phase.as_str();
            if let Some(c) = counts.iter_mut().find(|(p, _)| *p == phase) {
                c.1 += 1;
            }
        }
        self.metrics.set_sandboxes(&counts);
        let pool: Vec<(String, [i64; 4])> = self
            .pool
            .counts()
            .into_iter()
            .map(|(k, c)| {
                let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
                (
                    k.label(),
                    [n(c.creating), n(c.booting), n(c.ready), n(c.deleting)],
                )
            })
            .collect();
        self.metrics.set_pool(&pool);
        self.metrics.set_relay(
            &self.counters.bytes_to_upstream,
            &self.counters.bytes_to_downstream,
            &self.counters.active_connections,
        );
        self.metrics.render()
    }

    fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.registry
            .lock()
            .ok()
            .and_then(|r| r.sandboxes.get(id).cloned())
    }

    /// Every sandbox in memory, in no order.
    fn all(&self) -> Vec<Arc<Sandbox>> {
        match self.registry.lock() {
            Ok(r) => r.sandboxes.values().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Adds a sandbox to the registry (recovery; CreateVM goes through
    /// its reservation instead).
    fn insert(&self, id: &str, sb: Arc<Sandbox>) {
        if let Ok(mut r) = self.registry.lock() {
            r.sandboxes.insert(id.to_string(), sb);
        }
    }

    /// Forgets a sandbox.
    fn forget(&self, id: &str) {
        if let Ok(mut r) = self.registry.lock() {
            r.sandboxes.remove(id);
        }
    }

    fn relay_options(&self, id: &str) -> RelayOptions {
        RelayOptions {
            max_payload: self.cfg.max_frame_bytes,
            label: id.to_string(),
            counters: self.counters.clone(),
        }
    }

    /// The owner tags of sandbox `id` (empty: every instance of this
    /// node in this cluster).
    fn owner(&self, id: &str) -> OwnerTags {
        OwnerTags::new(&*self.cfg.cluster_id, &*self.cfg.node_name, id)
    }

    /// How to reach the forwarder of instance `name` at `ip`.
    fn upstream(&self, name: &str, ip: std::net::IpAddr) -> Result<Upstream, DialError> {
        Ok(Upstream::new(
            SocketAddr::new(ip, self.cfg.forwarder_port),
            name,
            self.client_tls.clone(),
            self.cfg.connect_timeout,
        )?
        .with_keepalive(self.cfg.keepalive))
    }

    /// Every sandbox, oldest first.
    pub async fn list(&self) -> Vec<SandboxSummary> {
        let all = self.all();
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
                pool_vm: r.pool_vm.clone(),
                created_at: r.created_at,
            });
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    /// Ends the background loops (daemon shutdown). Teardowns already
    /// running finish; their state is persisted either way.
    pub fn stop_background(&self) {
        self.background_stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn background_stopped(&self) -> bool {
        self.background_stopped
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until no teardown is running (for tests and orderly shutdown).
    pub async fn wait_teardowns(&self) {
        let mut rx = self.teardowns.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}
