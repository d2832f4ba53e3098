//! The conformance kit through the plugin hop: the adaptor's client
//! (`PluginProvider`) → gRPC on a unix socket → this crate's server →
//! the in-memory reference provider. Every check passes, the deadline one
//! included (the client's call deadline against a stalled backend), so the
//! protocol loses nothing a provider means: error kinds with the cloud's
//! code and message, owner filtering, idempotent deletes, cancellation.

use peerpod_provider_conformance::memory::{MemoryFixture, MemoryProvider};
use peerpod_provider_conformance::run_all;
use peerpod_provider_plugin::{PluginConfig, PluginProvider};
use peerpod_provider_plugin_server::PluginServer;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_hop_passes_the_whole_kit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("provider.sock");
    let mut m = MemoryProvider::new();
    m.create_delay = Duration::from_millis(20);
    let backend = Arc::new(m);
    let server = PluginServer::new(backend.clone()).bind(&sock).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_until(async {
        let _ = stopped.await;
    }));

    let mut cfg = PluginConfig::new(&sock);
    cfg.call_timeout = Duration::from_secs(1);
    let client = Arc::new(PluginProvider::new(cfg));
    let f = MemoryFixture {
        backend: backend.clone(),
        provider: client.clone(),
        deadline: Some(Duration::from_secs(1)),
    };
    let report = run_all(&f).await;
    report.assert_passed(&[]);
    assert!(backend.is_empty(), "the kit removed everything it made");

    // One connection served the whole run (no reconnect churn), and the
    // metrics counted the calls and the deadline failures by kind.
    let text = client.metrics().render();
    assert!(text.contains("peerpod_plugin_connects_total 1"), "{text}");
    assert!(
        text.contains(
            "peerpod_plugin_call_failures_total{method=\"ListInstances\",kind=\"transient\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("peerpod_plugin_call_failures_total{method=\"CreateInstance\",kind=\"insufficient_capacity\"} 1"),
        "{text}"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert!(!sock.exists(), "the server removed its socket");
}
