//! The background worker the adaptor hands sandbox life-cycle notices to.
//! [`Reporter::notify`] never blocks and never awaits: it puts the notice
//! on two bounded queues (dropping it, counted, when a queue is full) and
//! returns. Two tasks do the work:
//!
//! - **events**: one Event per notice on the sandbox's pod (reason, note:
//!   see [`crate::notes`]), rate-limited per pod and for the node, posted
//!   through kube-runtime's events `Recorder` (events.k8s.io/v1, which
//!   also sets `involvedObject` for `kubectl describe pod`). Best effort:
//!   when the API server fails, the Event is dropped with a warning and
//!   counted, and for a short while later Events are dropped at once
//!   instead of queueing behind a dead server.
//! - **peerpods**: the sandbox's PeerPod object, created as soon as the
//!   provider made the instance (before it boots, so a node that dies
//!   while the VM boots still leaves a PeerPod behind) and released after the adaptor's own teardown deleted
//!   it. These matter for cleanup, so they are retried with backoff; each
//!   sandbox's operations run in order, different sandboxes in parallel.

use crate::metrics::{drop_reason, KubeMetrics};
use crate::notes;
use crate::peerpod::PeerPodSpec;
use crate::peerpods::{self, Created, Released};
use crate::pods::{self, PodRef};
use crate::ratelimit::{Limited, Limiter, Rate};
use kube::runtime::events::{Event, Recorder, Reporter as EventSource};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One step in a sandbox's life.
#[derive(Debug, Clone, PartialEq)]
pub enum Activity {
    /// StartVM is asking the provider for an instance.
    Creating {
        provider: String,
        vcpus: Option<u32>,
        memory_mib: Option<u64>,
    },
    /// The provider made the instance; it is booting. (No Event: Running
    /// or StartFailed follows; this one makes the PeerPod.)
    InstanceCreated { instance_id: String },
    /// The instance is up and its agent answers.
    Running {
        took: Duration,
        instance_id: String,
        instance_type: Option<String>,
        ip: Option<IpAddr>,
    },
    /// StartVM failed (`phase` as the adaptor names it, `message` with the cloud's own words).
    StartFailed { phase: String, message: String },
    /// The adaptor's teardown deleted the instance (if there was one).
    Deleted { instance_id: Option<String> },
}

/// A notice about one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub sandbox_id: String,
    pub pod: String,
    pub namespace: String,
    pub instance_name: String,
    pub activity: Activity,
}

impl Notice {
    fn pod_key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// How the reporter behaves.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// This node (PeerPod `nodeName`, Event `reportingInstance`).
    pub node_name: String,
    /// The provider's name (PeerPod `provider`).
    pub provider: String,
    /// The cluster id instances are tagged with (PeerPod `clusterId`).
    pub cluster_id: String,
    /// Post Events on pods.
    pub events: bool,
    /// Keep PeerPod objects.
    pub peerpods: bool,
    /// Notices waiting per queue before new ones are dropped.
    pub queue: usize,
    /// Events per pod: burst and refill.
    pub per_pod: Rate,
    /// Events of the whole node: burst and refill.
    pub global: Rate,
    /// Longest wait for one API call.
    pub request_timeout: Duration,
    /// After an API failure, Events are dropped without trying for this long.
    pub down_for: Duration,
    /// PeerPod operations: attempts before giving up, and the backoff cap.
    pub peerpod_attempts: u32,
    pub peerpod_max_backoff: Duration,
}

/// The `reportingController` of our Events.
pub const REPORTING_CONTROLLER: &str = "confidentialcontainers.org/cloud-api-adaptor";

