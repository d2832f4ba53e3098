//! Orphan collection driven by the manager: the sandboxes it knows, in
//! any phase, own their instances, and the warm pool owns its VMs (by
//! pool name, and by instance id once known); every other instance
//! carrying this node's (and cluster's) owner tags is an orphan (see
//! [`crate::orphans`]).

use super::Manager;
use peerpod_provider_api::{ErrorKind, ProviderError};
use std::collections::HashSet;
use std::sync::Arc;

impl Manager {
    /// One orphan-collection pass over this node's instances (see
    /// [`crate::orphans`]). Sandboxes this adaptor knows — in any phase —
    /// own their instances.
    pub async fn collect_orphans(&self) -> Result<crate::orphans::PassReport, ProviderError> {
        let live: HashSet<String> = match self.registry.lock() {
            Ok(r) => r.sandboxes.keys().cloned().collect(),
            Err(_) => {
                return Err(ProviderError::new(
                    ErrorKind::Transient,
                    "sandbox registry unavailable",
                ))
            }
        };
        // Pool VMs (any state) and every instance a record names.
        let (pool_names, mut instance_ids) = self.pool.known();
        for sb in self.all() {
            if let Some(i) = sb.record.lock().await.instance_id.clone() {
                instance_ids.insert(i);
            }
        }
        let known = crate::orphans::Known {
            pool_names,
            instance_ids,
        };
        let report = self
            .orphans
            .pass(
                self.provider.as_ref(),
                &self.owner(""),
                &live,
                &known,
                &self.cfg.orphans,
            )
            .await
            .inspect_err(|e| self.metrics.provider_error("list", e.kind))?;
        self.metrics
            .orphans_collected
            .inc_by(report.deleted.len() as u64);
        for (_, kind) in &report.failed {
            self.metrics.provider_error("delete", *kind);
        }
        Ok(report)
    }

    /// Runs orphan passes now and every `interval` until the manager is
    /// dropped (a zero interval: only the start-up pass).
    pub fn spawn_orphan_collector(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = self.cfg.orphans.interval;
        tokio::spawn(async move {
            loop {
                let Some(m) = weak.upgrade() else { return };
                if m.background_stopped() {
                    return;
                }
                match m.collect_orphans().await {
                    Ok(r) if !r.orphans.is_empty() => tracing::info!(
                        orphans = r.orphans.len(),
                        deleted = r.deleted.len(),
                        failed = r.failed.len(),
                        "orphan collection pass"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "orphan collection: listing this node's instances failed")
                    }
                }
                let grace = m.cfg.orphans.grace;
                drop(m);
                if interval.is_zero() {
                    // One more pass once the start-up orphans are past grace.
                    tokio::time::sleep(grace).await;
                    if let Some(m) = weak.upgrade() {
                        let _ = m.collect_orphans().await;
                    }
                    return;
                }
                tokio::time::sleep(interval).await;
            }
        });
    }
}
