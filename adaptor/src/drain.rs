//! `cloud-api-adaptor <provider> --drain-pool`: delete every warm pool VM
//! of this node (uninstall). With the adaptor running (its state
//! directory lock is held) the command asks it to drain — a
//! `drain-requested` file in `<state dir>/pool/`, which the pool's filler
//! notices within a second — and waits until the pool records are gone;
//! the adaptor then keeps the pool empty until it restarts. With the
//! adaptor stopped the command deletes the VMs itself: those its pool
//! records name, and any instance of this node tagged as a pool VM that
//! no sandbox record owns. VMs bound to sandboxes are never touched.

use crate::config::AdaptorConfig;
use crate::manager::warm::DRAIN_REQUEST;
use crate::pool::{PoolStore, TAG_POOL};
use crate::state::Store;
use nix::fcntl::{Flock, FlockArg};
use peerpod_provider_api::{OwnerTags, Provider};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a drain did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("state directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("pool records: {0}")]
    Pool(#[from] crate::pool::PoolStoreError),
    #[error("sandbox records: {0}")]
    Store(#[from] crate::state::StoreError),
    #[error("listing this node's instances: {0}")]
    List(peerpod_provider_api::ProviderError),
    #[error("{left} pool VMs could not be deleted: {errors}")]
    Incomplete { left: usize, errors: String },
    #[error(
        "the running adaptor did not drain its pool within {0:?} ({1} pool VMs left); \
         see its log"
    )]
    Timeout(Duration, usize),
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// The running adaptor drained its pool.
    ByDaemon,
    /// This process deleted these instances.
    Deleted(Vec<String>),
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DrainError + '_ {
    move |source| DrainError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Pool records left (the drain's progress).
fn records_left(pool: &PoolStore) -> usize {
    pool.load_all().map(|(v, _)| v.len()).unwrap_or(usize::MAX)
}

/// See the module doc. `wait` bounds the wait for a running adaptor.
pub async fn drain_pool(
    cfg: &AdaptorConfig,
    provider: Arc<dyn Provider>,
    owner: OwnerTags,
    wait: Duration,
) -> Result<Drained, DrainError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(io(&cfg.state_dir))?;
    let pool = PoolStore::open(&cfg.state_dir)?;
    let lock_path = cfg.state_dir.join("adaptor.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Err(_) => {
            let marker = pool.dir().join(DRAIN_REQUEST);
            std::fs::write(&marker, b"drain\n").map_err(io(&marker))?;
            tracing::info!("the adaptor is running: asked it to drain its warm pool; waiting");
            let until = Instant::now() + wait;
            loop {
                let left = records_left(&pool);
                if left == 0 {
                    return Ok(Drained::ByDaemon);
                }
                if Instant::now() > until {
                    return Err(DrainError::Timeout(wait, left));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(_lock) => {
            // No adaptor runs on this state directory: do it here.
            let (records, _) = pool.load_all()?;
            let (sandboxes, _) = Store::open(&cfg.state_dir)?.load_all()?;
            let owned_ids: HashSet<String> = sandboxes
                .iter()
                .filter_map(|s| s.instance_id.clone())
                .collect();
            let owned_pool: HashSet<String> =
                sandboxes.iter().filter_map(|s| s.pool_vm.clone()).collect();
            let listed = provider
                .list_instances(&owner)
                .await
                .map_err(DrainError::List)?;
            let mut doomed: Vec<(String, Option<String>)> = Vec::new();
            for r in &records {
                if owned_pool.contains(&r.name)
                    || r.instance_id
                        .as_ref()
                        .is_some_and(|i| owned_ids.contains(i))
                {
                    pool.remove(&r.name)?;
                    continue;
                }
                doomed.push((r.name.clone(), r.instance_id.clone()));
            }
            for i in &listed {
                let Some(name) = i.tags.get(TAG_POOL) else {
                    continue;
                };
                if owned_ids.contains(&i.id)
                    || owned_pool.contains(name)
                    || i.tags.contains_key(peerpod_provider_api::TAG_SANDBOX)
                {
                    continue;
                }
                if !doomed
                    .iter()
                    .any(|(n, id)| n == name && id.as_deref() == Some(&i.id))
                {
                    doomed.push((name.clone(), Some(i.id.clone())));
                }
            }
            let mut deleted = Vec::new();
            let mut errors = Vec::new();
            for (name, id) in doomed {
                let ok = match &id {
                    Some(id) => match provider.delete_instance(id).await {
                        Ok(()) => {
                            tracing::info!(pool_vm = %name, instance_id = %id, "drain: pool VM deleted");
                            deleted.push(id.clone());
                            true
                        }
                        Err(e) => {
                            errors.push(format!("{name} ({id}): {e}"));
                            false
                        }
                    },
                    // Never created (a create interrupted before the
                    // cloud answered): the listing above found it if the
                    // cloud made it.
                    None => true,
                };
                if ok {
                    pool.remove(&name)?;
                }
            }
            if errors.is_empty() {
                Ok(Drained::Deleted(deleted))
            } else {
                Err(DrainError::Incomplete {
                    left: errors.len(),
                    errors: errors.join("; "),
                })
            }
        }
    }
}
