//! The probe endpoint over real HTTP: `/healthz`, `/readyz` (ready once
//! the daemon serves) and `/metrics` reflecting what really happened —
//! a sandbox started and stopped, relayed bytes, a failed provider create.

use cloud_api_adaptor::client::{agent_health, shim_annotations, Hypervisor};
use cloud_api_adaptor::Daemon;
use peerpod_tests::harness::config_in;
use peerpod_tests::process_provider::ProcessProvider;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET; returns (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line (`name{labels} value`) in a metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_follow_the_sandboxes() {
    peerpod_tests::harness::init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "probe-node");
    cfg.tls = false;
    cfg.probe_addr = Some("127.0.0.1:0".parse().unwrap());
    let provider = Arc::new(ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let addr = daemon.probe_addr().expect("probe endpoint on");

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 200, "ready once serving");
    assert_eq!(get(addr, "/nope").await.0, 404);

    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let sock = h
        .create_vm("probe1", shim_annotations("web", "default"), "")
        .await
        .unwrap();
    let (_, page) = get(addr, "/metrics").await;
    assert_eq!(
        sample(&page, r#"peerpod_sandboxes{phase="created"}"#),
        Some(1.0),
        "{page}"
    );
    h.start_vm("probe1", Duration::from_secs(30)).await.unwrap();
    agent_health(std::path::Path::new(&sock), Duration::from_secs(5))
        .await
        .unwrap();

    // A create the provider refuses is counted by kind.
    *provider.fail_create.lock().unwrap() = Some("quota of 0 VMs reached".into());
    h.create_vm("probe2", shim_annotations("api", "default"), "")
        .await
        .unwrap();
    assert!(h.start_vm("probe2", Duration::from_secs(10)).await.is_err());

    let (status, page) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&page, r#"peerpod_sandboxes{phase="running"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"peerpod_sandboxes{phase="failed"}"#),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"peerpod_startvm_duration_seconds_count{outcome="ok"}"#
        ),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            r#"peerpod_startvm_duration_seconds_count{outcome="error"}"#
        ),
        Some(1.0),
        "{page}"
    );
    let create_errors: f64 = page
        .lines()
        .filter(|l| l.starts_with(r#"peerpod_provider_errors_total{op="create""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(create_errors, 1.0, "{page}");
    let to_vm = sample(&page, r#"peerpod_relay_bytes_total{direction="to_vm"}"#).unwrap_or(0.0);
    let from_vm = sample(&page, r#"peerpod_relay_bytes_total{direction="from_vm"}"#).unwrap_or(0.0);
    assert!(
        to_vm > 0.0 && from_vm > 0.0,
        "the Health check was relayed: {page}"
    );

    h.stop_vm("probe1").await.unwrap();
    h.stop_vm("probe2").await.unwrap();
    daemon.manager.wait_teardowns().await;
    let (_, page) = get(addr, "/metrics").await;
    assert_eq!(
        sample(&page, "peerpod_stopvm_teardown_duration_seconds_count"),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"peerpod_sandboxes{phase="running"}"#),
        Some(0.0),
        "{page}"
    );
    assert!(provider.live().is_empty());

    daemon.shutdown().await;
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the endpoint closes with the daemon");
}
