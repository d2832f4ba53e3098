//! Serves any Rust [`Provider`] out of process over the provider plugin
//! protocol (`peerpod.provider.v1`, gRPC on a unix socket), so the
//! adaptor's `plugin` provider can use it:
//!
//! ```no_run
//! # async fn f(my_provider: std::sync::Arc<dyn peerpod_provider_api::Provider>) -> Result<(), peerpod_provider_plugin_server::ServeError> {
//! peerpod_provider_plugin_server::PluginServer::new(my_provider)
//!     .bind("/run/peerpod/provider.sock".as_ref())?
//!     .serve_until_signal()
//!     .await
//! # }
//! ```
//!
//! The mapping of each call to the trait is in [`service`]; this module
//! owns the socket: refuse one a live server holds, replace a stale one,
//! make it 0600 (requests carry the VMs' TLS keys in their user data),
//! and remove it when serving ends.

pub mod service;

use peerpod_protocols::provider_v1::provider_server::ProviderServer;
use peerpod_protocols::tonic;
use peerpod_provider_api::Provider;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why serving could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {path}: another plugin is serving it (it answered a connection)")]
    InUse { path: PathBuf },
    #[error("socket {path}: {step}: {source}")]
    Io {
        path: PathBuf,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("serving gRPC on {path}: {source}")]
    Transport {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// A provider to serve; see the crate doc.
pub struct PluginServer {
    svc: service::ProviderService,
}

/// A server with its socket bound; [`BoundServer::serve_until`] serves.
pub struct BoundServer {
    svc: service::ProviderService,
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl PluginServer {
    pub fn new(provider: Arc<dyn Provider>) -> Self {
        Self {
            svc: service::ProviderService::new(provider),
        }
    }

    /// The plugin's version, reported in the handshake (default: this
    /// crate's version).
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.svc.version = v.into();
        self
    }

    /// The protocol version announced in the handshake (default: the
    /// one this build speaks). A plugin that can still serve an older
    /// adaptor announces that version to it.
    pub fn protocol_version(mut self, v: u32) -> Self {
        self.svc.protocol_version = v;
        self
    }

    /// Whether to advertise ConsoleTail (default: yes).
    pub fn console_tail(mut self, on: bool) -> Self {
        self.svc.console_tail = on;
        self
    }

    /// Binds `path` (see the crate doc). Needs a tokio runtime.
    pub fn bind(self, path: &Path) -> Result<BoundServer, ServeError> {
        let io = |step: &'static str| {
            let path = path.to_path_buf();
            move |source| ServeError::Io { path, step, source }
        };
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(io("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("make it 0600"))?;
        tracing::info!(socket = %path.display(), provider = self.svc.provider_name(), "provider plugin listening");
        Ok(BoundServer {
            svc: self.svc,
            listener,
            path: path.to_path_buf(),
        })
    }
}

impl BoundServer {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes, then removes the socket.
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(self.listener);
        let r = tonic::transport::Server::builder()
            .add_service(ProviderServer::new(self.svc))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        let _ = std::fs::remove_file(&self.path);
        r.map_err(|source| ServeError::Transport {
            path: self.path.clone(),
            source,
        })
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn serve_until_signal(self) -> Result<(), ServeError> {
        let path = self.path.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| ServeError::Io {
                path,
                step: "install the SIGTERM handler",
                source,
            })?;
        self.serve_until(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("provider plugin stopping");
        })
        .await
    }
}
