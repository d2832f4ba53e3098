//! What the cold path showed when tried as a new user would, fixed:
//! - the provider create is bounded by StartVM's deadline (abandoned at
//!   the deadline; what it made is deleted when it finishes);
//! - a running sandbox whose VM dies is marked failed by the liveness
//!   watch (its agent socket closed), instead of staying `running`;
//! - a VM that vanishes without a FIN/RST no longer leaves the shim's
//!   long poll hanging: TCP keepalive ends the connection and the pending
//!   call is answered UNAVAILABLE (needs root: the local provider and a
//!   link set down under it).

use async_trait::async_trait;
use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::keepalive::KeepaliveSettings;
use cloud_api_adaptor::liveness::LivenessSettings;
use cloud_api_adaptor::state::Phase;
use cloud_api_adaptor::Daemon;
use peerpod_provider_api::{Instance, InstanceRequest, OwnerTags, Provider, ProviderError};
use peerpod_provider_local::{LocalConfig, LocalProvider};
use peerpod_tests::bins::bin_path;
use peerpod_tests::harness::{config_in, init_logging, read_response, request_frame, until};
use peerpod_tests::process_provider::ProcessProvider;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Creates take `delay` before the real create runs (a slow cloud).
struct Slow {
    inner: Arc<ProcessProvider>,
    delay: Duration,
}

#[async_trait]
impl Provider for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        tokio::time::sleep(self.delay).await;
        self.inner.create_instance(req).await
    }
    async fn delete_instance(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.delete_instance(id).await
    }
    async fn list_instances(&self, o: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        self.inner.list_instances(o).await
    }
    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        self.inner.verify().await
    }
}

