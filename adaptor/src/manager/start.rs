//! StartVM, step by step: [`Manager::begin_start`] persists
//! `Provisioning`; then either the warm path — [`Manager::take_warm`]
//! hands the sandbox a ready pool VM of its key, and [`Manager::bring_up`]
//! binds it (the per-pod config over the bootstrap channel) — or, on a
//! miss or a failed bind, the cold path: the provider request is built
//! (the VM's user data is made here, for every provider) and
//! [`Manager::acquire_instance`] gets a VM from the provider, bounded by
//! the StartVM deadline. [`Manager::bring_up`] plumbs the pod network and
//! waits for the agent to answer end to end, and on success the sandbox is
//! `Running` and its agent socket relays. A failure at any step deletes
//! what was created and leaves the sandbox `Failed` with the phase named.
//! The whole run is its own task, so a caller that goes away cannot leave
//! a half-made VM behind.

use super::warm::TakenVm;
use super::{Manager, ManagerError, Sandbox};
use super::{PHASE_BIND, PHASE_CONFIG, PHASE_CREATE, PHASE_NETWORK, PHASE_READY};
use crate::agent_socket::Target;
use crate::lifecycle::EventKind;
use crate::readiness::wait_ready;
use crate::state::{Phase, SandboxRecord};
use peerpod_provider_api::{Instance, InstanceRequest};
use peerpod_vmconfig::userdata::UserData;
use peerpod_vmconfig::ForwarderConfig;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A StartVM failure outside the provider call, naming its phase.
fn fail(id: &str, phase: &'static str, message: String) -> ManagerError {
    ManagerError::Start {
        id: id.into(),
        phase,
        message,
        provider_error: None,
    }
}

