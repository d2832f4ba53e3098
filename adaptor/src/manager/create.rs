//! CreateVM: validate the request, take a place under the node's limit,
//! prepare the pod network, persist the sandbox and serve its agent socket
//! (connections wait there until the VM is ready).
//!
//! The limit is checked and taken in one step under the registry lock (a
//! [`Reservation`]), so concurrent CreateVMs can never overshoot it even
//! though preparing the network awaits in between.

use super::{now_secs, Manager, ManagerError, Sandbox};
use crate::agent_socket::{AgentSocket, Target};
use crate::annotations::PodSpec;
use crate::state::{Phase, SandboxRecord};
use peerpod_provider_api::instance_name;
use std::collections::HashMap;
use std::sync::Arc;

/// A place under the node's limit held for one sandbox id while CreateVM
/// prepares it; released on drop unless [`Reservation::fulfil`] turned it
/// into a registered sandbox.
struct Reservation<'a> {
    manager: &'a Manager,
    id: String,
}

impl Reservation<'_> {
    /// Registers the sandbox in the place this reservation held.
    fn fulfil(self, sb: Arc<Sandbox>) {
        if let Ok(mut r) = self.manager.registry.lock() {
            r.reserved.remove(&self.id);
            r.sandboxes.insert(self.id.clone(), sb);
        }
        std::mem::forget(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut r) = self.manager.registry.lock() {
            r.reserved.remove(&self.id);
        }
    }
}

impl Manager {
    /// CreateVM: validates, persists the sandbox and serves its agent
    /// socket (connections wait until the VM is ready). Returns the socket.
    pub async fn create_vm(
        &self,
        id: &str,
        annotations: &HashMap<String, String>,
        netns_path: &str,
    ) -> Result<std::path::PathBuf, ManagerError> {
        super::check_sandbox_id(id)?;
        let spec =
            PodSpec::from_annotations(annotations).map_err(|source| ManagerError::Annotation {
                id: id.to_string(),
                source,
            })?;
        let reservation = self.reserve(id)?;
        let netns_path = Some(netns_path.to_string()).filter(|p| !p.is_empty());
        let network = match &netns_path {
            Some(p) => {
                Some(
                    self.nets
                        .prepare(p)
                        .await
                        .map_err(|source| ManagerError::Network {
                            id: id.to_string(),
                            source,
                        })?,
                )
            }
            None => {
                tracing::info!(
                    sandbox = id,
                    "no network namespace given: the pod VM gets no pod network"
                );
                None
            }
        };
        let record = SandboxRecord {
            id: id.to_string(),
            instance_name: instance_name(&spec.pod_name, id, self.cfg.instance_name_max),
            spec,
            netns_path,
            network,
            phase: Phase::Created,
            instance_id: None,
            instance_ip: None,
            last_error: None,
            pool_vm: None,
            created_at: now_secs(),
        };
        tracing::info!(
            "create a sandbox {} for pod {} in namespace {}",
            id,
            record.spec.pod_name,
            record.spec.pod_namespace
        );
        let sb = Sandbox::new(record.clone());
        let result = async {
            self.store.save(&record)?;
            let path = self.cfg.agent_socket(id);
            let socket = AgentSocket::serve(&path, Target::Pending, self.relay_options(id))?;
            if let Ok(mut s) = sb.socket.lock() {
                *s = Some(socket);
            }
            Ok::<_, ManagerError>(path)
        }
        .await;
        match result {
            Ok(path) => {
                reservation.fulfil(sb);
                Ok(path)
            }
            Err(e) => {
                // Nothing was created outside this process: forget it whole
                // (the reservation is released when it drops).
                let _ = self.store.remove(id);
                let _ = std::fs::remove_dir_all(self.cfg.pods_dir.join(id));
                if let Some(n) = &record.network {
                    self.nets.release(n);
                }
                Err(e)
            }
        }
    }

    /// Takes a place for `id` under the node's limit, in one step with the
    /// duplicate check (sandboxes being torn down do not count).
    fn reserve(&self, id: &str) -> Result<Reservation<'_>, ManagerError> {
        let mut reg = self
            .registry
            .lock()
            .map_err(|_| ManagerError::Unknown(id.into()))?;
        if let Some(existing) = reg.sandboxes.get(id) {
            let phase = existing
                .record
                .try_lock()
                .map(|r| r.phase.as_str())
                .unwrap_or("busy");
            return Err(ManagerError::Duplicate {
                id: id.to_string(),
                phase,
            });
        }
        if reg.reserved.contains(id) {
            return Err(ManagerError::Duplicate {
                id: id.to_string(),
                phase: "being created",
            });
        }
        if let Some(limit) = self.cfg.limit_per_node {
            if reg.live() >= limit {
                return Err(ManagerError::NodeFull {
                    id: id.to_string(),
                    limit,
                });
            }
        }
        reg.reserved.insert(id.to_string());
        Ok(Reservation {
            manager: self,
            id: id.to_string(),
        })
    }
}
