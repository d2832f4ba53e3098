//! An in-memory provider that passes the whole kit: the reference for
//! the semantics the checks ask for, the provider the plugin protocol is
//! tested and benchmarked with (in process and through a plugin), and a
//! stand-in that can fail, half-fail and stall on request.
//!
//! Instances are records in a map; addresses are made up (127.77.x.y:
//! nothing listens there). A create records the instance first and then
//! "boots" it for `create_delay`, so a caller abandoning the create still
//! finds it by its owner tags.

use async_trait::async_trait;
use peerpod_provider_api::{
    check_instance_id, ErrorKind, Instance, InstanceRequest, OwnerTags, Provider, ProviderError,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// See the module doc.
pub struct MemoryProvider {
    instances: Mutex<BTreeMap<String, Instance>>,
    next: AtomicU64,
    /// The next create fails with this before making anything.
    fail_next: Mutex<Option<ProviderError>>,
    /// The next create makes its record, then fails and removes it.
    fail_midway: AtomicBool,
    stalled: tokio::sync::watch::Sender<bool>,
    /// Time a create spends after recording the instance.
    pub create_delay: Duration,
}

impl Default for MemoryProvider {
    fn default() -> Self {
        Self::new()
    }
}

fn poisoned() -> ProviderError {
    ProviderError::new(
        ErrorKind::Transient,
        "memory provider: instance table poisoned",
    )
}

impl MemoryProvider {
    pub fn new() -> Self {
        Self {
            instances: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
            fail_next: Mutex::new(None),
            fail_midway: AtomicBool::new(false),
            stalled: tokio::sync::watch::channel(false).0,
            create_delay: Duration::ZERO,
        }
    }

    /// The next create fails with `e` (nothing made).
    pub fn fail_next_create(&self, e: ProviderError) {
        if let Ok(mut f) = self.fail_next.lock() {
            *f = Some(e);
        }
    }

    /// The next create records its instance, then fails (Transient) and
    /// removes it again.
    pub fn fail_next_create_midway(&self) {
        self.fail_midway.store(true, Ordering::SeqCst);
    }

    /// Disarms both failures.
    pub fn clear_failures(&self) {
        if let Ok(mut f) = self.fail_next.lock() {
            *f = None;
        }
        self.fail_midway.store(false, Ordering::SeqCst);
    }

    /// Every call waits while stalled (a backend that stopped answering).
    pub fn stall(&self, on: bool) {
        self.stalled.send_replace(on);
    }

    /// Number of instances held.
    pub fn len(&self) -> usize {
        self.instances.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn unstalled(&self) {
        let mut rx = self.stalled.subscribe();
        let _ = rx.wait_for(|s| !*s).await;
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn name(&self) -> &str {
        "memory"
    }

    async fn create_instance(&self, req: InstanceRequest) -> Result<Instance, ProviderError> {
        self.unstalled().await;
        if let Some(e) = self.fail_next.lock().map_err(|_| poisoned())?.take() {
            return Err(e);
        }
        if req.name.trim().is_empty() {
            return Err(ProviderError::new(
                ErrorKind::InvalidRequest,
                "empty instance name",
            ));
        }
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let id = format!("m-{n:08}");
        let inst = Instance {
            id: id.clone(),
            name: req.name.clone(),
            ips: vec![IpAddr::V4(Ipv4Addr::new(
                127,
                77,
                (n / 250 % 250) as u8,
                (n % 250 + 1) as u8,
            ))],
            tags: req.all_tags(),
            instance_type: req.machine_type.clone(),
        };
        self.instances
            .lock()
            .map_err(|_| poisoned())?
            .insert(id.clone(), inst.clone());
        if !self.create_delay.is_zero() {
            tokio::time::sleep(self.create_delay).await;
        }
        if self.fail_midway.swap(false, Ordering::SeqCst) {
            self.instances.lock().map_err(|_| poisoned())?.remove(&id);
            return Err(ProviderError::new(
                ErrorKind::Transient,
                format!("memory provider: instance {id} failed to boot (injected); removed"),
            )
            .with_code("InjectedBootFailure"));
        }
        Ok(inst)
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        check_instance_id(instance_id)?;
        self.unstalled().await;
        self.instances
            .lock()
            .map_err(|_| poisoned())?
            .remove(instance_id);
        Ok(())
    }

    async fn list_instances(&self, owner: &OwnerTags) -> Result<Vec<Instance>, ProviderError> {
        self.unstalled().await;
        Ok(self
            .instances
            .lock()
            .map_err(|_| poisoned())?
            .values()
            .filter(|i| owner.matches(&i.tags))
            .cloned()
            .collect())
    }

    async fn verify(&self) -> Result<Vec<String>, ProviderError> {
        self.unstalled().await;
        Ok(vec![format!(
            "memory provider holding {} instances",
            self.len()
        )])
    }

    async fn console_tail(&self, instance_id: &str) -> Option<String> {
        let m = self.instances.lock().ok()?;
        m.get(instance_id)
            .map(|i| format!("console of {} ({})", i.id, i.name))
    }
}

/// A [`crate::Fixture`] over a [`MemoryProvider`] backend, reached either
/// directly or through something in between (the plugin hop): `provider`
/// is what the kit calls, `backend` what it arms and inspects.
pub struct MemoryFixture {
    pub backend: std::sync::Arc<MemoryProvider>,
    pub provider: std::sync::Arc<dyn Provider>,
    /// The deadline of `provider`'s calls, when it has one.
    pub deadline: Option<Duration>,
}

const KINDS: [ErrorKind; 9] = [
    ErrorKind::Throttled,
    ErrorKind::QuotaExceeded,
    ErrorKind::InsufficientCapacity,
    ErrorKind::NotFound,
    ErrorKind::InvalidConfig,
    ErrorKind::InvalidRequest,
    ErrorKind::PermissionDenied,
    ErrorKind::Transient,
    ErrorKind::Permanent,
];

#[async_trait]
impl crate::Fixture for MemoryFixture {
    fn provider(&self) -> std::sync::Arc<dyn Provider> {
        std::sync::Arc::clone(&self.provider)
    }

    fn unknown_instance_id(&self) -> String {
        "m-99999999".into()
    }

    async fn fail_next_create(&self) -> Result<ErrorKind, String> {
        self.backend.fail_next_create_midway();
        Ok(ErrorKind::Transient)
    }

    fn injections(&self) -> Vec<crate::Injection> {
        KINDS
            .iter()
            .map(|k| crate::Injection {
                what: format!("memory stand-in error {}", k.as_str()),
                kind: *k,
                code: Some(format!("Injected-{}", k.as_str())),
                message_part: format!("the stand-in says {}", k.as_str()),
            })
            .collect()
    }

    async fn inject(&self, i: &crate::Injection) -> Result<(), String> {
        let mut e = ProviderError::new(i.kind, format!("memory: {}", i.message_part));
        e.code = i.code.clone();
        self.backend.fail_next_create(e);
        Ok(())
    }

    async fn clear(&self) {
        self.backend.clear_failures();
    }

    async fn leftovers(&self, node: &str) -> Vec<String> {
        self.backend
            .list_instances(&crate::owner("", node, ""))
            .await
            .map(|v| {
                v.into_iter()
                    .map(|i| format!("instance {}", i.id))
                    .collect()
            })
            .unwrap_or_else(|e| vec![format!("cannot list the backend: {e}")])
    }

    async fn stall(&self, on: bool) -> Result<Duration, String> {
        let d = self.deadline.ok_or(
            "called in process the memory provider has no deadline of its own (a stalled call waits for its caller's)",
        )?;
        self.backend.stall(on);
        Ok(d)
    }
}
