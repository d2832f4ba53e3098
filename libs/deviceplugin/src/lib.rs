//! A kubelet device plugin that advertises the peer pod VM extended resource
//! (`kata.peerpods.io/vm`): one "device" per peer pod this node may run.
//!
//! The kubelet owns a node's extended resources when a device plugin
//! reports them: it sets capacity/allocatable from `ListAndWatch`, counts
//! what pods hold, and drops the resource when the plugin goes away. That
//! is why this replaces patching `nodes/status` (see docs/kubernetes.md).
//!
//! [`run`] serves the `DevicePlugin` service on our own socket in the
//! device-plugins directory, registers with the kubelet, and starts over
//! (serve, register) whenever the kubelet restarts: the kubelet then
//! recreates `kubelet.sock` and deletes every other socket in the directory.

pub mod api;
mod config;
pub mod register;
mod service;
mod watch;

pub use config::{Config, DEFAULT_DIR, DEFAULT_ENDPOINT, KUBELET_SOCKET, RESOURCE_NAME, VERSION};
pub use service::{device_ids, VmDevicePlugin};

use std::future::Future;
use std::time::Duration;

/// Why the plugin stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device plugin socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("device plugin configuration: {0}")]
    Config(String),
}

/// Longest wait between two failed registrations.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the plugin until `shutdown` completes. A negative device count
/// means "advertise nothing": returns at once without touching the
/// directory. Registration failures (kubelet not up yet, refused) are
/// logged and retried with backoff; only a local socket error ends it.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let Some(count) = config.device_count() else {
        tracing::info!(
            limit = config.devices,
            "negative peer pod limit: no {} device plugin, nothing advertised",
            config.resource_name
        );
        return Ok(());
    };
    config.validate()?;
    tokio::pin!(shutdown);
    let socket = config.endpoint_path();
    let mut backoff = Duration::from_millis(200);
    loop {
        // Wait for a kubelet to register with.
        let kubelet = tokio::select! {
            id = watch::wait_for(&config.kubelet_socket, config.watch_interval) => id,
            _ = &mut shutdown => return Ok(()),
        };
        let mut server = service::serve(&socket, VmDevicePlugin::new(count))?;
        let ours = watch::identity(&socket);
        tracing::debug!(socket = %socket.display(), "device plugin serving");
        let registered = tokio::select! {
            r = register::register(&config) => r,
            _ = &mut shutdown => {
                server.stop().await;
                remove_socket(&socket);
                return Ok(());
            }
        };
        if let Err(e) = registered {
            tracing::warn!(
                kubelet = %config.kubelet_socket.display(),
                error = %e,
                retry_in = ?backoff,
                "device plugin registration with the kubelet failed"
            );
            server.stop().await;
            remove_socket(&socket);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut shutdown => return Ok(()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        backoff = Duration::from_millis(200);
        tracing::info!(
            resource = %config.resource_name,
            devices = count,
            endpoint = %socket.display(),
            "registered with the kubelet as a device plugin"
        );
        // Serve until the kubelet restarts (its socket changes), deletes
        // ours, or lets go of our device list, then start over.
        let why = tokio::select! {
            why = watch::until_changed(&config.kubelet_socket, kubelet, &socket, ours, config.watch_interval) => why,
            Some(()) = server.dropped.recv() => {
                // Give a restarting kubelet a moment; never spin.
                tokio::time::sleep(config.watch_interval).await;
                "the kubelet closed its ListAndWatch stream"
            }
            _ = &mut shutdown => {
                server.stop().await;
                remove_socket(&socket);
                return Ok(());
            }
        };
        tracing::info!(
            reason = why,
            "serving and registering with the kubelet again"
        );
        server.stop().await;
        // Only remove the socket if it is still the one we created: the
        // kubelet may have deleted it already.
        if watch::identity(&socket) == ours {
            remove_socket(&socket);
        }
    }
}

fn remove_socket(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(socket = %path.display(), error = %e, "removing the device plugin socket failed")
        }
    }
}
