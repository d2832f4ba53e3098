//! The `DevicePlugin` service: N healthy devices named `vm-0`…`vm-<N-1>`,
//! and allocation answers with nothing to inject (the VM is made by the
//! adaptor, not by the container runtime). Also the server's lifecycle on
//! our socket.

use crate::api::device_plugin_server::{DevicePlugin, DevicePluginServer};
use crate::api::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, Device, DevicePluginOptions, Empty, ListAndWatchResponse,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse,
};
use futures::Stream;
use std::collections::HashSet;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

/// The kubelet's word for a usable device.
pub const HEALTHY: &str = "Healthy";

/// The device ids advertised for `count` devices. Stable across restarts,
/// so the kubelet's checkpoint of which pod holds which device stays valid.
pub fn device_ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("vm-{i}")).collect()
}

/// Our `DevicePlugin` implementation.
#[derive(Clone)]
pub struct VmDevicePlugin {
    ids: Vec<String>,
    known: HashSet<String>,
    /// Flips to true when the server stops, ending open ListAndWatch
    /// streams (a graceful stop waits for every open call).
    stopping: watch::Receiver<bool>,
    stop_tx: std::sync::Arc<watch::Sender<bool>>,
    /// Told when the kubelet drops a ListAndWatch stream while we serve.
    dropped: Option<mpsc::UnboundedSender<()>>,
}

/// Lives inside a ListAndWatch stream: when the stream is dropped while the
/// server is not stopping, the kubelet has let go of us (it restarted, or
/// it replaced our registration with another); [`crate::run`] then
/// registers again.
struct DropNotice {
    stopping: watch::Receiver<bool>,
    dropped: Option<mpsc::UnboundedSender<()>>,
}

impl Drop for DropNotice {
    fn drop(&mut self) {
        if !*self.stopping.borrow() {
            if let Some(tx) = &self.dropped {
                let _ = tx.send(());
            }
        }
    }
}

impl VmDevicePlugin {
    /// A plugin advertising `count` devices.
    pub fn new(count: usize) -> Self {
        let ids = device_ids(count);
        let (stop_tx, stopping) = watch::channel(false);
        Self {
            known: ids.iter().cloned().collect(),
            ids,
            stopping,
            stop_tx: std::sync::Arc::new(stop_tx),
            dropped: None,
        }
    }

    fn devices(&self) -> Vec<Device> {
        self.ids
            .iter()
            .map(|id| Device {
                id: id.clone(),
                health: HEALTHY.into(),
                topology: None,
            })
            .collect()
    }

    fn check_ids<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Result<(), Status> {
        for id in ids {
            if !self.known.contains(id) {
                return Err(Status::invalid_argument(format!(
                    "unknown device id {id:?}: this plugin advertises {} devices vm-0..vm-{}",
                    self.ids.len(),
                    self.ids.len().saturating_sub(1)
                )));
            }
        }
        Ok(())
    }
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for VmDevicePlugin {
    async fn get_device_plugin_options(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: false,
        }))
    }

    type ListAndWatchStream = DeviceStream;

    /// Sends the device list once and keeps the stream open (the devices
    /// never change) until the server stops: the kubelet reads an ended
    /// stream as the plugin going away.
    async fn list_and_watch(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let first = ListAndWatchResponse {
            devices: self.devices(),
        };
        let mut stopping = self.stopping.clone();
        let notice = DropNotice {
            stopping: self.stopping.clone(),
            dropped: self.dropped.clone(),
        };
        let end = async move {
            let _notice = notice;
            let _ = stopping.wait_for(|s| *s).await;
            None::<Result<ListAndWatchResponse, Status>>
        };
        let stream = futures::stream::once(async move { Ok(first) })
            .chain(futures::stream::once(end).filter_map(|x| async move { x }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let mut out = Vec::new();
        for c in req.into_inner().container_requests {
            let size = usize::try_from(c.allocation_size).unwrap_or(0);
            let mut ids: Vec<String> = Vec::with_capacity(size);
            for id in c
                .must_include_device_i_ds
                .iter()
                .chain(&c.available_device_i_ds)
            {
                if ids.len() >= size {
                    break;
                }
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
            out.push(ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(Response::new(PreferredAllocationResponse {
            container_responses: out,
        }))
    }

    /// One empty answer per container: nothing to mount, no env: the
    /// device only counts a VM slot.
    async fn allocate(
        &self,
        req: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let req = req.into_inner();
        let mut out = Vec::with_capacity(req.container_requests.len());
        for c in &req.container_requests {
            self.check_ids(&c.devices_ids)?;
            out.push(ContainerAllocateResponse::default());
        }
        tracing::debug!(containers = out.len(), "device plugin Allocate");
        Ok(Response::new(AllocateResponse {
            container_responses: out,
        }))
    }

    async fn pre_start_container(
        &self,
        req: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        self.check_ids(&req.into_inner().devices_ids)?;
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

use futures::StreamExt;

/// A running server on our socket.
pub(crate) struct Serving {
    /// A ListAndWatch stream was dropped by the kubelet.
    pub(crate) dropped: mpsc::UnboundedReceiver<()>,
    stop: std::sync::Arc<watch::Sender<bool>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Longest wait for open calls when the server stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Serving {
    /// Ends open streams and stops serving (forcefully after a grace).
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(STOP_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Binds `path` (a stale file there is removed first) and serves `plugin`.
pub(crate) fn serve(path: &Path, mut plugin: VmDevicePlugin) -> Result<Serving, crate::Error> {
    let err = |source| crate::Error::Socket {
        path: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    let stop = plugin.stop_tx.clone();
    let (tx, dropped) = mpsc::unbounded_channel();
    plugin.dropped = Some(tx);
    let (shutdown_tx, rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(DevicePluginServer::new(plugin))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "device plugin server ended");
        }
    });
    Ok(Serving {
        dropped,
        stop,
        shutdown: Some(shutdown_tx),
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ContainerAllocateRequest;

    #[test]
    fn ids_are_stable_and_short() {
        assert_eq!(device_ids(3), ["vm-0", "vm-1", "vm-2"]);
        assert!(device_ids(100_000).iter().all(|i| i.len() <= 63));
        assert!(device_ids(0).is_empty());
    }

    #[tokio::test]
    async fn allocate_rejects_unknown_ids_by_name() {
        let p = VmDevicePlugin::new(2);
        let e = p
            .allocate(Request::new(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: vec!["vm-1".into(), "gpu-7".into()],
                }],
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("gpu-7"), "{}", e.message());
    }

    #[tokio::test]
    async fn preferred_allocation_takes_must_include_first() {
        let p = VmDevicePlugin::new(4);
        let r = p
            .get_preferred_allocation(Request::new(PreferredAllocationRequest {
                container_requests: vec![crate::api::ContainerPreferredAllocationRequest {
                    available_device_i_ds: vec!["vm-0".into(), "vm-1".into(), "vm-3".into()],
                    must_include_device_i_ds: vec!["vm-3".into()],
                    allocation_size: 2,
                }],
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.container_responses[0].device_i_ds, ["vm-3", "vm-0"]);
    }
}
