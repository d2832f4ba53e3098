//! The controller's main loop: wait to lead, then run the PeerPod
//! controller while renewing the Lease; stop acting the moment the Lease
//! cannot be renewed within the renew deadline (returning
//! [`CtrlError::LostLease`]: the binary exits and its Deployment starts it
//! again as a standby), and give the Lease up on a clean shutdown.

use crate::lease::{Elector, LeaseConfig};
use crate::reconcile::{error_policy, reconcile, Context};
use crate::CtrlError;
use futures::StreamExt;
use kube::runtime::{watcher, Controller};
use peerpod_kube::PeerPod;
use peerpod_provider_api::Provider;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub lease: LeaseConfig,
    /// How often each PeerPod's node is checked.
    pub node_check_interval: Duration,
    /// Longest wait for one API call.
    pub request_timeout: Duration,
    /// Retry backoff of a failed reconcile.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// Runs until `shutdown` completes (Ok) or leadership is lost (Err).
/// `leading` is set while this replica leads (for probes and metrics).
pub async fn run(
    client: kube::Client,
    provider: Arc<dyn Provider>,
    opts: ControllerOptions,
    leading: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CtrlError> {
    tokio::pin!(shutdown);
    let mut elector = Elector::new(client.clone(), opts.lease.clone());
    let lease_name = format!("{}/{}", opts.lease.namespace, opts.lease.name);
    tracing::info!(lease = %lease_name, identity = %opts.lease.identity, "waiting to lead");
    tokio::select! {
        _ = elector.acquire() => {}
        _ = &mut shutdown => return Ok(()),
    }
    leading.store(true, Ordering::SeqCst);
    tracing::info!(lease = %lease_name, identity = %opts.lease.identity, provider = provider.name(), "leading: watching PeerPods");
    let mut ctx = Context::new(client.clone(), provider);
    ctx.node_check_interval = opts.node_check_interval;
    ctx.request_timeout = opts.request_timeout;
    ctx.min_backoff = opts.min_backoff;
    ctx.max_backoff = opts.max_backoff;
    let api: kube::Api<PeerPod> = kube::Api::all(client);
    let controller = Controller::new(api, watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
        });
    tokio::pin!(controller);
    let mut renewed = Instant::now();
    let mut tick = tokio::time::interval(opts.lease.retry_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = &mut controller => break Err(CtrlError::Stopped),
            _ = &mut shutdown => {
                elector.release().await;
                break Ok(());
            }
            _ = tick.tick() => match elector.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => break Err(CtrlError::LostLease(lease_name.clone())),
                Err(e) if renewed.elapsed() >= opts.lease.renew_deadline => {
                    tracing::error!(error = %e, "cannot renew the leader lease");
                    break Err(CtrlError::LostLease(lease_name.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "renewing the leader lease failed; retrying"),
            },
        }
    };
    leading.store(false, Ordering::SeqCst);
    result
}
