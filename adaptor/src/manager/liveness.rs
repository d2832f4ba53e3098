//! The liveness watch over running sandboxes (see [`crate::liveness`]):
//! every interval, a Health check to each running sandbox's forwarder on
//! a connection of its own; after the configured number of consecutive
//! failures the sandbox is marked failed and its agent socket closed.

use super::{Manager, Sandbox};
use crate::agent_socket::Target;
use crate::liveness::Verdict;
use crate::state::Phase;
use futures::StreamExt;
use std::sync::Arc;

/// Checks in flight at once.
const CONCURRENT_CHECKS: usize = 16;

impl Manager {
    /// Runs the watch until the manager is dropped (not at all when the
    /// interval is zero).
    pub fn spawn_liveness_watch(self: &Arc<Self>) {
        let interval = self.cfg.liveness.interval;
        if interval.is_zero() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(m) = weak.upgrade() else { return };
                if m.background_stopped() {
                    return;
                }
                m.liveness_pass().await;
            }
        });
    }

    /// One pass over the running sandboxes; returns how many were marked
    /// failed.
    pub async fn liveness_pass(&self) -> usize {
        let all: Vec<Arc<Sandbox>> = match self.registry.lock() {
            Ok(r) => r.sandboxes.values().cloned().collect(),
            Err(_) => return 0,
        };
        let mut running = Vec::new();
        for sb in all {
            let r = sb.record.lock().await;
            if r.phase != Phase::Running {
                continue;
            }
            let Some(ip) = r.instance_ip else { continue };
            if let Ok(up) = self.upstream(&r.instance_name, ip) {
                running.push((r.id.clone(), sb.clone(), up));
            }
        }
        let ids: Vec<String> = running.iter().map(|(id, _, _)| id.clone()).collect();
        self.liveness.retain(&ids);
        let limit = self.cfg.liveness.failures;
        let results: Vec<_> = futures::stream::iter(running)
            .map(|(id, sb, up)| async move {
                let r = crate::readiness::check_once(&up).await;
                (id, sb, r)
            })
            .buffer_unordered(CONCURRENT_CHECKS)
            .collect()
            .await;
        let mut failed = 0;
        for (id, sb, result) in results {
            let verdict = self.liveness.record(&id, result.is_ok(), limit);
            let Err(e) = result else { continue };
            self.metrics.liveness_check_failures.inc();
            match verdict {
                Verdict::Suspect(n) => {
                    tracing::warn!(sandbox = %id, failures = n, limit, error = %e, "liveness: Health check failed")
                }
                Verdict::Dead => {
                    if self.liveness_failed(&id, &sb, limit, &e.to_string()).await {
                        failed += 1;
                    }
                }
                Verdict::Alive => {}
            }
        }
        failed
    }

    async fn liveness_failed(&self, id: &str, sb: &Sandbox, limit: u32, why: &str) -> bool {
        let mut r = sb.record.lock().await;
        if r.phase != Phase::Running {
            return false; // stopped or failed meanwhile
        }
        r.phase = Phase::Failed;
        r.last_error = Some(
            format!("liveness: {limit} consecutive Health checks failed; last: {why}")
                .chars()
                .take(2000)
                .collect(),
        );
        if let Err(e) = self.store.save(&r) {
            tracing::error!(sandbox = %id, error = %e, "liveness: cannot persist the failed sandbox");
        }
        sb.set_target(Target::Closed);
        self.metrics.liveness_failed.inc();
        tracing::error!(sandbox = %id, instance_id = ?r.instance_id, checks = limit, last_error = %why,
            "liveness: the pod VM or its agent stopped answering; sandbox marked failed and its agent socket closed");
        true
    }
}
