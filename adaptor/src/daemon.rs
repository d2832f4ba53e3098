//! Start-up wiring: one adaptor per state directory (a lock file), the
//! hypervisor socket bound early (runtime-rs resolves it when it loads its
//! config) and never taken from a live owner, the probe endpoint, recovery
//! of persisted sandboxes, then serving (behind a framing check) until a
//! signal.

use crate::agent_socket::{bind_exclusive, SocketError};
use crate::config::AdaptorConfig;
use crate::manager::{Manager, ManagerError};
use crate::probes::{ProbeServer, ProbeState};
use crate::service::HypervisorService;
use nix::fcntl::{Flock, FlockArg};
use peerpod_protocols::hypervisor_ttrpc::create_hypervisor;
use peerpod_provider_api::Provider;
use std::sync::Arc;
use ttrpc::r#async::Server;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("another cloud-api-adaptor already uses the state directory {0} (its lock is held)")]
    Locked(String),
    #[error("hypervisor socket: {0}")]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("ttrpc server: {0}")]
    Ttrpc(#[from] ttrpc::Error),
    #[error("probe endpoint {addr} (--probe-listen): {source}")]
    Probe {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// What other parts of the program plug into the daemon before it serves.
#[derive(Default)]
pub struct Extensions {
    /// Observers of every sandbox's life-cycle events (added before
    /// recovery, so they see the events of resumed teardowns too).
    pub observers: Vec<Arc<dyn crate::lifecycle::SandboxObserver>>,
    /// Metrics of those parts, added to `/metrics`.
    pub metrics: Vec<MetricsRegistrar>,
}

/// Adds metrics to the daemon's Prometheus registry.
pub type MetricsRegistrar = Box<dyn FnOnce(&mut prometheus_client::registry::Registry) + Send>;

/// A running daemon.
pub struct Daemon {
    pub manager: Arc<Manager>,
    server: Server,
    probes: Option<ProbeServer>,
    probe_state: Arc<ProbeState>,
    _lock: Flock<std::fs::File>,
    socket: std::path::PathBuf,
    device_plugin: Option<DevicePluginTask>,
}

/// The running device plugin and how to stop it.
struct DevicePluginTask {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DevicePluginTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DevicePluginTask {
    /// Advertises the node's peer pod slots to the kubelet; started only
    /// once the daemon serves, so the scheduler sees capacity only when
    /// CreateVM can be answered.
    fn spawn(cfg: peerpod_deviceplugin::Config) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = peerpod_deviceplugin::run(cfg, shutdown).await {
                tracing::error!(error = %e, "device plugin stopped; kata.peerpods.io/vm is no longer advertised");
            }
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Stops serving and removes our socket (the kubelet then marks the
    /// devices unhealthy until the next adaptor registers).
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await;
    }
}

impl Daemon {
    /// Locks the state dir, binds the socket, recovers, starts serving.
    pub async fn start(
        cfg: AdaptorConfig,
        provider: Arc<dyn Provider>,
    ) -> Result<Self, DaemonError> {
        Self::start_with(cfg, provider, Extensions::default()).await
    }

    /// [`Daemon::start`] with extensions plugged in.
    pub async fn start_with(
        cfg: AdaptorConfig,
        provider: Arc<dyn Provider>,
        ext: Extensions,
    ) -> Result<Self, DaemonError> {
        let state = cfg.state_dir.display().to_string();
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| DaemonError::StateDir {
            path: state.clone(),
            source,
        })?;
        let lock_path = cfg.state_dir.join("adaptor.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| DaemonError::StateDir {
                path: lock_path.display().to_string(),
                source,
            })?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| DaemonError::Locked(state))?;
        let listener = bind_exclusive(&cfg.socket)?;
        let socket = cfg.socket.clone();
        // Liveness answers while recovery runs; readiness only after.
        let probe_state = Arc::new(ProbeState::default());
        let probes = match cfg.probe_addr {
            Some(addr) => {
                let p = ProbeServer::bind(addr, probe_state.clone())
                    .await
                    .map_err(|source| DaemonError::Probe { addr, source })?;
                tracing::info!(addr = %p.local_addr(), "probe endpoint listening (/healthz, /readyz, /metrics)");
                Some(p)
            }
            None => None,
        };
        let device_plugin_cfg = cfg.device_plugin.clone();
        let manager = Manager::new(cfg, provider)?;
        for o in ext.observers {
            manager.add_observer(o);
        }
        for m in ext.metrics {
            manager.register_metrics(m);
        }
        let recovered = manager.recover().await?;
        manager.spawn_orphan_collector();
        manager.spawn_pool_filler();
        manager.spawn_liveness_watch();
        let mut server = Server::new()
            .add_listener(crate::framing_guard::listener(
                listener,
                peerpod_relay::frame::DEFAULT_MAX_PAYLOAD,
            ))
            .register_service(create_hypervisor(HypervisorService::new(manager.clone())));
        server.start().await?;
        probe_state.set_ready(manager.clone());
        let device_plugin = device_plugin_cfg.map(DevicePluginTask::spawn);
        tracing::info!(
            socket = %socket.display(),
            provider = manager.provider_name(),
            recovered,
            "cloud-api-adaptor serving the remote hypervisor API"
        );
        Ok(Self {
            manager,
            server,
            probes,
            probe_state,
            _lock: lock,
            socket,
            device_plugin,
        })
    }

    /// The probe endpoint's address, when it is on.
    pub fn probe_addr(&self) -> Option<std::net::SocketAddr> {
        self.probes.as_ref().map(ProbeServer::local_addr)
    }

    /// Stops serving the hypervisor socket (sandboxes and VMs stay: they
    /// are picked up again at the next start).
    pub async fn shutdown(mut self) {
        self.probe_state.set_not_ready();
        self.manager.stop_background();
        if let Some(p) = self.device_plugin.take() {
            p.stop().await;
        }
        let _ = self.server.shutdown().await;
        self.probes.take();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Raises this process's open-file soft limit to its hard limit and
/// returns the new soft limit. A node with hundreds of sandboxes holds
/// an agent socket per sandbox and two descriptors per relayed
/// connection; the usual soft limit of 1024 would cap it well below its
/// `PEERPODS_LIMIT_PER_NODE`.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(r.rlim_cur)
}

/// Hands memory freed since the last call back to the OS, every
/// `interval`, for as long as the process runs (glibc only). glibc keeps
/// freed heap pages inside its arenas when they are not at the top of
/// the heap: after sandbox churn at 500 sandboxes the adaptor held 93 MiB
/// of which `malloc_trim` returned 51 MiB — memory it no longer used.
pub fn spawn_memory_trim(interval: std::time::Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            // SAFETY: malloc_trim only walks the allocator's own arenas.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = interval;
}
