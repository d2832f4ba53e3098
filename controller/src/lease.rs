//! Leader election on a `coordination.k8s.io/v1` Lease, so that of the
//! controller's replicas exactly one acts. kube 5 ships no leader
//! election (kube-runtime has none; the community crates built on kube
//! pin older kube releases), and the protocol is small, so it is written
//! here, following client-go's rules:
//!
//! - the Lease names its holder and a duration; the holder renews it
//!   every retry period;
//! - another candidate takes it over only when it has seen the Lease
//!   unchanged for a whole duration *on its own clock* (no comparison of
//!   timestamps written by another machine, so clock skew is harmless);
//! - every write carries the resourceVersion that was read, so of two
//!   candidates writing at once one gets 409 Conflict and loses;
//! - a leader that cannot renew within the renew deadline stops acting
//!   (see [`crate::run`]); a leader shutting down cleanly gives the
//!   Lease up so a standby takes over at once.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use peerpod_kube::KubeError;
use std::time::{Duration, Instant};

/// Lease timing and names.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate (the pod's name, unique per replica).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops acting.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What this candidate last saw of the Lease and when.
struct Observed {
    holder: String,
    renew: Option<MicroTime>,
    resource_version: Option<String>,
    at: Instant,
}

/// One candidate.
pub struct Elector {
    api: kube::Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<Observed>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn api_err(what: String, source: kube::Error) -> KubeError {
    KubeError::Api { what, source }
}

impl Elector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Self {
            api: kube::Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.cfg.namespace, self.cfg.name)
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One attempt: takes the Lease if free or expired, renews it if ours.
    /// `Ok(true)`: we hold it now. `Ok(false)`: someone else does (or won
    /// a race). Each call is bounded by the retry period.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, KubeError> {
        let limit = self.cfg.retry_period.max(Duration::from_millis(200));
        match tokio::time::timeout(limit, self.attempt()).await {
            Ok(r) => r,
            Err(_) => Err(KubeError::Timeout {
                what: format!("lease {}", self.lease_name()),
                secs: limit.as_secs(),
            }),
        }
    }

    async fn attempt(&mut self) -> Result<bool, KubeError> {
        let name = self.cfg.name.clone();
        let current = self
            .api
            .get_opt(&name)
            .await
            .map_err(|e| api_err(format!("reading lease {}", self.lease_name()), e))?;
        let Some(mut lease) = current else {
            let t = now();
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(self.duration_secs()),
                    acquire_time: Some(t.clone()),
                    renew_time: Some(t),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.observe(&l);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(api_err(format!("creating lease {}", self.lease_name()), e)),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.cfg.identity;
        if !ours && !holder.is_empty() {
            // Held by another: only when it has not changed for a whole
            // lease duration, as timed here.
            let held_for = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(self.cfg.lease_duration);
            let unchanged = self
                .observed
                .as_ref()
                .map(|o| o.at.elapsed())
                .unwrap_or_default();
            if unchanged < held_for {
                return Ok(false);
            }
            tracing::info!(lease = %self.lease_name(), previous = %holder, "the leader's lease expired: taking over");
        }
        let t = now();
        if !ours {
            spec.acquire_time = Some(t.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.cfg.identity.clone());
        spec.lease_duration_seconds = Some(self.duration_secs());
        spec.renew_time = Some(t);
        // The resourceVersion read above makes a concurrent writer fail.
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                self.observe(&l);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(api_err(format!("updating lease {}", self.lease_name()), e)),
        }
    }

    /// Notes the Lease as seen; the clock restarts when it changed.
    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.unwrap_or_default();
        let rv = lease.metadata.resource_version.clone();
        let same = self.observed.as_ref().is_some_and(|o| {
            o.holder == holder && o.renew == spec.renew_time && o.resource_version == rv
        });
        if !same {
            self.observed = Some(Observed {
                holder,
                renew: spec.renew_time,
                resource_version: rv,
                at: Instant::now(),
            });
        }
    }

    /// Tries until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: attempt failed"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Gives the Lease up if we hold it (clean shutdown): a standby takes
    /// over on its next attempt instead of after a whole lease duration.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.lease_name(), "leader lease released"),
            Err(e) => {
                tracing::warn!(lease = %self.lease_name(), error = %e, "releasing the leader lease failed")
            }
        }
    }
}
