//! Deleting every VM of a cluster at once: what `cloud-api-adaptor
//! --delete-cluster-vms` does for the Helm chart's pre-delete hook, so an
//! uninstalled chart leaves no pod VM behind (the adaptors themselves
//! leave their VMs running when they stop, on purpose: a restart must not
//! cost the pods their VMs). It lists the instances carrying the owner
//! tags of the filter, deletes each (retrying what may pass), and lists
//! again until none is left or the attempts are used up.

use peerpod_provider_api::{OwnerTags, Provider, ProviderError};
use std::time::Duration;

/// How hard to try.
#[derive(Debug, Clone)]
pub struct Policy {
    /// List-and-delete rounds before giving up.
    pub rounds: u32,
    /// Pause between rounds (and before retrying a retryable delete).
    pub pause: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rounds: 5,
            pause: Duration::from_secs(5),
        }
    }
}

/// What was done.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Instance ids deleted (each once, the first time it was deleted).
    pub deleted: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "refusing to delete by an empty filter: it would match every peer pod VM of the account"
    )]
    EmptyFilter,
    #[error("listing the VMs to delete: {0}")]
    List(ProviderError),
    #[error("{} VM(s) still there after {rounds} rounds: {}", .left.len(), .left.iter().map(|(id, e)| format!("{id} ({e})")).collect::<Vec<_>>().join(", "))]
    Left {
        rounds: u32,
        /// (instance id, the last delete error).
        left: Vec<(String, String)>,
    },
}

/// Deletes every instance whose tags include all of `owner`'s. An empty
/// filter is refused (it would select the VMs of every cluster).
pub async fn delete_all(
    provider: &dyn Provider,
    owner: &OwnerTags,
    policy: &Policy,
) -> Result<Report, Error> {
    if owner.to_map().is_empty() {
        return Err(Error::EmptyFilter);
    }
    let mut report = Report::default();
    let mut last_errors: Vec<(String, String)> = Vec::new();
    for round in 0..policy.rounds.max(1) {
        if round > 0 {
            tokio::time::sleep(policy.pause).await;
        }
        let instances = provider.list_instances(owner).await.map_err(Error::List)?;
        if instances.is_empty() {
            return Ok(report);
        }
        last_errors.clear();
        for i in instances {
            match provider.delete_instance(&i.id).await {
                Ok(()) => {
                    tracing::info!(instance = %i.id, name = %i.name, "deleted pod VM");
                    if !report.deleted.contains(&i.id) {
                        report.deleted.push(i.id);
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %i.id, error = %e, "deleting pod VM failed");
                    last_errors.push((i.id, e.to_string()));
                }
            }
        }
    }
    // One more look: the last round may have finished the job.
    let left = provider.list_instances(owner).await.map_err(Error::List)?;
    if left.is_empty() {
        return Ok(report);
    }
    let left = left
        .into_iter()
        .map(|i| {
            let why = last_errors
                .iter()
                .find(|(id, _)| *id == i.id)
                .map(|(_, e)| e.clone())
                .unwrap_or_else(|| "still listed".into());
            (i.id, why)
        })
        .collect();
    Err(Error::Left {
        rounds: policy.rounds,
        left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use peerpod_provider_api::{ErrorKind, Instance, InstanceRequest};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Instances in memory; deletes of ids in `stubborn` fail `fail_times`
    /// times each.
    #[derive(Default)]
    struct Mem {
        instances: Mutex<Vec<Instance>>,
        failures: Mutex<BTreeMap<String, u32>>,
    }

    fn inst(id: &str, node: &str) -> Instance {
        // Through serde, so optional fields keep their defaults.
        serde_json::from_value(serde_json::json!({
            "id": id,
            "name": format!("podvm-{id}"),
            "ips": [],
            "tags": {peerpod_provider_api::TAG_NODE: node},
        }))
        .unwrap()
    }

    #[async_trait]
    impl Provider for Mem {
        fn name(&self) -> &str {
            "mem"
        }
        async fn create_instance(&self, _: InstanceRequest) -> Result<Instance, ProviderError> {
            Err(ProviderError::new(ErrorKind::InvalidRequest, "not here"))
        }
        async fn delete_instance(&self, id: &str) -> Result<(), ProviderError> {
            let mut f = self.failures.lock().unwrap();
            if let Some(n) = f.get_mut(id) {
                if *n > 0 {
                    *n -= 1;
                    return Err(ProviderError::new(ErrorKind::Throttled, "slow down"));
                }
            }
            self.instances.lock().unwrap().retain(|i| i.id != id);
            Ok(())
        }
        async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
            Ok(self
                .instances
                .lock()
                .unwrap()
                .iter()
                .filter(|i| owner.matches(&i.tags))
                .cloned()
                .collect())
        }
        async fn verify(&self) -> Result<Vec<String>, ProviderError> {
            Ok(vec![])
        }
    }

    fn owner(node: &str) -> OwnerTags {
        OwnerTags::new("", node, "")
    }

    fn fast(rounds: u32) -> Policy {
        Policy {
            rounds,
            pause: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn deletes_what_matches_and_nothing_else() {
        let m = Mem::default();
        *m.instances.lock().unwrap() = vec![inst("a", "n1"), inst("b", "n1"), inst("c", "n2")];
        m.failures.lock().unwrap().insert("b".into(), 2);
        let r = delete_all(&m, &owner("n1"), &fast(5)).await.unwrap();
        assert_eq!(r.deleted, ["a", "b"]);
        let left: Vec<String> = m
            .instances
            .lock()
            .unwrap()
            .iter()
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(left, ["c"]);
    }

    #[tokio::test]
    async fn gives_up_naming_what_is_left_and_why() {
        let m = Mem::default();
        *m.instances.lock().unwrap() = vec![inst("a", "n1")];
        m.failures.lock().unwrap().insert("a".into(), 100);
        let e = delete_all(&m, &owner("n1"), &fast(3)).await.unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("1 VM(s) still there after 3 rounds")
                && s.contains("a (")
                && s.contains("slow down"),
            "{s}"
        );
    }

    #[tokio::test]
    async fn a_cluster_filter_takes_every_node_of_that_cluster_only() {
        let tagged = |id: &str, cluster: &str, node: &str| -> Instance {
            serde_json::from_value(serde_json::json!({
                "id": id, "name": id, "ips": [],
                "tags": OwnerTags::new(cluster, node, format!("sb-{id}")).to_map(),
            }))
            .unwrap()
        };
        let m = Mem::default();
        *m.instances.lock().unwrap() = vec![
            tagged("a1", "A", "n1"),
            tagged("a2", "A", "n2"),
            tagged("b1", "B", "n1"),
            tagged("x1", "", "n1"),
        ];
        let r = delete_all(&m, &OwnerTags::new("A", "", ""), &fast(2))
            .await
            .unwrap();
        assert_eq!(r.deleted, ["a1", "a2"]);
        let left: Vec<String> = m
            .instances
            .lock()
            .unwrap()
            .iter()
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(left, ["b1", "x1"]);
    }

    #[tokio::test]
    async fn an_empty_filter_is_refused() {
        let m = Mem::default();
        *m.instances.lock().unwrap() = vec![inst("a", "")];
        assert!(matches!(
            delete_all(&m, &owner(""), &fast(1)).await,
            Err(Error::EmptyFilter)
        ));
        assert_eq!(m.instances.lock().unwrap().len(), 1);
    }
}
