//! Per-call metrics of the plugin hop: calls, failures by error kind and
//! latency by method, plus connections made. Kept in this crate's own
//! prometheus-client metric families. [`PluginMetrics`] is a
//! prometheus-client `Collector`: the adaptor adds it to the registry it
//! renders at `/metrics` (names get that registry's prefix:
//! `peerpod_plugin_calls_total`, …) and needs nothing plugin-specific.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Label of the per-method series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

/// Labels of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub method: String,
    pub kind: String,
}

/// See the module doc. Clones share the same series.
#[derive(Clone, Debug)]
pub struct PluginMetrics {
    pub calls: Family<MethodLabel, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub seconds: Family<MethodLabel, Histogram>,
    pub connects: Counter,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds: 100 µs … ~27 min (the hop itself is sub-millisecond; a cloud
/// create takes minutes).
fn buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 3.0, 15)
}

impl PluginMetrics {
    pub fn new() -> Self {
        Self {
            calls: Family::default(),
            failures: Family::default(),
            seconds: Family::new_with_constructor(|| Histogram::new(buckets())),
            connects: Counter::default(),
        }
    }

    /// Adds the series to `registry` (as a collector).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    /// Records one finished call.
    pub fn observe(&self, method: &str, took: Duration, failure: Option<&str>) {
        let m = MethodLabel {
            method: method.to_string(),
        };
        self.calls.get_or_create(&m).inc();
        self.seconds.get_or_create(&m).observe(took.as_secs_f64());
        if let Some(kind) = failure {
            self.failures
                .get_or_create(&FailureLabels {
                    method: method.to_string(),
                    kind: kind.to_string(),
                })
                .inc();
        }
    }

    /// The Prometheus text of these series alone (tests, debugging).
    pub fn render(&self) -> String {
        let mut r = Registry::with_prefix("peerpod");
        self.register(&mut r);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

impl Collector for PluginMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = e.encode_descriptor(
            "plugin_calls",
            "Provider plugin calls by method",
            None,
            self.calls.metric_type(),
        )?;
        self.calls.encode(m)?;
        let m = e.encode_descriptor(
            "plugin_call_failures",
            "Provider plugin calls that failed, by method and error kind",
            None,
            self.failures.metric_type(),
        )?;
        self.failures.encode(m)?;
        let m = e.encode_descriptor(
            "plugin_call_duration_seconds",
            "Provider plugin call latency by method (plugin hop and provider work)",
            None,
            self.seconds.metric_type(),
        )?;
        self.seconds.encode(m)?;
        let m = e.encode_descriptor(
            "plugin_connects",
            "Connections (with handshake) made to the provider plugin",
            None,
            self.connects.metric_type(),
        )?;
        self.connects.encode(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_failures_and_latency_are_rendered_by_method() {
        let m = PluginMetrics::new();
        m.observe("CreateInstance", Duration::from_millis(2), None);
        m.observe(
            "CreateInstance",
            Duration::from_millis(3),
            Some("insufficient_capacity"),
        );
        m.connects.inc();
        let text = m.render();
        assert!(
            text.contains("peerpod_plugin_calls_total{method=\"CreateInstance\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("peerpod_plugin_call_failures_total{method=\"CreateInstance\",kind=\"insufficient_capacity\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "peerpod_plugin_call_duration_seconds_count{method=\"CreateInstance\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("peerpod_plugin_connects_total 1"), "{text}");
    }
}
