//! The forwarder: listens for the adaptor on TCP (mutual TLS unless the
//! operator turned it off) and relays each connection's ttrpc frames to the
//! kata-agent's unix socket, one agent connection per adaptor connection.
//! The VM-side request rewrites (DNS dropped from CreateSandbox; the pod
//! network namespace added to CreateContainer once the pod network is set
//! up) happen here, where the VM's layout is known.

pub mod bootstrap;
pub mod userdata_source;

use peerpod_relay::{relay_connection, CreateContainerRewriter, RelayOptions, RequestRewriter};
use peerpod_vmconfig::ForwarderConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_rustls::TlsAcceptor;

/// A TLS handshake must finish within this time; a peer that connects and
/// says nothing is dropped (this is not a limit on requests).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the forwarder could not start.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("cannot read forwarder config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("forwarder config {path}: {source}")]
    Config {
        path: PathBuf,
        source: peerpod_vmconfig::ConfigError,
    },
    #[error("TLS material in the forwarder config: {0}")]
    Tls(#[from] peerpod_relay::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("setting up the pod network: {0}")]
    PodNetwork(#[from] peerpod_podnet::PodnetError),
}

/// Builds the VM end of the pod network when the config carries one: the
/// namespace `pod_netns` (under /run/netns) with the pod's interface,
/// addresses and routes, tunnelled to the worker. Returns the namespace
/// path the containers must join.
pub async fn setup_pod_network(
    cfg: &ForwarderConfig,
    pod_netns: &str,
) -> Result<Option<PathBuf>, ForwarderError> {
    let Some(spec) = &cfg.pod_network else {
        tracing::info!("no pod network in the config: containers keep the VM's network");
        return Ok(None);
    };
    let started = std::time::Instant::now();
    peerpod_podnet::vm::setup(spec, &peerpod_podnet::Netns::Current, pod_netns).await?;
    let path = peerpod_podnet::netns::path(pod_netns);
    tracing::info!(
        netns = %path.display(),
        interface = %spec.interface.name,
        addresses = ?spec.interface.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        vni = spec.vni,
        worker = %spec.worker_ip,
        took = ?started.elapsed(),
        "pod network ready"
    );
    Ok(Some(path))
}

/// Reads and checks the config file.
pub fn load_config(path: &std::path::Path) -> Result<ForwarderConfig, ForwarderError> {
    let bytes = std::fs::read(path).map_err(|source| ForwarderError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    ForwarderConfig::parse(&bytes).map_err(|source| ForwarderError::Config {
        path: path.to_path_buf(),
        source,
    })
}

/// How connections are served now.
#[derive(Clone)]
enum Mode {
    /// Relaying the agent API for one sandbox.
    Serving(Arc<Serving>),
    /// A warm-pool VM: only the bootstrap service, with the one-time
    /// bootstrap identity, until a Bind switches to `Serving`.
    Bootstrap(Arc<Bootstrap>),
}

struct Serving {
    acceptor: Option<TlsAcceptor>,
    opts: RelayOptions,
    rewriter: Arc<dyn RequestRewriter>,
}

struct Bootstrap {
    acceptor: TlsAcceptor,
    pool_vm: String,
}

/// Where a Bind's outcome goes besides memory.
struct BindTarget {
    /// The config file the forwarder was started with: rewritten with the
    /// bound config, so a forwarder restarted inside the VM serves the
    /// sandbox, not the bootstrap service.
    config_path: Option<PathBuf>,
    /// Name (under /run/netns) of the pod namespace a Bind builds.
    pod_netns: String,
    /// One Bind at a time.
    lock: tokio::sync::Mutex<()>,
}

/// A bound forwarder, ready to serve.
pub struct Forwarder {
    listener: TcpListener,
    agent_socket: PathBuf,
    mode: std::sync::RwLock<Mode>,
    bind: BindTarget,
    /// Shared by every serving mode this forwarder goes through.
    counters: Arc<peerpod_relay::relay::RelayCounters>,
}

fn serving(
    cfg: &ForwarderConfig,
    pod_netns: Option<PathBuf>,
    counters: Arc<peerpod_relay::relay::RelayCounters>,
) -> Result<Arc<Serving>, ForwarderError> {
    let acceptor = match &cfg.tls {
        Some(m) => Some(TlsAcceptor::from(peerpod_relay::tls::server_config(m)?)),
        None => {
            tracing::warn!(
                "TLS IS OFF: any host that can reach {} can drive the kata-agent. \
                 Use this only for debugging.",
                cfg.listen
            );
            None
        }
    };
    let mut opts = RelayOptions::new(cfg.sandbox_id.clone());
    opts.max_payload = cfg.max_frame_bytes;
    opts.counters = counters;
    Ok(Arc::new(Serving {
        acceptor,
        opts,
        rewriter: Arc::new(CreateContainerRewriter {
            pod_netns: pod_netns.map(|p| p.display().to_string()),
            drop_sandbox_dns: true,
        }),
    }))
}

impl Forwarder {
    /// Binds the listen address and prepares TLS (the bootstrap identity
    /// when the config is a pool VM's).
    pub async fn bind(cfg: &ForwarderConfig) -> Result<Self, ForwarderError> {
        let counters = Arc::new(peerpod_relay::relay::RelayCounters::default());
        let mode = match (&cfg.bootstrap, &cfg.tls) {
            (Some(b), Some(m)) => Mode::Bootstrap(Arc::new(Bootstrap {
                acceptor: TlsAcceptor::from(peerpod_relay::tls::server_config(m)?),
                pool_vm: b.pool_vm.clone(),
            })),
            // ForwarderConfig::parse refuses this; a config built in code
            // must not fall back to clear text either.
            (Some(_), None) => {
                return Err(ForwarderError::Config {
                    path: PathBuf::new(),
                    source: peerpod_vmconfig::ConfigError::Invalid {
                        field: "bootstrap",
                        why: "a pool VM needs its bootstrap TLS identity".into(),
                    },
                })
            }
            (None, _) => Mode::Serving(serving(cfg, None, counters.clone())?),
        };
        let listener =
            TcpListener::bind(&cfg.listen)
                .await
                .map_err(|source| ForwarderError::Listen {
                    addr: cfg.listen.clone(),
                    source,
                })?;
        Ok(Self {
            listener,
            agent_socket: cfg.agent_socket.clone(),
            mode: std::sync::RwLock::new(mode),
            bind: BindTarget {
                config_path: None,
                pod_netns: peerpod_podnet::vm::POD_NETNS.to_string(),
                lock: tokio::sync::Mutex::new(()),
            },
            counters,
        })
    }

    /// Containers created through this forwarder join the network
    /// namespace at `path` (the pod network's namespace). No effect on a
    /// pool VM, whose pod network comes with its Bind.
    pub fn with_pod_netns(self, path: Option<PathBuf>) -> Self {
        if let Ok(mut m) = self.mode.write() {
            if let Mode::Serving(s) = &*m {
                *m = Mode::Serving(Arc::new(Serving {
                    acceptor: s.acceptor.clone(),
                    opts: s.opts.clone(),
                    rewriter: Arc::new(CreateContainerRewriter {
                        pod_netns: path.map(|p| p.display().to_string()),
                        drop_sandbox_dns: true,
                    }),
                }));
            }
        }
        self
    }

    /// Byte and connection counters of every relayed connection (shared
    /// with the serving task).
    pub fn counters(&self) -> Arc<peerpod_relay::relay::RelayCounters> {
        self.counters.clone()
    }

    /// Where a Bind writes the bound config (the file the forwarder was
    /// started with; registry credentials go next to it as `auth.json`)
    /// and the name of the pod namespace it builds.
    pub fn with_bind_target(mut self, config_path: Option<PathBuf>, pod_netns: &str) -> Self {
        self.bind.config_path = config_path;
        self.bind.pod_netns = pod_netns.to_string();
        self
    }

    /// Whether this forwarder still waits to be bound.
    pub fn is_bootstrap(&self) -> bool {
        matches!(self.mode(), Mode::Bootstrap(_))
    }

    fn mode(&self) -> Mode {
        match self.mode.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self) {
        let this = Arc::new(self);
        loop {
            let (tcp, peer) = match this.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let this = this.clone();
            tokio::spawn(async move { this.handle(tcp, peer).await });
        }
    }

    async fn handle(&self, tcp: TcpStream, peer: SocketAddr) {
        let (acceptor, mode) = match self.mode() {
            Mode::Serving(s) => (s.acceptor.clone(), Mode::Serving(s)),
            Mode::Bootstrap(b) => (Some(b.acceptor.clone()), Mode::Bootstrap(b)),
        };
        let Some(acceptor) = acceptor else {
            if let Mode::Serving(s) = mode {
                self.relay(tcp, peer, &s).await;
            }
            return;
        };
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "refused a connection: TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "refused a connection: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        match mode {
            Mode::Serving(s) => self.relay(tls, peer, &s).await,
            Mode::Bootstrap(b) => bootstrap::serve_connection(self, tls, peer, &b.pool_vm).await,
        }
    }

    async fn relay<S>(&self, stream: S, peer: SocketAddr, s: &Serving)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let agent = match UnixStream::connect(&self.agent_socket).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%peer, socket = %self.agent_socket.display(), error = %e,
                    "kata-agent is not reachable; closing the adaptor's connection");
                return;
            }
        };
        tracing::debug!(%peer, "relaying a connection to the kata-agent");
        let outcome = relay_connection(stream, agent, s.opts.clone(), s.rewriter.clone()).await;
        match &outcome {
            // The adaptor closes its connections properly (TLS
            // close_notify); anything else is worth a line.
            peerpod_relay::RelayOutcome::DownstreamError(e) => {
                tracing::warn!(%peer, error = %e, "the adaptor's connection ended with an error")
            }
            _ => tracing::debug!(%peer, ?outcome, "connection ended"),
        }
    }
}