impl ReporterConfig {
    /// Defaults: both parts on, 256 queued, 10 Events per pod then one per
    /// 30 s, 50 per node then 5 per second, 5 s per call.
    pub fn new(node_name: impl Into<String>, provider: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            provider: provider.into(),
            cluster_id: String::new(),
            events: true,
            peerpods: true,
            queue: 256,
            per_pod: Rate::new(10, Duration::from_secs(30)),
            global: Rate::new(50, Duration::from_millis(200)),
            request_timeout: Duration::from_secs(5),
            down_for: Duration::from_secs(10),
            peerpod_attempts: 10,
            peerpod_max_backoff: Duration::from_secs(30),
        }
    }
}

/// The handle the adaptor keeps; cheap to clone. The workers stop when
/// every handle is gone and the queues are drained.
#[derive(Clone)]
pub struct Reporter {
    events: Option<mpsc::Sender<Notice>>,
    peerpods: Option<mpsc::Sender<Notice>>,
    metrics: KubeMetrics,
}

impl Reporter {
    /// Starts the workers on the current tokio runtime.
    pub fn start(client: kube::Client, cfg: ReporterConfig, metrics: KubeMetrics) -> Self {
        let cfg = Arc::new(cfg);
        let events = cfg.events.then(|| {
            let (tx, rx) = mpsc::channel(cfg.queue.max(1));
            let w = EventWorker::new(client.clone(), cfg.clone(), metrics.clone());
            tokio::spawn(w.run(rx));
            tx
        });
        let peerpods = cfg.peerpods.then(|| {
            let (tx, rx) = mpsc::channel(cfg.queue.max(1));
            tokio::spawn(peerpod_worker(client, cfg.clone(), metrics.clone(), rx));
            tx
        });
        Self {
            events,
            peerpods,
            metrics,
        }
    }

    /// Hands a notice over. Never blocks: a full queue drops it (counted, warned).
    pub fn notify(&self, n: Notice) {
        let wants_peerpod = matches!(
            n.activity,
            Activity::InstanceCreated { .. } | Activity::Deleted { .. }
        );
        let wants_event = !matches!(n.activity, Activity::InstanceCreated { .. });
        if let Some(tx) = self.peerpods.as_ref().filter(|_| wants_peerpod) {
            if let Err(e) = tx.try_send(n.clone()) {
                self.metrics.peerpod_op(op_name(&n.activity), "queue_full");
                tracing::warn!(sandbox = %n.sandbox_id, error = %e, "PeerPod queue full: this sandbox's PeerPod is not kept (the node's orphan collector still covers its instance)");
            }
        }
        if let Some(tx) = self.events.as_ref().filter(|_| wants_event) {
            if let Err(e) = tx.try_send(n) {
                self.metrics.dropped(drop_reason::QUEUE_FULL);
                let n = match e {
                    mpsc::error::TrySendError::Full(n) | mpsc::error::TrySendError::Closed(n) => n,
                };
                tracing::warn!(sandbox = %n.sandbox_id, pod = %n.pod_key(), "Event queue full (Kubernetes API slow or down): event dropped");
            }
        }
    }

    pub fn metrics(&self) -> &KubeMetrics {
        &self.metrics
    }
}

fn op_name(a: &Activity) -> &'static str {
    match a {
        Activity::InstanceCreated { .. } => "create",
        _ => "release",
    }
}

/// Posts Events, one notice at a time.
struct EventWorker {
    client: kube::Client,
    cfg: Arc<ReporterConfig>,
    metrics: KubeMetrics,
    recorder: Recorder,
    limiter: Limiter,
    /// Pod of each live sandbox (the uid is looked up once per sandbox).
    pods: HashMap<String, PodRef>,
    down_until: Option<Instant>,
}