impl Manager {
    /// StartVM: creates the instance and returns once the agent answered a
    /// Health check through the forwarder.
    pub async fn start_vm(
        self: &Arc<Self>,
        id: &str,
        caller_timeout: Option<Duration>,
    ) -> Result<(), ManagerError> {
        super::check_sandbox_id(id)?;
        let sb = self
            .get(id)
            .ok_or_else(|| ManagerError::Unknown(id.to_string()))?;
        let budget = match caller_timeout {
            // Leave the caller time to receive our answer.
            Some(t) => t
                .saturating_sub(Duration::from_millis(200))
                .min(self.cfg.start_timeout),
            None => self.cfg.start_timeout,
        };
        let started = Instant::now();
        let deadline = started + budget;
        let this = self.clone();
        let id_owned = id.to_string();
        let task = tokio::spawn(async move { this.run_start(&id_owned, sb, deadline).await });
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(fail(id, "internal", format!("start task ended: {e}"))),
        };
        self.metrics
            .observe_start(result.is_ok(), started.elapsed());
        result
    }

    async fn run_start(
        self: &Arc<Self>,
        id: &str,
        sb: Arc<Sandbox>,
        deadline: Instant,
    ) -> Result<(), ManagerError> {
        let started = Instant::now();
        let _op = sb.op.lock().await;
        let mut stop_rx = sb.stop_requested.subscribe();
        if *stop_rx.borrow() {
            return Err(ManagerError::Cancelled { id: id.into() });
        }
        if !self.begin_start(id, &sb).await? {
            return Ok(()); // already running
        }
        // The warm path: a ready pool VM of the pod's key, bound to it.
        // Nothing is persisted until the sandbox runs: until then the
        // pool record still names the VM (a restart deletes it: a bound
        // VM no longer answers its bootstrap identity), and every fsync
        // saved here is a few milliseconds of StartVM.
        let taken = {
            let mut r = sb.record.lock().await;
            self.take_warm(&mut r)
        };
        if let Some(vm) = taken {
            let instance = vm.instance.clone();
            match self
                .bring_up(id, &sb, &instance, deadline, &mut stop_rx, Some(&vm))
                .await
            {
                Ok(ready_took) => {
                    let r = sb.record.lock().await;
                    tracing::info!(sandbox = id, pool_vm = %vm.record.name, instance = %r.instance_name,
                        agent_ready = ?ready_took, took = ?started.elapsed(), "sandbox running (warm pool VM bound)");
                    self.spawn_retag(&r, &instance.id);
                    // The sandbox record (saved as running) owns the VM now.
                    self.spawn_pool_forget(&vm.record.name);
                    self.emit(
                        &r,
                        EventKind::Running {
                            took: started.elapsed(),
                            instance_id: instance.id.clone(),
                            instance_type: instance.instance_type.clone(),
                            ip: instance.ips.first().copied(),
                        },
                    );
                    return Ok(());
                }
                Err(e) => {
                    let cancelled = matches!(e, ManagerError::Cancelled { .. });
                    if !cancelled {
                        tracing::warn!(sandbox = id, pool_vm = %vm.record.name, error = %e,
                            "warm start failed; the pool VM is deleted and the sandbox starts cold");
                        self.detach_network(id, &sb).await;
                    }
                    let mut r = sb.record.lock().await;
                    self.release_warm(&mut r, vm, &e.to_string());
                    if cancelled {
                        // StopVM's teardown does the rest (it waits for `op`).
                        return Err(e);
                    }
                }
            }
        }
        // The cold path: Provisioning is persisted before the provider
        // is asked.
        let request = {
            let r = sb.record.lock().await;
            self.store.save(&r)?;
            self.instance_request(&r).await
        };
        let request = match request {
            Ok(req) => req,
            Err(e) => {
                let err = fail(id, PHASE_CONFIG, e.to_string());
                self.start_failed(&sb, &err).await?;
                return Err(err);
            }
        };
        let instance = self
            .acquire_instance(id, &sb, request, deadline, &mut stop_rx)
            .await?;
        match self
            .bring_up(id, &sb, &instance, deadline, &mut stop_rx, None)
            .await
        {
            Ok(ready_took) => {
                let r = sb.record.lock().await;
                tracing::info!(sandbox = id, agent_ready = ?ready_took, took = ?started.elapsed(), "sandbox running");
                self.emit(
                    &r,
                    EventKind::Running {
                        took: started.elapsed(),
                        instance_id: instance.id.clone(),
                        instance_type: instance.instance_type.clone(),
                        ip: instance.ips.first().copied(),
                    },
                );
                Ok(())
            }
            // StopVM owns the teardown from here (it waits for `op`).
            Err(e @ ManagerError::Cancelled { .. }) => Err(e),
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "StartVM failed; deleting the instance it created");
                self.delete_owned_instances(id, Some(&instance.id)).await;
                self.detach_network(id, &sb).await;
                self.start_failed(&sb, &e).await?;
                Err(e)
            }
        }
    }

    /// Created → Provisioning (in memory: the cold path persists it before
    /// the provider is asked; the warm path persists the sandbox only once
    /// it runs). `false` when the sandbox already runs.
    async fn begin_start(&self, id: &str, sb: &Sandbox) -> Result<bool, ManagerError> {
        let mut r = sb.record.lock().await;
        match r.phase {
            Phase::Created => {}
            Phase::Running => return Ok(false),
            other => {
                return Err(ManagerError::WrongPhase {
                    id: id.into(),
                    phase: other.as_str(),
                })
            }
        }
        r.phase = Phase::Provisioning;
        Ok(true)
    }

    /// Asks the provider for the VM (at most `max_concurrent_creates` at
    /// once) and records its id and address. A failed create may still
    /// have made something: it is swept by owner tags and the sandbox
    /// marked failed.
    async fn acquire_instance(
        self: &Arc<Self>,
        id: &str,
        sb: &Sandbox,
        request: InstanceRequest,
        deadline: Instant,
        stop_rx: &mut watch::Receiver<bool>,
    ) -> Result<Instance, ManagerError> {
        let name = request.name.clone();
        self.emit(
            &*sb.record.lock().await,
            EventKind::Creating {
                provider: self.provider.name().to_string(),
                vcpus: request.vcpus,
                memory_mib: request.memory_mib,
            },
        );
        let started = Instant::now();
        tracing::info!(sandbox = id, instance = %name, provider = self.provider.name(), "creating the pod VM");
        // Its own task: at the deadline StartVM answers, and the create
        // is left to finish in the background, where what it made is
        // deleted (a dropped future could not clean up after itself).
        let this = self.clone();
        let mut create = tokio::spawn(async move {
            // Closed never: the semaphore lives as long as the manager.
            let _slot = this.create_slots.acquire().await.ok();
            this.provider.create_instance(request).await
        });
        enum Outcome {
            Done(Result<Instance, peerpod_provider_api::ProviderError>),
            Deadline,
            Stopped,
        }
        let outcome = tokio::select! {
            r = &mut create => Outcome::Done(r.unwrap_or_else(|e| Err(peerpod_provider_api::ProviderError::new(
                peerpod_provider_api::ErrorKind::Transient,
                format!("create task ended: {e}"),
            )))),
            _ = tokio::time::sleep_until(deadline.into()) => Outcome::Deadline,
            _ = stop_rx.wait_for(|s| *s) => Outcome::Stopped,
        };
        let created = match outcome {
            Outcome::Done(r) => r,
            Outcome::Deadline => {
                self.abandon_create(id, create);
                let err = fail(
                    id,
                    PHASE_CREATE,
                    format!(
                        "the provider create did not finish within the StartVM deadline \
                         ({:?}); it was abandoned and what it makes is deleted when it returns",
                        started.elapsed()
                    ),
                );
                self.start_failed(sb, &err).await?;
                return Err(err);
            }
            Outcome::Stopped => {
                // StopVM's teardown sweeps by owner tags; this catches a
                // create that finishes after it.
                self.abandon_create(id, create);
                return Err(ManagerError::Cancelled { id: id.into() });
            }
        };
        let instance = match created {
            Ok(i) => i,
            Err(e) => {
                self.metrics.provider_error("create", e.kind);
                tracing::warn!(sandbox = id, error = %e, "provider create failed");
                self.delete_owned_instances(id, None).await;
                let err = ManagerError::Start {
                    id: id.into(),
                    phase: PHASE_CREATE,
                    message: e.to_string(),
                    provider_error: Some(e),
                };
                self.start_failed(sb, &err).await?;
                return Err(err);
            }
        };
        let took = started.elapsed();
        let ip = instance.ips.first().copied();
        {
            let mut r = sb.record.lock().await;
            r.instance_id = Some(instance.id.clone());
            r.instance_ip = ip;
            self.store.save(&r)?;
            self.emit(
                &r,
                EventKind::InstanceCreated {
                    instance_id: instance.id.clone(),
                    instance_type: instance.instance_type.clone(),
                    ip,
                    took,
                },
            );
        }
        tracing::info!(sandbox = id, instance_id = %instance.id, ip = ?ip, took = ?took, "pod VM created");
        Ok(instance)
    }

    /// Leaves a create StartVM no longer waits for to finish in the
    /// background, then deletes whatever carries the sandbox's owner tags
    /// (what it made). Counted as a teardown, so shutdown waits for it.
    fn abandon_create(
        self: &Arc<Self>,
        id: &str,
        create: tokio::task::JoinHandle<Result<Instance, peerpod_provider_api::ProviderError>>,
    ) {
        self.teardowns.send_modify(|n| *n += 1);
        let (this, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            if let Ok(Ok(i)) = create.await {
                tracing::info!(sandbox = %id, instance_id = %i.id, "an abandoned create finished; deleting what it made");
            }
            this.delete_owned_instances(&id, None).await;
            this.teardowns.send_modify(|n| *n = n.saturating_sub(1));
        });
    }

    /// Plumbs the pod network to the VM and waits until its agent answers
    /// end to end, then marks the sandbox running and points its agent
    /// socket at the VM. Returns how long readiness took.
    async fn bring_up(
        &self,
        id: &str,
        sb: &Sandbox,
        instance: &Instance,
        deadline: Instant,
        stop_rx: &mut watch::Receiver<bool>,
        warm: Option<&TakenVm>,
    ) -> Result<Duration, ManagerError> {
        let Some(ip) = instance.ips.first().copied() else {
            return Err(fail(
                id,
                PHASE_CREATE,
                format!(
                    "provider returned instance {} without an IP address",
                    instance.id
                ),
            ));
        };
        let (name, netns_path, network) = {
            let r = sb.record.lock().await;
            (
                r.instance_name.clone(),
                r.netns_path.clone(),
                r.network.clone(),
            )
        };
        let up = self
            .upstream(&name, ip)
            .map_err(|e| fail(id, PHASE_CONFIG, e.to_string()))?;
        if let (Some(path), Some(net)) = (&netns_path, &network) {
            let t = Instant::now();
            let report = self
                .nets
                .attach(path, net, ip)
                .await
                .map_err(|e| fail(id, PHASE_NETWORK, e.to_string()))?;
            tracing::info!(sandbox = id, vni = net.vni, vm_ip = %ip, took = ?t.elapsed(), underlay_mtu = ?report.underlay_mtu, "pod network tunnel up");
        }
        if let Some(vm) = warm {
            let record = sb.record.lock().await.clone();
            let bound = tokio::select! {
                r = tokio::time::timeout_at(deadline.into(), self.bind_warm(&record, vm)) => r,
                _ = stop_rx.wait_for(|s| *s) => return Err(ManagerError::Cancelled { id: id.into() }),
            };
            match bound {
                Ok(Ok(took)) => {
                    tracing::info!(sandbox = id, pool_vm = %vm.record.name, took = ?took, "pool VM bound to the sandbox")
                }
                Ok(Err(e)) => {
                    if e.is_identity() {
                        tracing::error!(sandbox = id, pool_vm = %vm.record.name, error = %e,
                            "refused to bind: the host at the pool VM's address is not the VM this adaptor made");
                    }
                    return Err(fail(id, PHASE_BIND, e.to_string()));
                }
                Err(_) => {
                    return Err(fail(
                        id,
                        PHASE_BIND,
                        "the bind did not finish within the StartVM deadline".into(),
                    ))
                }
            }
        }
        let ready = tokio::select! {
            r = wait_ready(&up, deadline) => r,
            _ = stop_rx.wait_for(|s| *s) => return Err(ManagerError::Cancelled { id: id.into() }),
        };
        match ready {
            Ok(took) => {
                let mut r = sb.record.lock().await;
                if r.phase != Phase::Provisioning {
                    return Err(ManagerError::Cancelled { id: id.into() });
                }
                r.phase = Phase::Running;
                r.last_error = None;
                self.store.save(&r)?;
                sb.set_target(Target::Ready(up));
                Ok(took)
            }
            Err(e) => {
                let mut msg = e.to_string();
                if let Some(console) = self.provider.console_tail(&instance.id).await {
                    msg.push_str("; console tail:\n");
                    msg.push_str(&console);
                }
                Err(fail(id, PHASE_READY, msg))
            }
        }
    }

    /// Marks the sandbox failed with `e` and tells the observers.
    async fn start_failed(&self, sb: &Sandbox, e: &ManagerError) -> Result<(), ManagerError> {
        self.mark_failed(sb, &e.to_string()).await?;
        let phase = match e {
            ManagerError::Start { phase, .. } => phase,
            _ => "internal",
        };
        let message = match e {
            ManagerError::Start { message, .. } => message.clone(),
            other => other.to_string(),
        };
        self.emit(
            &*sb.record.lock().await,
            EventKind::StartFailed { phase, message },
        );
        Ok(())
    }

    /// The provider request for sandbox `r`, with the VM's user data (its
    /// forwarder config with a fresh server certificate, pod network,
    /// initdata and registry credentials).
    async fn instance_request(&self, r: &SandboxRecord) -> Result<InstanceRequest, ManagerError> {
        let fwd = self.forwarder_config(r).await?;
        // The one place the VM's user data is built, for every provider.
        let user_data = UserData {
            forwarder: fwd,
            initdata: r
                .spec
                .initdata
                .clone()
                .or_else(|| self.cfg.initdata.clone()),
            registry_auth: self.cfg.registry_auth.clone(),
        }
        .to_cloud_config();
        Ok(InstanceRequest {
            name: r.instance_name.clone(),
            owner: self.owner(&r.id),
            extra_tags: BTreeMap::new(),
            vcpus: r.spec.vcpus,
            memory_mib: r.spec.memory_mib,
            image: r.spec.image.clone(),
            machine_type: r.spec.machine_type.clone(),
            gpus: r.spec.gpus,
            gpu_model: r.spec.gpu_model.clone(),
            user_data,
        })
    }

    /// Sandbox `r`'s forwarder config: a fresh server certificate for its
    /// instance name and the CA, frame limit, pod network. A cold VM gets
    /// it in its user data, a pool VM in its Bind.
    pub(super) async fn forwarder_config(
        &self,
        r: &SandboxRecord,
    ) -> Result<ForwarderConfig, ManagerError> {
        let tls = match &self.ca {
            Some(ca) => Some(ca.issue_server(&r.instance_name)?),
            None => None,
        };
        let mut fwd = ForwarderConfig::new(r.id.clone(), tls);
        fwd.listen = format!("0.0.0.0:{}", self.cfg.forwarder_port);
        fwd.max_frame_bytes = self.cfg.max_frame_bytes;
        if let Some(n) = &r.network {
            fwd.pod_network = Some(
                self.nets
                    .vm_spec(n)
                    .await
                    .map_err(ManagerError::NetworkConfig)?,
            );
        }
        Ok(fwd)
    }
}
