//! The warm pool, driven by the manager (the bookkeeping is in
//! [`crate::pool`]): a filler task keeps each configured key at its size —
//! within the node's limit and the pool's create rate, backing off after
//! failures so a broken image cannot become a create loop — and deletes
//! surplus VMs; new pool VMs are offered once their forwarder answers
//! Ping; at StartVM [`Manager::take_warm`] hands a matching ready VM to
//! the sandbox and [`Manager::bind_warm`] sends it the sandbox's
//! configuration over the pinned bootstrap channel.

use super::{now_secs, Manager, ManagerError};
use crate::pool::bind::{BindError, BootstrapClient};
use crate::pool::{KeySpec, PoolKey, PoolPhase, PoolRecord, VmState, NAME_PREFIX, TAG_POOL};
use crate::state::SandboxRecord;
use peerpod_provider_api::{Instance, InstanceRequest};
use peerpod_vmconfig::bind::BindRequest;
use peerpod_vmconfig::userdata::UserData;
use peerpod_vmconfig::ForwarderConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pool creates back off up to this after consecutive failures.
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(300);
/// Deletes of pool VMs are retried up to this far apart.
const MAX_DELETE_BACKOFF: Duration = Duration::from_secs(30);
/// Boot checks (Ping) back off up to this.
const MAX_PING_BACKOFF: Duration = Duration::from_millis(200);
/// The file `--drain-pool` writes to ask a running adaptor to drain.
pub const DRAIN_REQUEST: &str = "drain-requested";

/// A pool VM a StartVM took, with what the bind needs.
pub(super) struct TakenVm {
    pub record: PoolRecord,
    pub instance: Instance,
}

impl Manager {
    /// The filler: runs until the manager is dropped.
    pub fn spawn_pool_filler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let in_flight = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            let mut seen_failures: u32 = 0;
            let mut next_create = Instant::now();
            loop {
                let Some(m) = weak.upgrade() else { return };
                if m.background_stopped() {
                    return;
                }
                if !m.pool.is_draining()
                    && m.cfg.state_dir.join("pool").join(DRAIN_REQUEST).exists()
                {
                    tracing::warn!(
                        "drain requested (--drain-pool): deleting every pool VM and making no more"
                    );
                    m.pool.drain();
                }
                for r in m.pool.surplus(m.provider.name()) {
                    m.spawn_pool_delete(
                        &r.name,
                        "surplus (pool shrank, drained, or its key is no longer configured)",
                    );
                }
                // Consecutive failures (reset when a pool VM boots): each
                // new one pushes the next create further out.
                let failed = m.pool_failures.load(Ordering::SeqCst) as u32;
                if failed > seen_failures {
                    let backoff = (Duration::from_secs(1) * 2u32.saturating_pow(failed.min(9)))
                        .min(MAX_FAILURE_BACKOFF);
                    tracing::warn!(failures = failed, retry_in = ?backoff, "warm pool: pool VMs fail to come up; backing off");
                    next_create = next_create.max(Instant::now() + backoff);
                }
                seen_failures = failed;
                let max_in_flight = (m.cfg.max_concurrent_creates / 2).max(1);
                if Instant::now() >= next_create
                    && in_flight.load(Ordering::SeqCst) < max_in_flight
                    && m.pool_room() > 0
                {
                    if let Some(spec) = m.pool.next_to_create() {
                        next_create = Instant::now() + m.pool.settings().create_interval();
                        // Recorded here, before the next look at the
                        // pool, so it counts toward the key at once.
                        if let Some(req) = m.begin_pool_create(&spec) {
                            in_flight.fetch_add(1, Ordering::SeqCst);
                            let (this, in_flight) = (m.clone(), in_flight.clone());
                            tokio::spawn(async move {
                                this.create_pool_vm(spec, req).await;
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                                this.pool.changed.notify_one();
                            });
                        }
                    }
                }
                let wait = next_create
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(5), Duration::from_secs(1));
                let pool = m.pool.clone();
                drop(m);
                tokio::select! {
                    _ = pool.changed.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    /// Free places on the node for pool VMs: the limit minus live
    /// sandboxes and pool VMs (no limit: always room).
    fn pool_room(&self) -> usize {
        let Some(limit) = self.cfg.limit_per_node else {
            return usize::MAX;
        };
        let live = self.registry.lock().map(|r| r.live()).unwrap_or(usize::MAX);
        let counts = self.pool.counts();
        let pooled: usize = counts.values().map(|c| c.standing()).sum();
        limit.saturating_sub(live.saturating_add(pooled))
    }

    /// The provider request of a new pool VM of `spec`: the pool tag, the
    /// key's shape and initdata, and a bootstrap config with a fresh
    /// one-time identity. Returns the request and the pool record.
    fn pool_request(&self, spec: &KeySpec) -> Result<(InstanceRequest, PoolRecord), ManagerError> {
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| ManagerError::PoolConfig("the warm pool needs TLS".into()))?;
        let name = format!(
            "{NAME_PREFIX}{:010x}",
            rand::random::<u64>() & 0xff_ffff_ffff
        );
        let tls = ca.issue_server(&name)?;
        let record = PoolRecord {
            name: name.clone(),
            key: spec.key.clone(),
            provider: self.provider.name().to_string(),
            phase: PoolPhase::Creating,
            instance_id: None,
            instance_ip: None,
            instance_type: None,
            bootstrap_cert_pem: tls.cert_pem.clone(),
            created_at: now_secs(),
        };
        let mut fwd = ForwarderConfig::bootstrap(name.clone(), tls);
        fwd.listen = format!("0.0.0.0:{}", self.cfg.forwarder_port);
        fwd.max_frame_bytes = self.cfg.max_frame_bytes;
        let user_data = UserData {
            forwarder: fwd,
            // Measured at launch: the key's own initdata, never a pod's.
            initdata: spec.initdata.clone(),
            // Per-pod: sent at bind, never in a pool VM's user data.
            registry_auth: None,
        }
        .to_cloud_config();
        let mut extra_tags = BTreeMap::new();
        extra_tags.insert(TAG_POOL.to_string(), name.clone());
        let req = InstanceRequest {
            name,
            owner: self.owner(""),
            extra_tags,
            vcpus: spec.key.vcpus,
            memory_mib: spec.key.memory_mib,
            image: spec.key.image.clone(),
            machine_type: spec.key.machine_type.clone(),
            // A pod asking for GPUs never takes a pool VM (see pool::key).
            gpus: None,
            gpu_model: None,
            user_data,
        };
        Ok((req, record))
    }