impl EventWorker {
    fn new(client: kube::Client, cfg: Arc<ReporterConfig>, metrics: KubeMetrics) -> Self {
        let instance: String = format!("cloud-api-adaptor-{}", cfg.node_name)
            .chars()
            .take(128)
            .collect();
        let recorder = Recorder::new(
            client.clone(),
            EventSource {
                controller: REPORTING_CONTROLLER.into(),
                instance: Some(instance),
            },
        );
        Self {
            limiter: Limiter::new(cfg.per_pod, cfg.global, Instant::now()),
            client,
            cfg,
            metrics,
            recorder,
            pods: HashMap::new(),
            down_until: None,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Notice>) {
        while let Some(n) = rx.recv().await {
            self.handle(&n).await;
            if matches!(n.activity, Activity::Deleted { .. }) {
                self.pods.remove(&n.sandbox_id);
            }
        }
    }

    fn api_failed(&mut self, n: &Notice, e: &crate::KubeError) {
        self.metrics.dropped(drop_reason::API_ERROR);
        let was_up = self.down_until.is_none();
        self.down_until = Some(Instant::now() + self.cfg.down_for);
        if was_up {
            tracing::warn!(pod = %n.pod_key(), sandbox = %n.sandbox_id, error = %e, "Kubernetes API unreachable: Event dropped (Events are dropped for {:?} before the next try)", self.cfg.down_for);
        } else {
            tracing::debug!(pod = %n.pod_key(), error = %e, "Kubernetes API still failing: Event dropped");
        }
    }

    async fn handle(&mut self, n: &Notice) {
        let now = Instant::now();
        match self.limiter.allow(&n.pod_key(), now) {
            Ok(()) => {}
            Err(Limited::PerPod) => {
                self.metrics.dropped(drop_reason::RATE_PER_POD);
                tracing::debug!(pod = %n.pod_key(), "Event rate limit of the pod reached: dropped");
                return;
            }
            Err(Limited::Global) => {
                self.metrics.dropped(drop_reason::RATE_GLOBAL);
                tracing::debug!(pod = %n.pod_key(), "Event rate limit of the node reached: dropped");
                return;
            }
        }
        if self.down_until.is_some_and(|t| now < t) {
            self.metrics.dropped(drop_reason::API_DOWN);
            tracing::debug!(pod = %n.pod_key(), "Kubernetes API failed recently: Event dropped");
            return;
        }
        let pod = match self.pods.get(&n.sandbox_id) {
            Some(p) => p.clone(),
            None => {
                match pods::lookup(&self.client, &n.namespace, &n.pod, self.cfg.request_timeout)
                    .await
                {
                    Ok(Some(p)) => {
                        self.pods.insert(n.sandbox_id.clone(), p.clone());
                        p
                    }
                    Ok(None) => {
                        self.down_until = None;
                        self.metrics.dropped(drop_reason::POD_GONE);
                        tracing::debug!(pod = %n.pod_key(), "pod not found: Event dropped");
                        return;
                    }
                    Err(e) => return self.api_failed(n, &e),
                }
            }
        };
        let text = notes::describe(n);
        let ev = Event {
            type_: text.type_,
            reason: text.reason.into(),
            note: Some(text.note),
            action: text.action.into(),
            secondary: None,
        };
        let r = tokio::time::timeout(
            self.cfg.request_timeout,
            self.recorder.publish(&ev, &pod.object_reference()),
        )
        .await;
        match r {
            Ok(Ok(())) => {
                self.down_until = None;
                self.metrics.events_posted.inc();
                tracing::debug!(pod = %n.pod_key(), reason = text.reason, "Event posted");
            }
            Ok(Err(source)) => {
                let e = crate::KubeError::Api {
                    what: format!("posting Event {} on pod {}", text.reason, n.pod_key()),
                    source,
                };
                if e.is_not_found() {
                    // The namespace is gone with the pod.
                    self.metrics.dropped(drop_reason::POD_GONE);
                } else {
                    self.api_failed(n, &e);
                }
            }
            Err(_) => {
                let e = crate::KubeError::Timeout {
                    what: format!("posting Event {} on pod {}", text.reason, n.pod_key()),
                    secs: self.cfg.request_timeout.as_secs(),
                };
                self.api_failed(n, &e);
            }
        }
    }
}

/// Runs PeerPod operations: per sandbox in order (each waits for the
/// sandbox's previous one), sandboxes in parallel.
async fn peerpod_worker(
    client: kube::Client,
    cfg: Arc<ReporterConfig>,
    metrics: KubeMetrics,
    mut rx: mpsc::Receiver<Notice>,
) {
    let mut last: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    while let Some(n) = rx.recv().await {
        last.retain(|_, h| !h.is_finished());
        let previous = last.remove(&n.sandbox_id);
        let (client, cfg, metrics) = (client.clone(), cfg.clone(), metrics.clone());
        let id = n.sandbox_id.clone();
        let h = tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            peerpod_op(&client, &cfg, &metrics, &n).await;
        });
        last.insert(id, h);
    }
    for (_, h) in last {
        let _ = h.await;
    }
}

