//! Orphan collection: instances carrying this node's owner tag that no
//! live sandbox owns (a crash between a cloud create and its record, a
//! record lost by hand, a VM another tool restarted) are deleted once they
//! have been seen orphaned for a grace period, so a node never leaves VMs
//! running — and billed — behind. Each deletion is logged with why; a
//! dry run only logs.

use peerpod_provider_api::{ErrorKind, Instance, OwnerTags, Provider, TAG_SANDBOX};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Orphan collection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrphanPolicy {
    /// Time between passes; zero turns the periodic pass off.
    pub interval: Duration,
    /// How long an instance must be seen orphaned before it is deleted.
    pub grace: Duration,
    /// Log what would be deleted, delete nothing.
    pub dry_run: bool,
}

impl Default for OrphanPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            grace: Duration::from_secs(300),
            dry_run: false,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Instances of this node without a live sandbox.
    pub orphans: Vec<String>,
    /// Deleted in this pass (empty in a dry run).
    pub deleted: Vec<String>,
    /// Deletions that failed, with the kind of failure (retried next pass).
    pub failed: Vec<(String, ErrorKind)>,
}

/// Besides live sandboxes, what else owns instances: the warm pool's VMs
/// (by pool name, before their id is known) and every instance id a
/// sandbox or pool record names (a bound pool VM keeps its pool tags where
/// the cloud cannot retag).
#[derive(Debug, Default, Clone)]
pub struct Known {
    pub pool_names: HashSet<String>,
    pub instance_ids: HashSet<String>,
}

/// Remembers when each orphan was first seen.
#[derive(Debug, Default)]
pub struct OrphanCollector {
    first_seen: Mutex<HashMap<String, Instant>>,
}

fn why(i: &Instance) -> String {
    if let Some(p) = i.tags.get(crate::pool::TAG_POOL) {
        return format!("it is warm pool VM {p}, which no pool or sandbox record knows");
    }
    match i.tags.get(TAG_SANDBOX) {
        Some(s) if !s.is_empty() => format!("its sandbox {s} is not known to this adaptor"),
        _ => "it carries no sandbox tag".to_string(),
    }
}

impl OrphanCollector {
    /// One pass: lists the instances carrying `node`'s owner tags (this
    /// node, and this cluster when a cluster id is configured), and deletes
    /// those owned by no sandbox in `live` (sandbox ids) once past the
    /// grace period.
    pub async fn pass(
        &self,
        provider: &dyn Provider,
        node: &OwnerTags,
        live: &HashSet<String>,
        known: &Known,
        policy: &OrphanPolicy,
    ) -> Result<PassReport, peerpod_provider_api::ProviderError> {
        let instances = provider.list_instances(&node.for_sandbox("")).await?;
        let now = Instant::now();
        let mut report = PassReport::default();
        let orphans: Vec<&Instance> = instances
            .iter()
            .filter(|i| {
                i.tags
                    .get(TAG_SANDBOX)
                    .is_none_or(|s| s.is_empty() || !live.contains(s))
                    && !known.instance_ids.contains(&i.id)
                    && i.tags
                        .get(crate::pool::TAG_POOL)
                        .is_none_or(|p| !known.pool_names.contains(p))
            })
            .collect();
        let due: Vec<&Instance> = {
            let mut seen = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
            let current: HashSet<&str> = orphans.iter().map(|i| i.id.as_str()).collect();
            seen.retain(|id, _| current.contains(id.as_str()));
            orphans
                .iter()
                .filter(|i| {
                    now.duration_since(*seen.entry(i.id.clone()).or_insert(now)) >= policy.grace
                })
                .copied()
                .collect()
        };
        report.orphans = orphans.iter().map(|i| i.id.clone()).collect();
        for i in due {
            if policy.dry_run {
                tracing::warn!(instance_id = %i.id, name = %i.name, reason = %why(i), "orphan VM (dry run: not deleting)");
                continue;
            }
            match provider.delete_instance(&i.id).await {
                Ok(()) => {
                    tracing::warn!(instance_id = %i.id, name = %i.name, reason = %why(i), "deleted an orphan VM");
                    report.deleted.push(i.id.clone());
                    if let Ok(mut s) = self.first_seen.lock() {
                        s.remove(&i.id);
                    }
                }
                Err(e) => {
                    tracing::warn!(instance_id = %i.id, error = %e, "deleting an orphan VM failed; retrying next pass");
                    report.failed.push((i.id.clone(), e.kind));
                }
            }
        }
        Ok(report)
    }
}
