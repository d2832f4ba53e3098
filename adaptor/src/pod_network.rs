//! The adaptor's side of the pod network: at CreateVM it reads the pod's
//! interface from the netns the runtime gave and reserves a VXLAN id; at
//! StartVM, once the VM's address is known, it builds the worker end of
//! the tunnel; at teardown it removes it and gives the id back. The VM
//! end learns its half (`PodNetwork`) through the user data.

use crate::state::SandboxNetwork;
use peerpod_podnet::{inspect, worker, Netns, PodNetwork, PodnetError, VniPool, WorkerTunnel};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use tokio::sync::OnceCell;

/// Tunnel settings and the node's VXLAN ids.
pub struct PodNetworks {
    port: u16,
    pool: VniPool,
    /// Configured worker address, or the one found at first use.
    worker_ip: OnceCell<IpAddr>,
}

impl PodNetworks {
    pub fn new(port: u16, vni_base: u32, worker_ip: Option<IpAddr>) -> Result<Self, PodnetError> {
        Ok(Self {
            port,
            pool: VniPool::new(vni_base, peerpod_podnet::vni::DEFAULT_RANGE)?,
            worker_ip: match worker_ip {
                Some(ip) => OnceCell::new_with(Some(ip)),
                None => OnceCell::new(),
            },
        })
    }

    /// The node's underlay address the VMs send their tunnel traffic to:
    /// the configured one, else the source of the default route.
    pub async fn worker_ip(&self) -> Result<IpAddr, PodnetError> {
        self.worker_ip
            .get_or_try_init(|| async {
                // Any address beyond the default route will do (TEST-NET-1).
                peerpod_podnet::nl::source_toward(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
                    .await
                    .map_err(|e| {
                        PodnetError::Unsupported(format!(
                            "cannot find this node's address for the tunnels ({e}); \
                             set --worker-ip / PEERPOD_WORKER_IP"
                        ))
                    })
            })
            .await
            .copied()
    }

    /// CreateVM: reads the pod interface and reserves a VXLAN id.
    pub async fn prepare(&self, netns_path: &str) -> Result<SandboxNetwork, PodnetError> {
        let interface = inspect(&Netns::Path(PathBuf::from(netns_path))).await?;
        self.worker_ip().await?;
        let vni = self.pool.acquire()?;
        Ok(SandboxNetwork { interface, vni })
    }

    /// What the VM end needs, for the user data.
    pub async fn vm_spec(&self, n: &SandboxNetwork) -> Result<PodNetwork, PodnetError> {
        Ok(PodNetwork {
            interface: n.interface.clone(),
            vni: n.vni,
            port: self.port,
            worker_ip: self.worker_ip().await?,
        })
    }

    /// StartVM: the worker end toward the VM at `vm_ip`.
    pub async fn attach(
        &self,
        netns_path: &str,
        n: &SandboxNetwork,
        vm_ip: IpAddr,
    ) -> Result<worker::SetupReport, PodnetError> {
        worker::setup(
            &Netns::Current,
            &Netns::Path(PathBuf::from(netns_path)),
            &n.interface.name,
            &WorkerTunnel {
                vni: n.vni,
                port: self.port,
                vm_ip,
                mtu: n.interface.mtu,
            },
        )
        .await
    }

    /// Teardown: removes the worker end (idempotent; a vanished pod
    /// namespace is fine).
    pub async fn detach(&self, netns_path: &str, n: &SandboxNetwork) -> Result<(), PodnetError> {
        worker::teardown(&Netns::Path(PathBuf::from(netns_path)), &n.interface.name).await
    }

    /// The sandbox is forgotten: its id may be handed out again.
    pub fn release(&self, n: &SandboxNetwork) {
        self.pool.release(n.vni);
    }

    /// Recovery: a persisted sandbox still holds its id.
    pub fn mark_held(&self, n: &SandboxNetwork) {
        self.pool.mark_used(n.vni);
    }
}