/// One PeerPod operation, retried with backoff.
async fn peerpod_op(
    client: &kube::Client,
    cfg: &ReporterConfig,
    metrics: &KubeMetrics,
    n: &Notice,
) {
    let op = op_name(&n.activity);
    let name = peerpods::object_name(&n.instance_name, &n.sandbox_id);
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=cfg.peerpod_attempts.max(1) {
        let r = match &n.activity {
            Activity::InstanceCreated { instance_id } => {
                create_peerpod(client, cfg, n, &name, instance_id).await
            }
            Activity::Deleted { .. } => peerpods::release(
                client,
                &n.namespace,
                &name,
                &n.sandbox_id,
                cfg.request_timeout,
            )
            .await
            .map(|r| match r {
                Released::Released => "released",
                Released::NotFound => "not_found",
                Released::OtherSandbox => "other_sandbox",
            }),
            _ => return,
        };
        match r {
            Ok(outcome) => {
                metrics.peerpod_op(op, outcome);
                tracing::info!(sandbox = %n.sandbox_id, peerpod = %format!("{}/{name}", n.namespace), outcome, "PeerPod {op}");
                return;
            }
            Err(e)
                if e.status()
                    .is_some_and(|s| (400..500).contains(&s) && s != 409 && s != 429) =>
            {
                metrics.peerpod_op(op, "refused");
                tracing::error!(sandbox = %n.sandbox_id, error = %e, "PeerPod {op} refused by the API server (check the CRD is installed and the RBAC rules)");
                return;
            }
            Err(e) => {
                if attempt == cfg.peerpod_attempts.max(1) {
                    metrics.peerpod_op(op, "failed");
                    tracing::error!(sandbox = %n.sandbox_id, error = %e, attempts = attempt, "PeerPod {op} failed; giving up (the node's orphan collector still covers the instance)");
                    return;
                }
                tracing::warn!(sandbox = %n.sandbox_id, error = %e, retry_in = ?backoff, "PeerPod {op} failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.peerpod_max_backoff);
            }
        }
    }
}

async fn create_peerpod(
    client: &kube::Client,
    cfg: &ReporterConfig,
    n: &Notice,
    name: &str,
    instance_id: &str,
) -> Result<&'static str, crate::KubeError> {
    let Some(pod) = pods::lookup(client, &n.namespace, &n.pod, cfg.request_timeout).await? else {
        // Owned by a pod that is gone, it would be collected at once.
        return Ok("pod_gone");
    };
    let obj = peerpods::build(
        &pod,
        name,
        PeerPodSpec {
            provider: cfg.provider.clone(),
            instance_id: instance_id.to_string(),
            instance_name: n.instance_name.clone(),
            node_name: cfg.node_name.clone(),
            sandbox_id: n.sandbox_id.clone(),
            pod_name: n.pod.clone(),
            cluster_id: cfg.cluster_id.clone(),
        },
    );
    Ok(
        match peerpods::create(client, &obj, cfg.request_timeout).await? {
            Created::Created => "created",
            Created::AlreadyThere => "already_there",
        },
    )
}