    /// Builds a pool VM's request and records it (`Creating`), before
    /// the provider is asked.
    fn begin_pool_create(&self, spec: &KeySpec) -> Option<InstanceRequest> {
        let (req, record) = match self.pool_request(spec) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "warm pool: cannot build a pool VM request");
                self.pool_failures.fetch_add(1, Ordering::SeqCst);
                return None;
            }
        };
        let name = record.name.clone();
        if let Err(e) = self.pool.begin_create(record) {
            tracing::error!(pool_vm = %name, error = %e, "warm pool: cannot persist a pool VM record; not creating it");
            self.pool_failures.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        Some(req)
    }

    /// Creates one recorded pool VM and waits for it to boot.
    async fn create_pool_vm(self: &Arc<Self>, spec: KeySpec, req: InstanceRequest) {
        let name = req.name.clone();
        let started = Instant::now();
        tracing::info!(pool_vm = %name, key = %spec.key.label(), provider = self.provider.name(), "warm pool: creating a pool VM");
        let created = {
            let _slot = self.create_slots.acquire().await.ok();
            self.provider.create_instance(req).await
        };
        let instance = match created {
            Ok(i) => i,
            Err(e) => {
                self.metrics.provider_error("create", e.kind);
                self.metrics.pool_create_failed(&spec.key.label());
                self.pool_failures.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(pool_vm = %name, error = %e, "warm pool: create failed");
                self.spawn_pool_delete(&name, "its create failed");
                return;
            }
        };
        let ip = instance.ips.first().copied();
        if let Err(e) = self.pool.created(
            &name,
            instance.id.clone(),
            ip,
            instance.instance_type.clone(),
        ) {
            tracing::error!(pool_vm = %name, error = %e, "warm pool: cannot persist the new VM's id; deleting it");
            self.spawn_pool_delete(&name, "its record could not be saved");
            return;
        }
        tracing::info!(pool_vm = %name, instance_id = %instance.id, ip = ?ip, took = ?started.elapsed(), "warm pool: pool VM created; waiting for it to boot");
        self.wait_pool_boot(&name).await;
    }

    /// Pings a booting pool VM until it answers (then it is offered) or
    /// the boot timeout passes (then it is deleted).
    pub(super) async fn wait_pool_boot(self: &Arc<Self>, name: &str) {
        let started = Instant::now();
        let deadline = started + self.pool.settings().boot_timeout;
        let Some(client) = self.pool_client(name) else {
            self.spawn_pool_delete(name, "it has no address");
            return;
        };
        let mut backoff = Duration::from_millis(5);
        let mut last: Option<BindError>;
        loop {
            if self.pool.state_of(name) != Some(VmState::Booting) {
                return; // taken for deletion meanwhile
            }
            match client.ping().await {
                Ok(()) => {
                    if self.pool.set_ready(name) {
                        self.pool_failures.store(0, Ordering::SeqCst);
                        tracing::info!(pool_vm = %name, booted_in = ?started.elapsed(), "warm pool: pool VM ready");
                    }
                    return;
                }
                Err(e) if e.is_identity() => {
                    // Whoever answers there is not the VM we made.
                    tracing::error!(pool_vm = %name, error = %e, "warm pool: the host at the pool VM's address is not it; deleting the pool VM");
                    self.spawn_pool_delete(name, "a host that is not it answered at its address");
                    return;
                }
                Err(e) => last = Some(e),
            }
            if Instant::now() + backoff > deadline {
                self.pool_failures.fetch_add(1, Ordering::SeqCst);
                let why = last.map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(pool_vm = %name, waited = ?started.elapsed(), last_error = %why, "warm pool: pool VM did not boot in time; deleting it");
                self.spawn_pool_delete(name, "it did not boot in time");
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_PING_BACKOFF);
        }
    }

    /// The bootstrap channel to pool VM `name` (by its record).
    fn pool_client(&self, name: &str) -> Option<BootstrapClient> {
        let r = self
            .pool
            .store()
            .load_all()
            .ok()?
            .0
            .into_iter()
            .find(|r| r.name == name)?;
        self.pool_client_for(&r)
    }

    fn pool_client_for(&self, r: &PoolRecord) -> Option<BootstrapClient> {
        let id = self.client_identity.as_ref()?;
        let ip = r.instance_ip?;
        BootstrapClient::new(
            id,
            &r.name,
            &r.bootstrap_cert_pem,
            SocketAddr::new(ip, self.cfg.forwarder_port),
            self.cfg.connect_timeout,
        )
        .ok()
    }

    /// Deletes pool VM `name` in the background (persisted first, retried
    /// until the provider confirms), then forgets it.
    pub(super) fn spawn_pool_delete(self: &Arc<Self>, name: &str, why: &str) {
        let record = match self.pool.mark_deleting(name) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(pool_vm = %name, error = %e, "warm pool: cannot persist a deletion; retrying later");
                return;
            }
        };
        tracing::info!(pool_vm = %name, reason = why, "warm pool: deleting a pool VM");
        self.teardowns.send_modify(|n| *n += 1);
        let this = self.clone();
        tokio::spawn(async move {
            this.delete_pool_vm(&record).await;
            this.teardowns.send_modify(|n| *n = n.saturating_sub(1));
        });
    }

    async fn delete_pool_vm(&self, r: &PoolRecord) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.delete_pool_instances(r).await {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_DELETE_BACKOFF);
        }
        if let Err(e) = self.pool.forget(&r.name) {
            tracing::warn!(pool_vm = %r.name, error = %e, "warm pool: cannot remove the record of a deleted pool VM");
        }
        tracing::info!(pool_vm = %r.name, "warm pool: pool VM deleted");
    }

    /// Deletes the recorded instance and any instance of this node tagged
    /// with the pool VM's name; whether all are gone.
    async fn delete_pool_instances(&self, r: &PoolRecord) -> bool {
        let mut ids: Vec<String> = r.instance_id.iter().cloned().collect();
        let mut ok = true;
        match self.provider.list_instances(&self.owner("")).await {
            Ok(v) => {
                for i in v {
                    if i.tags.get(TAG_POOL) == Some(&r.name) && !ids.contains(&i.id) {
                        ids.push(i.id);
                    }
                }
            }
            Err(e) => {
                self.metrics.provider_error("list", e.kind);
                ok = false;
            }
        }
        for id in ids {
            if let Err(e) = self.provider.delete_instance(&id).await {
                self.metrics.provider_error("delete", e.kind);
                tracing::warn!(pool_vm = %r.name, instance_id = %id, error = %e, "warm pool: delete failed; retrying");
                ok = false;
            }
        }
        ok
    }

    /// StartVM: takes a ready pool VM of the sandbox's key and notes it
    /// in the sandbox record (in memory: it is saved when the sandbox
    /// runs; the pool record is removed only after that). `None`: a miss,
    /// cold path.
    pub(super) fn take_warm(&self, r: &mut SandboxRecord) -> Option<TakenVm> {
        if !self.pool.settings().enabled() {
            return None;
        }
        let Some(key) = PoolKey::for_pod(&r.spec, self.cfg.initdata.as_deref()) else {
            self.metrics.pool_miss("none");
            return None;
        };
        let label = key.label();
        let Some(vm) = self.pool.take(&key, self.provider.name()) else {
            self.metrics.pool_miss(&label);
            tracing::info!(sandbox = %r.id, key = %label, "warm pool: no ready VM for this pod's key; cold start");
            return None;
        };
        let (Some(instance_id), Some(ip)) = (vm.instance_id.clone(), vm.instance_ip) else {
            // Cannot happen for a ready VM; never offer it again.
            let _ = self.pool.readopt_for_deletion(vm);
            self.metrics.pool_miss(&label);
            return None;
        };
        self.metrics.pool_hit(&label);
        r.instance_id = Some(instance_id.clone());
        r.instance_ip = Some(ip);
        r.pool_vm = Some(vm.name.clone());
        tracing::info!(sandbox = %r.id, pool_vm = %vm.name, instance_id = %instance_id, key = %label, "warm pool: took a pool VM");
        Some(TakenVm {
            instance: Instance {
                id: instance_id,
                name: vm.name.clone(),
                ips: vec![ip],
                tags: BTreeMap::new(),
                instance_type: vm.instance_type.clone(),
            },
            record: vm,
        })
    }

    /// Removes the pool record of a VM a running sandbox now owns, in the
    /// background (its sandbox record was saved first; a record left by
    /// a crash here is dropped at recovery).
    pub(super) fn spawn_pool_forget(&self, name: &str) {
        let (pool, name) = (self.pool.clone(), name.to_string());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = pool.forget(&name) {
                tracing::warn!(pool_vm = %name, error = %e, "warm pool: cannot remove the pool record of a bound VM");
            }
        });
    }

    /// Sends the sandbox's configuration to the pool VM it took.
    pub(super) async fn bind_warm(
        &self,
        r: &SandboxRecord,
        vm: &TakenVm,
    ) -> Result<Duration, BindError> {
        let started = Instant::now();
        let client = self
            .pool_client_for(&vm.record)
            .ok_or_else(|| BindError::ServerName(vm.record.name.clone()))?;
        let req = self.bind_request(r).await.map_err(|e| BindError::Call {
            vm: vm.record.name.clone(),
            source: peerpod_relay::bootstrap::CallError::Malformed(e.to_string()),
        })?;
        client.bind(&req).await?;
        let took = started.elapsed();
        self.metrics.pool_bind(took);
        Ok(took)
    }

    /// The sandbox's per-pod configuration for a bind: its server
    /// certificate (for its instance name) and CA, sandbox id, frame limit,
    /// pod network, registry credentials, pod name and namespace.
    async fn bind_request(&self, r: &SandboxRecord) -> Result<BindRequest, ManagerError> {
        let fwd = self.forwarder_config(r).await?;
        Ok(BindRequest::new(
            fwd,
            self.cfg.registry_auth.clone(),
            r.spec.pod_name.clone(),
            r.spec.pod_namespace.clone(),
        ))
    }

    /// A warm start that failed (or was stopped) after the take: the VM
    /// goes back to the pool's books as `Deleting` (persisted) and is
    /// deleted in the background; the sandbox forgets it.
    pub(super) fn release_warm(self: &Arc<Self>, r: &mut SandboxRecord, vm: TakenVm, why: &str) {
        let name = vm.record.name.clone();
        r.instance_id = None;
        r.instance_ip = None;
        r.pool_vm = None;
        if let Err(e) = self.pool.readopt_for_deletion(vm.record) {
            // Its pool record (phase Created) stays: the filler and a
            // restart find it and, as it no longer answers its
            // bootstrap identity, delete it.
            tracing::error!(pool_vm = %name, error = %e, "warm pool: cannot persist the deletion of a pool VM");
            return;
        }
        self.spawn_pool_delete(&name, why);
    }

    /// After a bind: the VM takes the sandbox's owner tags (and name,
    /// where the cloud can rename), in the background — tools that find
    /// VMs by tag find it; the adaptor's records do not depend on it.
    pub(super) fn spawn_retag(&self, r: &SandboxRecord, instance_id: &str) {
        let provider = self.provider.clone();
        let tags = self.owner(&r.id).to_map();
        let (id, name, sandbox) = (
            instance_id.to_string(),
            r.instance_name.clone(),
            r.id.clone(),
        );
        tokio::spawn(async move {
            match provider.retag(&id, &name, &tags).await {
                Ok(true) => {
                    tracing::debug!(sandbox = %sandbox, instance_id = %id, "bound pool VM retagged with the sandbox's owner tags")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox, instance_id = %id, error = %e, "retagging the bound pool VM failed (it keeps its pool tags)")
                }
            }
        });
    }

    /// Recovery: pool records are reloaded; a record whose VM a sandbox
    /// record owns is dropped (the sandbox's wins); interrupted creates and
    /// deletions are deleted; created VMs still listed are pinged again.
    pub(super) async fn recover_pool(
        self: &Arc<Self>,
        sandbox_instances: &std::collections::HashSet<String>,
        sandbox_pool_vms: &std::collections::HashSet<String>,
        listed: Option<&std::collections::HashSet<String>>,
    ) {
        let _ = std::fs::remove_file(self.cfg.state_dir.join("pool").join(DRAIN_REQUEST));
        let (records, bad) = match self.pool.store().load_all() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "warm pool: cannot read the pool records");
                return;
            }
        };
        for e in bad {
            tracing::error!(error = %e, "warm pool: skipping an unreadable pool record (left on disk)");
        }
        for r in records {
            let owned = sandbox_pool_vms.contains(&r.name)
                || r.instance_id
                    .as_ref()
                    .is_some_and(|i| sandbox_instances.contains(i));
            if owned {
                tracing::info!(pool_vm = %r.name, "warm pool: a sandbox owns this pool VM; dropping its pool record");
                let _ = self.pool.store().remove(&r.name);
                continue;
            }
            let name = r.name.clone();
            match r.phase {
                PoolPhase::Creating | PoolPhase::Deleting => {
                    tracing::info!(pool_vm = %name, phase = ?r.phase, "warm pool: finishing what a restart interrupted: deleting");
                    self.pool.adopt(r, VmState::Booting);
                    self.spawn_pool_delete(
                        &name,
                        "the adaptor restarted during its create or deletion",
                    );
                }
                PoolPhase::Created => {
                    let gone = match (listed, &r.instance_id) {
                        (Some(l), Some(id)) => !l.contains(id),
                        _ => false,
                    };
                    self.pool.adopt(r, VmState::Booting);
                    if gone {
                        tracing::warn!(pool_vm = %name, "warm pool: pool VM vanished while the adaptor was down");
                        self.spawn_pool_delete(&name, "it is no longer listed");
                        continue;
                    }
                    let this = self.clone();
                    tokio::spawn(async move { this.wait_pool_boot(&name).await });
                }
            }
        }
    }

    /// Asks the pool to delete everything and make nothing more (what
    /// `--drain-pool` does through a running adaptor).
    pub fn drain_pool(&self) {
        self.pool.drain();
    }

    /// Pool VMs the pool holds now, any state.
    pub fn pool_len(&self) -> usize {
        self.pool.len()
    }

    /// Ready pool VMs now.
    pub fn pool_ready(&self) -> usize {
        self.pool.counts().values().map(|c| c.ready).sum()
    }
}
