//! A provider wrapper for fault-injection tests (test-only): it passes
//! calls to a real provider but, with configured probabilities drawn from
//! a seeded RNG, fails or delays chosen ones. Every injected fault carries
//! a unique message (`injected fault #N`) and is recorded, so a test can
//! check that each one reached the caller that made the call.

use async_trait::async_trait;
use peerpod_provider_api::{
    ErrorKind, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What to inject, per call.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Probability that a create fails. Half of these fail before the
    /// cloud did anything, half after the instance was made (the error
    /// arrives, the instance exists: the caller must sweep by owner tags).
    pub create_fail: f64,
    /// Probability that a delete "times out". A third each: the call hangs
    /// for `hang` before doing the delete (beyond the caller's timeout);
    /// it answers a timeout error without deleting; it deletes and then
    /// answers a timeout error.
    pub delete_timeout: f64,
    /// How long a hung call waits before going on.
    pub hang: Duration,
}

/// What was injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    CreateFailedBefore,
    CreateFailedAfter,
    DeleteHung,
    DeleteTimeoutBefore,
    DeleteTimeoutAfter,
}

/// One injected fault.
#[derive(Debug, Clone)]
pub struct Injected {
    pub kind: FaultKind,
    /// The unique message the error carries (none for a hang).
    pub message: String,
    /// The sandbox (create) or instance (delete) it hit.
    pub target: String,
}

/// See the module doc.
pub struct FaultyProvider {
    inner: Arc<dyn Provider>,
    plan: FaultPlan,
    rng: Mutex<rand::rngs::StdRng>,
    next: AtomicU32,
    injected: Mutex<Vec<Injected>>,
    /// Calls that reached the wrapper, per kind (create, delete).
    pub creates: AtomicU32,
    pub deletes: AtomicU32,
}

impl FaultyProvider {
    pub fn new(inner: Arc<dyn Provider>, plan: FaultPlan, seed: u64) -> Self {
        Self {
            inner,
            plan,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            next: AtomicU32::new(1),
            injected: Mutex::new(Vec::new()),
            creates: AtomicU32::new(0),
            deletes: AtomicU32::new(0),
        }
    }

    /// Every fault injected so far.
    pub fn injected(&self) -> Vec<Injected> {
        self.injected.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// A uniform draw in [0, 1).
    fn draw(&self) -> f64 {
        self.rng
            .lock()
            .map(|mut r| r.random::<f64>())
            .unwrap_or(1.0)
    }

    fn record(&self, kind: FaultKind, target: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let message = format!("injected fault #{n} ({kind:?})");
        tracing::info!(%message, target, "fault injected");
        if let Ok(mut v) = self.injected.lock() {
            v.push(Injected {
                kind,
                message: message.clone(),
                target: target.to_string(),
            });
        }
        message
    }
}

#[async_trait]
impl Provider for FaultyProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        let sandbox = req.owner.sandbox_id.clone();
        let d = self.draw();
        if d < self.plan.create_fail / 2.0 {
            let m = self.record(FaultKind::CreateFailedBefore, &sandbox);
            return Err(ProviderError::new(ErrorKind::QuotaExceeded, m).with_code("InjectedQuota"));
        }
        let made = self.inner.create_instance(req).await?;
        if d < self.plan.create_fail {
            let m = self.record(FaultKind::CreateFailedAfter, &sandbox);
            return Err(ProviderError::new(ErrorKind::Transient, m).with_code("InjectedInternal"));
        }
        Ok(made)
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        let d = self.draw();
        let third = self.plan.delete_timeout / 3.0;
        let timeout =
            |m: String| ProviderError::new(ErrorKind::Transient, m).with_code("RequestTimeout");
        if d < third {
            self.record(FaultKind::DeleteHung, instance_id);
            tokio::time::sleep(self.plan.hang).await;
            return self.inner.delete_instance(instance_id).await;
        }
        if d < 2.0 * third {
            let m = self.record(FaultKind::DeleteTimeoutBefore, instance_id);
            return Err(timeout(m));
        }
        self.inner.delete_instance(instance_id).await?;
        if d < 3.0 * third {
            let m = self.record(FaultKind::DeleteTimeoutAfter, instance_id);
            return Err(timeout(m));
        }
        Ok(())
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        self.inner.list_instances(owner).await
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        self.inner.verify().await
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        self.inner.console_tail(instance_id).await
    }
}
