//! StopVM and the teardown behind it. StopVM answers at once (runtime-rs
//! gives it one second and calls it twice); the teardown — relay closed,
//! every instance carrying the sandbox's owner tags deleted, tunnel and pod
//! directory removed, record forgotten — is persisted as `Stopping` first
//! and runs in the background, retried with backoff until done, and is
//! resumed after a restart.

use super::{Manager, ManagerError, Sandbox};
use crate::agent_socket::Target;
use crate::lifecycle::EventKind;
use crate::state::Phase;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Teardown retries back off up to this.
const MAX_TEARDOWN_BACKOFF: Duration = Duration::from_secs(30);

impl Manager {
    /// Marks the sandbox failed (its instance is gone or being deleted)
    /// and closes its agent socket to new work.
    pub(super) async fn mark_failed(&self, sb: &Sandbox, why: &str) -> Result<(), ManagerError> {
        let mut r = sb.record.lock().await;
        if r.phase == Phase::Stopping {
            return Ok(());
        }
        r.phase = Phase::Failed;
        r.instance_id = None;
        r.instance_ip = None;
        r.last_error = Some(why.chars().take(2000).collect());
        self.store.save(&r)?;
        sb.set_target(Target::Closed);
        Ok(())
    }

    /// Deletes the instance `known` (if any) and every other instance
    /// carrying this sandbox's owner tags; returns whether all are gone.
    pub(super) async fn delete_owned_instances(&self, id: &str, known: Option<&str>) -> bool {
        let mut all_gone = true;
        let mut ids: Vec<String> = known.map(|k| vec![k.to_string()]).unwrap_or_default();
        match self.provider.list_instances(&self.owner(id)).await {
            Ok(found) => {
                for i in found {
                    if !ids.contains(&i.id) {
                        ids.push(i.id);
                    }
                }
            }
            Err(e) => {
                self.metrics.provider_error("list", e.kind);
                tracing::warn!(sandbox = id, error = %e, "listing instances by owner tags failed");
                all_gone = false;
            }
        }
        for iid in ids {
            match self.provider.delete_instance(&iid).await {
                Ok(()) => tracing::info!(sandbox = id, instance_id = %iid, "pod VM deleted"),
                Err(e) => {
                    self.metrics.provider_error("delete", e.kind);
                    tracing::warn!(sandbox = id, instance_id = %iid, error = %e, "deleting the pod VM failed");
                    all_gone = false;
                }
            }
        }
        all_gone
    }

    /// StopVM: answers at once; the teardown (relay closed, instance
    /// deleted, pod directory removed, record forgotten) is persisted and
    /// runs in the background until done.
    pub async fn stop_vm(self: &Arc<Self>, id: &str) -> Result<(), ManagerError> {
        super::check_sandbox_id(id)?;
        let Some(sb) = self.get(id) else {
            tracing::info!(
                sandbox = id,
                "StopVM for a sandbox this adaptor does not know (already stopped?): nothing to do"
            );
            return Ok(());
        };
        {
            let mut r = sb.record.lock().await;
            if r.phase == Phase::Stopping {
                tracing::info!(sandbox = id, "StopVM again: teardown already under way");
                return Ok(());
            }
            r.phase = Phase::Stopping;
            self.store.save(&r)?;
        }
        sb.stop_requested.send_replace(true);
        sb.close_socket();
        tracing::info!(
            sandbox = id,
            "StopVM: tearing the sandbox down in the background"
        );
        self.spawn_teardown(id.to_string(), sb);
        Ok(())
    }

    pub(super) fn spawn_teardown(self: &Arc<Self>, id: String, sb: Arc<Sandbox>) {
        self.teardowns.send_modify(|n| *n += 1);
        let this = self.clone();
        tokio::spawn(async move {
            this.teardown(&id, &sb).await;
            this.teardowns.send_modify(|n| *n = n.saturating_sub(1));
        });
    }

    async fn teardown(&self, id: &str, sb: &Sandbox) {
        let started = Instant::now();
        // Wait for a StartVM in progress to hand over.
        let _op = sb.op.lock().await;
        let mut backoff = Duration::from_millis(100);
        let mut deleted = None;
        loop {
            let known = sb.record.lock().await.instance_id.clone();
            let instances_gone = self.delete_owned_instances(id, known.as_deref()).await;
            deleted = known.or(deleted);
            if self.detach_network(id, sb).await && instances_gone {
                break;
            }
            tracing::warn!(sandbox = id, retry_in = ?backoff, "teardown incomplete; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_TEARDOWN_BACKOFF);
        }
        let dir = self.cfg.pods_dir.join(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(sandbox = id, dir = %dir.display(), error = %e, "cannot remove the pod directory");
            }
        }
        loop {
            match self.store.remove(id) {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(sandbox = id, error = %e, "cannot forget the sandbox record; retrying");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        let record = sb.record.lock().await.clone();
        if let Some(n) = &record.network {
            self.nets.release(n);
        }
        self.forget(id);
        self.metrics
            .stop_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            sandbox = id,
            "sandbox stopped: instance deleted, tunnel and pod directory removed"
        );
        self.emit(
            &record,
            EventKind::Deleted {
                instance_id: deleted,
            },
        );
    }

    /// Removes the worker end of the sandbox's tunnel, if it has one;
    /// returns whether it is gone (the VXLAN id stays held until the
    /// record is forgotten).
    pub(super) async fn detach_network(&self, id: &str, sb: &Sandbox) -> bool {
        let (path, net) = {
            let r = sb.record.lock().await;
            (r.netns_path.clone(), r.network.clone())
        };
        let (Some(path), Some(net)) = (path, net) else {
            return true;
        };
        match self.nets.detach(&path, &net).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "removing the pod network tunnel failed");
                false
            }
        }
    }
}
