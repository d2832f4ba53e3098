//! The adaptor's Prometheus metrics: sandboxes by phase, StartVM and
//! StopVM durations, provider errors by kind, orphans collected, relayed
//! bytes and open relay connections; plus the series other parts add
//! (a provider's own, e.g. the plugin client's per-call metrics, through
//! [`Metrics::register_collector`]). Kept in one registry, rendered in
//! the text format by [`crate::probes`] at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Label of the sandboxes gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// Labels of the provider error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub op: String,
    pub kind: String,
}

/// Label of the StartVM histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Labels of the warm pool gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub key: String,
    pub state: String,
}

/// Label of the warm pool counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabel {
    pub key: String,
}

/// Label of the relay byte counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

/// Seconds: 50 ms … ~15 min, for VM starts on any cloud (and TCG).
fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 15)
}

/// Every metric of the adaptor.
pub struct Metrics {
    /// Behind a lock so other parts (the Kubernetes reporter) can add
    /// their metrics after the manager made this.
    registry: Mutex<Registry>,
    pub sandboxes: Family<PhaseLabel, Gauge>,
    pub start_seconds: Family<OutcomeLabel, Histogram>,
    pub stop_seconds: Histogram,
    pub provider_errors: Family<ErrorLabels, Counter>,
    pub orphans_collected: Counter,
    pub pool_vms: Family<PoolLabels, Gauge>,
    pool_hits: Family<KeyLabel, Counter>,
    pool_misses: Family<KeyLabel, Counter>,
    pool_create_failures: Family<KeyLabel, Counter>,
    pool_bind_seconds: Histogram,
    pub liveness_failed: Counter,
    pub liveness_check_failures: Counter,
    relay_bytes: Family<DirectionLabel, Counter>,
    relay_connections: Gauge,
    /// Last relay byte totals folded into the counters.
    relay_seen: Mutex<(u64, u64)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("peerpod");
        let sandboxes = Family::<PhaseLabel, Gauge>::default();
        registry.register("sandboxes", "Sandboxes by phase", sandboxes.clone());
        let start_seconds = Family::<OutcomeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(duration_buckets())
        });
        registry.register(
            "startvm_duration_seconds",
            "StartVM duration, by outcome (ok, error)",
            start_seconds.clone(),
        );
        let stop_seconds = Histogram::new(duration_buckets());
        registry.register(
            "stopvm_teardown_duration_seconds",
            "Time from StopVM to the sandbox being gone (instance deleted, tunnel removed)",
            stop_seconds.clone(),
        );
        let provider_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "provider_errors",
            "Provider call failures by operation and kind",
            provider_errors.clone(),
        );
        let orphans_collected = Counter::default();
        registry.register(
            "orphans_collected",
            "Orphan VMs deleted by the collector",
            orphans_collected.clone(),
        );
        let pool_vms = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "warm_pool_vms",
            "Warm pool VMs by pool key and state (creating, booting, ready, deleting)",
            pool_vms.clone(),
        );
        let pool_hits = Family::<KeyLabel, Counter>::default();
        registry.register(
            "warm_pool_hits",
            "StartVMs served by a warm pool VM, by pool key",
            pool_hits.clone(),
        );
        let pool_misses = Family::<KeyLabel, Counter>::default();
        registry.register(
            "warm_pool_misses",
            "StartVMs that found no ready pool VM of their key (cold start), by pool key",
            pool_misses.clone(),
        );
        let pool_create_failures = Family::<KeyLabel, Counter>::default();
        registry.register(
            "warm_pool_create_failures",
            "Pool VM creates the provider refused, by pool key",
            pool_create_failures.clone(),
        );
        let pool_bind_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
        );
        registry.register(
            "warm_pool_bind_duration_seconds",
            "Time to bind a pool VM to its sandbox (Bind call on the bootstrap channel)",
            pool_bind_seconds.clone(),
        );
        let liveness_failed = Counter::default();
        registry.register(
            "liveness_failed_sandboxes",
            "Running sandboxes marked failed because their VM or agent stopped answering Health checks",
            liveness_failed.clone(),
        );
        let liveness_check_failures = Counter::default();
        registry.register(
            "liveness_check_failures",
            "Failed liveness Health checks of running sandboxes",
            liveness_check_failures.clone(),
        );
        let relay_bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "relay_bytes",
            "Bytes relayed between shims and pod VMs (to_vm, from_vm)",
            relay_bytes.clone(),
        );
        let relay_connections = Gauge::default();
        registry.register(
            "relay_connections",
            "Agent connections being relayed now",
            relay_connections.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            sandboxes,
            start_seconds,
            stop_seconds,
            provider_errors,
            orphans_collected,
            pool_vms,
            pool_hits,
            pool_misses,
            pool_create_failures,
            pool_bind_seconds,
            liveness_failed,
            liveness_check_failures,
            relay_bytes,
            relay_connections,
            relay_seen: Mutex::new((0, 0)),
        }
    }

    /// Records one StartVM's duration by outcome.
    pub fn observe_start(&self, ok: bool, took: std::time::Duration) {
        self.start_seconds
            .get_or_create(&OutcomeLabel {
                outcome: if ok { "ok" } else { "error" }.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a provider failure.
    pub fn provider_error(&self, op: &str, kind: peerpod_provider_api::ErrorKind) {
        self.provider_errors
            .get_or_create(&ErrorLabels {
                op: op.to_string(),
                kind: kind.as_str().to_string(),
            })
            .inc();
    }

    fn key(key: &str) -> KeyLabel {
        KeyLabel {
            key: key.to_string(),
        }
    }

    /// A StartVM served from the pool.
    pub fn pool_hit(&self, key: &str) {
        self.pool_hits.get_or_create(&Self::key(key)).inc();
    }

    /// A StartVM that found no ready pool VM of its key.
    pub fn pool_miss(&self, key: &str) {
        self.pool_misses.get_or_create(&Self::key(key)).inc();
    }

    /// A pool VM create the provider refused.
    pub fn pool_create_failed(&self, key: &str) {
        self.pool_create_failures
            .get_or_create(&Self::key(key))
            .inc();
    }

    /// One bind's duration.
    pub fn pool_bind(&self, took: std::time::Duration) {
        self.pool_bind_seconds.observe(took.as_secs_f64());
    }

    /// Sets the pool gauges: (key, creating, booting, ready, deleting).
    pub fn set_pool(&self, counts: &[(String, [i64; 4])]) {
        for (key, c) in counts {
            for (state, n) in ["creating", "booting", "ready", "deleting"].iter().zip(c) {
                self.pool_vms
                    .get_or_create(&PoolLabels {
                        key: key.clone(),
                        state: state.to_string(),
                    })
                    .set(*n);
            }
        }
    }

    /// Sets the phase gauges (all phases, zero included).
    pub fn set_sandboxes(&self, counts: &[(&'static str, i64)]) {
        for (phase, n) in counts {
            self.sandboxes
                .get_or_create(&PhaseLabel {
                    phase: phase.to_string(),
                })
                .set(*n);
        }
    }

    /// Folds the relay's running totals into the counters.
    pub fn set_relay(&self, to_vm: &AtomicU64, from_vm: &AtomicU64, active: &AtomicU64) {
        let (up, down) = (
            to_vm.load(Ordering::Relaxed),
            from_vm.load(Ordering::Relaxed),
        );
        let mut seen = self.relay_seen.lock().unwrap_or_else(|p| p.into_inner());
        let dir = |d: &str| DirectionLabel {
            direction: d.to_string(),
        };
        self.relay_bytes
            .get_or_create(&dir("to_vm"))
            .inc_by(up.saturating_sub(seen.0));
        self.relay_bytes
            .get_or_create(&dir("from_vm"))
            .inc_by(down.saturating_sub(seen.1));
        *seen = (up.max(seen.0), down.max(seen.1));
        self.relay_connections
            .set(i64::try_from(active.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    }

    /// Adds metrics of another part of the daemon (names get the
    /// `peerpod_` prefix like ours).
    pub fn register_with(&self, f: impl FnOnce(&mut Registry)) {
        if let Ok(mut r) = self.registry.lock() {
            f(&mut r);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(registry) = self.registry.lock() else {
            return out;
        };
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerpod_provider_api::ErrorKind;

    #[test]
    fn renders_every_family_with_labels() {
        let m = Metrics::new();
        m.set_sandboxes(&[("running", 3), ("failed", 0)]);
        m.observe_start(true, std::time::Duration::from_millis(1200));
        m.observe_start(false, std::time::Duration::from_secs(70));
        m.provider_error("create", ErrorKind::QuotaExceeded);
        m.provider_error("create", ErrorKind::QuotaExceeded);
        m.orphans_collected.inc();
        m.pool_hit("default");
        m.pool_hit("default");
        m.pool_miss("vcpus=2");
        m.pool_bind(std::time::Duration::from_millis(12));
        m.set_pool(&[("default".into(), [0, 1, 2, 0])]);
        m.liveness_failed.inc();
        let (up, down, active) = (AtomicU64::new(100), AtomicU64::new(40), AtomicU64::new(2));
        m.set_relay(&up, &down, &active);
        // Totals only grow: a second fold adds the difference.
        up.store(150, Ordering::Relaxed);
        m.set_relay(&up, &down, &active);
        let t = m.render();
        for want in [
            r#"peerpod_sandboxes{phase="running"} 3"#,
            r#"peerpod_sandboxes{phase="failed"} 0"#,
            r#"peerpod_startvm_duration_seconds_count{outcome="ok"} 1"#,
            r#"peerpod_startvm_duration_seconds_count{outcome="error"} 1"#,
            r#"peerpod_provider_errors_total{op="create",kind="quota_exceeded"} 2"#,
            "peerpod_orphans_collected_total 1",
            r#"peerpod_relay_bytes_total{direction="to_vm"} 150"#,
            r#"peerpod_relay_bytes_total{direction="from_vm"} 40"#,
            "peerpod_relay_connections 2",
            r#"peerpod_warm_pool_hits_total{key="default"} 2"#,
            r#"peerpod_warm_pool_misses_total{key="vcpus=2"} 1"#,
            r#"peerpod_warm_pool_vms{key="default",state="ready"} 2"#,
            "peerpod_warm_pool_bind_duration_seconds_count 1",
            "peerpod_liveness_failed_sandboxes_total 1",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
    }
}
