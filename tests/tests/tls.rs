//! Mutual TLS at the forwarder: only clients with a certificate signed by
//! the node CA get through to the agent.

use cloud_api_adaptor::ca::NodeCa;
use peerpod_tests::agent_double::{AgentDouble, Recorder};
use peerpod_tests::harness::{init_logging, read_response, request_frame};
use peerpod_vmconfig::ForwarderConfig;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

const NAME: &str = "podvm-tls-12345678";

struct Setup {
    _dir: tempfile::TempDir,
    ca: NodeCa,
    addr: std::net::SocketAddr,
    agent: AgentDouble,
    counters: Arc<peerpod_relay::relay::RelayCounters>,
}

async fn setup() -> Setup {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let ca = NodeCa::load_or_create(&dir.path().join("state")).unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = AgentDouble::start(&sock, Recorder::default())
        .await
        .unwrap();
    let mut cfg = ForwarderConfig::new("tls-test", Some(ca.issue_server(NAME).unwrap()));
    cfg.listen = "127.0.0.1:0".into();
    cfg.agent_socket = sock;
    let fwd = agent_forwarder::Forwarder::bind(&cfg).await.unwrap();
    let addr = fwd.local_addr().unwrap();
    let counters = fwd.counters();
    tokio::spawn(fwd.serve());
    Setup {
        _dir: dir,
        ca,
        addr,
        agent,
        counters,
    }
}

/// Connects with `client`, sends a Health check; Ok(true) when answered.
async fn health_over(
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Result<bool, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(client)
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(&request_frame(1, "grpc.Health", "Check", &[]))
        .await
        .map_err(|e| format!("write: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(5), read_response(&mut tls)).await {
        Ok(Ok(r)) => Ok(r.code == ttrpc::Code::OK),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no answer".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ca_client_is_accepted() {
    let s = setup().await;
    assert_eq!(
        health_over(s.addr, s.ca.client_config().unwrap()).await,
        Ok(true)
    );
    assert_eq!(s.agent.recorder.seen().len(), 1);
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused() {
    let s = setup().await;
    let cfg = peerpod_relay::tls::client_config_without_cert(s.ca.cert_pem()).unwrap();
    let r = health_over(s.addr, cfg).await;
    assert!(
        r.is_err(),
        "a client without certificate got through: {r:?}"
    );
    assert!(
        s.agent.recorder.seen().is_empty(),
        "nothing reached the agent"
    );
    s.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_certificate_from_another_ca_is_refused() {
    let s = setup().await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = NodeCa::load_or_create(other_dir.path()).unwrap();
    // Trusts our server (same CA for the server side) but presents a
    // certificate the other CA signed.
    let other_client = other.issue_server("intruder").unwrap();
    let cfg = peerpod_relay::tls::client_config(
        s.ca.cert_pem(),
        &other_client.cert_pem,
        &other_client.key_pem,
    )
    .unwrap();
    let r = health_over(s.addr, cfg).await;
    assert!(
        r.is_err(),
        "a foreign client certificate got through: {r:?}"
    );
    assert!(s.agent.recorder.seen().is_empty());
    // And a client that does not trust the node CA does not trust the VM.
    let r = health_over(s.addr, other.client_config().unwrap()).await;
    assert!(r.unwrap_err().contains("handshake"));
    s.agent.stop().await;
}

/// The adaptor's readiness checks close their TLS connections with
/// close_notify: the forwarder sees each end as a clean close, not an
/// UnexpectedEof error (which it logged after every StartVM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_checks_close_tls_cleanly() {
    use std::sync::atomic::Ordering;
    let s = setup().await;
    let up = cloud_api_adaptor::upstream::Upstream::new(
        s.addr,
        NAME,
        Some(s.ca.client_config().unwrap()),
        Duration::from_secs(5),
    )
    .unwrap();
    for _ in 0..3 {
        cloud_api_adaptor::readiness::check_once(&up)
            .await
            .expect("Health check through the forwarder");
    }
    assert_eq!(s.agent.recorder.seen().len(), 3);
    // The forwarder notices each close.
    for _ in 0..500 {
        if s.counters.active_connections.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.counters.active_connections.load(Ordering::Relaxed), 0);
    assert_eq!(
        s.counters.downstream_errors.load(Ordering::Relaxed),
        0,
        "the forwarder saw connections end with an error (no close_notify)"
    );
    s.agent.stop().await;
}
