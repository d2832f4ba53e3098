//! An adaptor daemon started in-process over temporary directories with the
//! [`ProcessProvider`], plus helpers the end-to-end tests and the
//! benchmark share (raw ttrpc frames, a running sandbox in one call).

use crate::process_provider::ProcessProvider;
use cloud_api_adaptor::client::{shim_annotations, Hypervisor};
use cloud_api_adaptor::{AdaptorConfig, Daemon};
use peerpod_protocols::protobuf::Message;
use peerpod_relay::frame::{encode_frame, read_header, MessageType};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Logs to the test output once per process (RUST_LOG to change).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// An adaptor configuration whose sockets and state live under `dir`, with
/// a random forwarder port (so daemons in one run do not collide).
pub fn config_in(dir: &std::path::Path, node: &str) -> AdaptorConfig {
    let mut cfg = AdaptorConfig::new(node);
    cfg.socket = dir.join("hypervisor.sock");
    cfg.pods_dir = dir.join("pods");
    cfg.state_dir = dir.join("state");
    cfg.forwarder_port = 20000 + (rand::random::<u16>() % 30000);
    // Tests and benchmarks run more sandboxes than a node's default limit.
    cfg.limit_per_node = Some(1000);
    cfg
}

/// [`config_in`] with a warm pool of one VM for the default pool key, as
/// the warm pool tests against the cloud stand-ins run it: a short connect
/// timeout, StartVM bounded at 30 s, no orphan collection.
pub fn pool_config_in(dir: &std::path::Path, node: &str) -> AdaptorConfig {
    use cloud_api_adaptor::pool::{KeySpec, PoolKey, PoolSettings};
    let mut cfg = config_in(dir, node);
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.start_timeout = Duration::from_secs(30);
    cfg.orphans.interval = Duration::ZERO;
    cfg.warm_pool = PoolSettings {
        keys: vec![KeySpec {
            key: PoolKey::default(),
            size: 1,
            initdata: None,
        }],
        creates_per_minute: 60,
        boot_timeout: Duration::from_secs(60),
    };
    cfg
}

/// How long the end-to-end tests wait for what a background loop does
/// (a pool refill, a teardown) before calling it hung.
pub const LONG_WAIT: Duration = Duration::from_secs(60);

/// Polls `f` every 20 ms until it holds; panics naming `what` after
/// `limit`. The one polling loop of the end-to-end tests.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_for`] with a check that needs no await (a metric, a recorded
/// request).
pub async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    wait_for(what, limit, || std::future::ready(f())).await
}

/// A daemon on temporary directories.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub cfg: AdaptorConfig,
    pub provider: Arc<ProcessProvider>,
    pub daemon: Option<Daemon>,
}

impl TestDaemon {
    /// Starts a daemon; `tls` as the operator would set it.
    pub async fn start(tls: bool) -> Self {
        init_logging();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config_in(dir.path(), "test-node");
        let provider = Arc::new(ProcessProvider::new(
            &dir.path().join("instances"),
            cfg.forwarder_port,
        ));
        cfg.tls = tls;
        cfg.start_timeout = Duration::from_secs(30);
        let daemon = Daemon::start(cfg.clone(), provider.clone())
            .await
            .expect("daemon starts");
        Self {
            dir,
            cfg,
            provider,
            daemon: Some(daemon),
        }
    }

    pub async fn hypervisor(&self) -> Hypervisor {
        Hypervisor::connect(&self.cfg.socket)
            .await
            .expect("connect hypervisor socket")
    }

    /// CreateVM + StartVM for a pod; returns the agent socket and the
    /// provider's instance id.
    pub async fn running_sandbox(&self, id: &str) -> (PathBuf, String) {
        let h = self.hypervisor().await;
        let sock = h
            .create_vm(id, shim_annotations(&format!("pod-{id}"), "default"), "")
            .await
            .expect("CreateVM");
        h.start_vm(id, Duration::from_secs(30))
            .await
            .expect("StartVM");
        let live = self.provider.live();
        let mine = self
            .provider_instance_of(id)
            .await
            .unwrap_or_else(|| panic!("no instance for {id} among {live:?}"));
        (PathBuf::from(sock), mine)
    }

    /// The provider instance carrying this sandbox's owner tag.
    pub async fn provider_instance_of(&self, id: &str) -> Option<String> {
        use peerpod_provider_api::{OwnerTags, Provider};
        let owner = OwnerTags {
            cluster: String::new(),
            node: self.cfg.node_name.clone(),
            sandbox_id: id.to_string(),
        };
        self.provider
            .list_instances(&owner)
            .await
            .ok()
            .and_then(|v| v.into_iter().next())
            .map(|i| i.id)
    }

    /// Stops every sandbox and waits for the teardowns.
    pub async fn stop_all(&self) {
        if let Some(d) = &self.daemon {
            for s in d.manager.list().await {
                let _ = d.manager.stop_vm(&s.id).await;
            }
            d.manager.wait_teardowns().await;
        }
    }

    pub fn manager(&self) -> &Arc<cloud_api_adaptor::Manager> {
        &self.daemon.as_ref().expect("daemon running").manager
    }
}

/// Encodes a ttrpc request frame.
pub fn request_frame(stream_id: u32, service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    let mut r = ttrpc::Request::new();
    r.service = service.into();
    r.method = method.into();
    r.payload = payload.to_vec();
    let bytes = r.write_to_bytes().unwrap_or_default();
    encode_frame(stream_id, MessageType::Request, 0, &bytes)
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub stream_id: u32,
    pub code: ttrpc::Code,
    pub message: String,
    pub payload: Vec<u8>,
}

/// Reads one response frame.
pub async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<RawResponse> {
    let h = read_header(r).await?.ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")
    })?;
    let mut body = vec![0u8; h.length as usize];
    r.read_exact(&mut body).await?;
    let resp = ttrpc::Response::parse_from_bytes(&body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let (code, message) = match resp.status.as_ref() {
        Some(s) => (s.code(), s.message.clone()),
        None => (ttrpc::Code::OK, String::new()),
    };
    Ok(RawResponse {
        stream_id: h.stream_id,
        code,
        message,
        payload: resp.payload,
    })
}

/// One raw unary call on a fresh connection to a unix socket.
pub async fn raw_call(
    socket: &std::path::Path,
    service: &str,
    method: &str,
    payload: &[u8],
) -> std::io::Result<RawResponse> {
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(&request_frame(1, service, method, payload))
        .await?;
    read_response(&mut s).await
}
