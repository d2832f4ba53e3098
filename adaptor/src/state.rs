//! The sandbox records the adaptor persists, one JSON file per sandbox in
//! `<state dir>/sandboxes/`, written crash-safe (temp file, fsync, rename,
//! fsync of the directory) *before* the side effect a change announces, so a
//! restarted adaptor knows every VM it may have created.

use crate::annotations::PodSpec;
use crate::record_dir::RecordDir;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// CreateVM answered; no instance asked for yet.
    Created,
    /// An instance may exist (asked for, booting, or not yet ready).
    Provisioning,
    /// The agent answered a Health check; the relay serves.
    Running,
    /// StartVM failed; whatever instance was made has been deleted.
    Failed,
    /// StopVM received; teardown runs (and is resumed after a restart).
    Stopping,
}

impl Phase {
    /// Every phase, in life-cycle order.
    pub const ALL: [Phase; 5] = [
        Phase::Created,
        Phase::Provisioning,
        Phase::Running,
        Phase::Failed,
        Phase::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Provisioning => "provisioning",
            Phase::Running => "running",
            Phase::Failed => "failed",
            Phase::Stopping => "stopping",
        }
    }
}

/// Everything known about one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub spec: PodSpec,
    pub netns_path: Option<String>,
    /// The deterministic instance name (also the TLS server name).
    pub instance_name: String,
    pub phase: Phase,
    pub instance_id: Option<String>,
    pub instance_ip: Option<IpAddr>,
    /// The pod's network as read at CreateVM and its tunnel id; `None`
    /// when the runtime gave no network namespace.
    #[serde(default)]
    pub network: Option<SandboxNetwork>,
    /// The last error, for `list` and the logs.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The warm pool VM this sandbox was bound to (its cloud name is this
    /// pool name, not `instance_name`); `None` for a VM made for it.
    #[serde(default)]
    pub pool_vm: Option<String>,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// A sandbox's pod network: the interface the CNI configured and the
/// VXLAN id reserved for its tunnel (held until the record is removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxNetwork {
    pub interface: peerpod_podnet::PodInterface,
    pub vni: u32,
}

/// Why the store could not read or write.
/// The sandbox store's errors: a directory that cannot be used, or a
/// record that does not parse (see [`crate::record_dir`]).
pub type StoreError = crate::record_dir::RecordError;

pub use peerpod_fsutil::write_atomic;

/// The on-disk sandbox store.
#[derive(Debug, Clone)]
pub struct Store {
    dir: RecordDir,
}

impl Store {
    /// Opens (creating) `<state_dir>/sandboxes`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            dir: RecordDir::open(state_dir.join("sandboxes"))?,
        })
    }

    /// Persists a record (crash-safe).
    pub fn save(&self, r: &SandboxRecord) -> Result<(), StoreError> {
        self.dir.save(&r.id, r)
    }

    /// Forgets a sandbox (its teardown is complete).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.dir.remove(id)
    }

    /// Every record, oldest first; a corrupt file is reported and skipped
    /// (kept on disk for the operator), never fatal for the others.
    pub fn load_all(&self) -> Result<(Vec<SandboxRecord>, Vec<StoreError>), StoreError> {
        let (mut ok, bad) = self.dir.load_all::<SandboxRecord>()?;
        ok.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok((ok, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            spec: PodSpec {
                pod_name: "p".into(),
                pod_namespace: "ns".into(),
                ..Default::default()
            },
            netns_path: None,
            network: None,
            instance_name: "podvm-p-abc".into(),
            phase: Phase::Created,
            instance_id: None,
            instance_ip: None,
            last_error: None,
            pool_vm: None,
            created_at: 1,
        }
    }

    #[test]
    fn save_load_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut r = record("a");
        s.save(&r).unwrap();
        r.phase = Phase::Running;
        r.instance_ip = Some("10.0.0.2".parse().unwrap());
        s.save(&r).unwrap();
        s.save(&record("b")).unwrap();
        let (all, bad) = s.load_all().unwrap();
        assert!(bad.is_empty());
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().find(|x| x.id == "a").unwrap(), &r);
        s.remove("a").unwrap();
        s.remove("a").unwrap();
        assert_eq!(s.load_all().unwrap().0.len(), 1);
    }

    #[test]
    fn corrupt_record_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.save(&record("good")).unwrap();
        std::fs::write(dir.path().join("sandboxes/bad.json"), b"{ not json").unwrap();
        let (all, bad) = s.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].to_string().contains("bad.json"), "{}", bad[0]);
    }

    #[test]
    fn records_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.save(&record("a")).unwrap();
        let mode = std::fs::metadata(dir.path().join("sandboxes/a.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