#[test]
fn start_timeout_defaults_to_180_seconds() {
    let c = cloud_api_adaptor::AdaptorConfig::new("n");
    assert_eq!(c.start_timeout, Duration::from_secs(180));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_create_is_abandoned_at_the_deadline_and_cleaned_up() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "slow-node");
    let inner = Arc::new(ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    cfg.start_timeout = Duration::from_secs(600);
    let provider = Arc::new(Slow {
        inner: inner.clone(),
        delay: Duration::from_secs(3),
    });
    let daemon = Daemon::start(cfg.clone(), provider).await.unwrap();
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    h.create_vm("sbslow", shim_annotations("slow", "default"), "")
        .await
        .unwrap();
    let e = h
        .start_vm("sbslow", Duration::from_millis(1500))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("provider create"), "names the phase: {e}");
    assert!(e.contains("deadline"), "says why: {e}");
    assert_eq!(
        inner.created.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "answered before the create finished"
    );
    // The abandoned create finishes later; what it made is deleted.
    until("the late instance", Duration::from_secs(20), || {
        inner.created.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    until("the late instance deleted", Duration::from_secs(20), || {
        inner.live().is_empty()
    })
    .await;
    let s = daemon.manager.list().await;
    assert_eq!(s[0].phase, Phase::Failed);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_whose_vm_died_is_marked_failed_by_the_liveness_watch() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_in(dir.path(), "live-node");
    let provider = Arc::new(ProcessProvider::new(
        &dir.path().join("instances"),
        cfg.forwarder_port,
    ));
    cfg.start_timeout = Duration::from_secs(30);
    // Passes run by hand below (interval 0: no background watch).
    cfg.liveness = LivenessSettings {
        interval: Duration::ZERO,
        failures: 2,
    };
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let m = daemon.manager.clone();
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let sock = h
        .create_vm("sblive", shim_annotations("live", "default"), "")
        .await
        .unwrap();
    h.start_vm("sblive", Duration::from_secs(30)).await.unwrap();
    // A long poll of the shim, open while the watch checks: untouched.
    let mut shim = tokio::net::UnixStream::connect(&sock).await.unwrap();
    shim.write_all(&request_frame(1, "grpc.AgentService", "WaitProcess", &[]))
        .await
        .unwrap();
    assert_eq!(m.liveness_pass().await, 0);
    assert_eq!(m.liveness_pass().await, 0);
    let instance = provider.live().pop().unwrap();
    assert!(provider.kill_forwarder(&instance).await);
    assert_eq!(m.liveness_pass().await, 0, "one failed check is not enough");
    assert_eq!(m.liveness_pass().await, 1, "the second marks it failed");
    let s = m.list().await;
    assert_eq!(s[0].phase, Phase::Failed);
    let metrics = m.metrics_text().await;
    assert!(
        metrics.contains("peerpod_liveness_failed_sandboxes_total 1"),
        "{metrics}"
    );
    // The shim learns at once: its connection is closed.
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut shim)).await;
    assert!(
        matches!(r, Ok(Err(_)) | Ok(Ok(_))),
        "the shim's connection ends: {r:?}"
    );
    assert_eq!(
        m.liveness_pass().await,
        0,
        "failed sandboxes are not checked again"
    );
    h.stop_vm("sblive").await.unwrap();
    m.wait_teardowns().await;
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_vm_answers_the_pending_long_poll_within_the_keepalive_time() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (local provider: namespaces and veths)"
    );
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{:04x}", rand::random::<u16>());
    let bridge = format!("ppk{tag}");
    struct Bridge(String);
    impl Drop for Bridge {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).output();
        }
    }
    let _b = Bridge(bridge.clone());
    let mut lc = LocalConfig::with_defaults(dir.path().join("local"));
    lc.forwarder_bin = bin_path("agent-protocol-forwarder");
    lc.agent_bin = bin_path("kata-agent-double");
    lc.user_data_bin = bin_path("process-user-data");
    lc.bridge = bridge.clone();
    lc.subnet = std::net::Ipv4Addr::new(10, 219, rand::random::<u8>() % 250 + 1, 0);
    lc.prefix_len = 24;
    let provider = Arc::new(LocalProvider::new(lc).unwrap());
    let mut cfg = config_in(dir.path(), &format!("ka-{tag}"));
    cfg.start_timeout = Duration::from_secs(30);
    cfg.liveness.interval = Duration::ZERO;
    let ka = KeepaliveSettings {
        idle: Duration::from_secs(1),
        interval: Duration::from_secs(1),
        count: 2,
    };
    cfg.keepalive = Some(ka);
    let daemon = Daemon::start(cfg.clone(), provider.clone()).await.unwrap();
    let h = Hypervisor::connect(&cfg.socket).await.unwrap();
    let id = format!("sbka{tag}");
    let sock = h
        .create_vm(&id, shim_annotations("ka", "default"), "")
        .await
        .unwrap();
    h.start_vm(&id, Duration::from_secs(30)).await.unwrap();
    let inst = &daemon.manager.list().await[0];
    let iid = inst.instance_id.clone().unwrap();
    // The long poll: pending for the container's life.
    let mut shim = tokio::net::UnixStream::connect(&sock).await.unwrap();
    shim.write_all(&request_frame(1, "grpc.AgentService", "WaitProcess", &[]))
        .await
        .unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(500), read_response(&mut shim)).await;
    assert!(
        quiet.is_err(),
        "the long poll is pending while the VM lives: {quiet:?}"
    );
    // The VM's network vanishes without a FIN or RST.
    let veth = format!("ppl{}", &iid[1..]);
    let out = Command::new("ip")
        .args(["link", "set", &veth, "down"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(60), read_response(&mut shim))
        .await
        .expect("the pending call was answered (no keepalive would wait hours)")
        .expect("an answer frame");
    assert_eq!(r.code, ttrpc::Code::UNAVAILABLE, "{r:?}");
    eprintln!(
        "pending call answered {:?} after the VM vanished (keepalive detection time {:?})",
        gone.elapsed(),
        ka.detection_time()
    );
    let _ = Command::new("ip")
        .args(["link", "set", &veth, "up"])
        .output();
    h.stop_vm(&id).await.unwrap();
    daemon.manager.wait_teardowns().await;
    daemon.shutdown().await;
}
