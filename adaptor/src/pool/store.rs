//! The warm pool's records, one JSON file per pool VM in
//! `<state dir>/pool/`, written crash-safe like the sandbox records and
//! for the same reason: a record is saved *before* the provider is asked
//! for the VM, so a restarted adaptor knows every pool VM it may have
//! made (and the orphan collector never mistakes one for an orphan).

use super::key::PoolKey;
use crate::record_dir::RecordDir;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// Where a pool VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolPhase {
    /// The provider was asked (or is about to be); no id known yet.
    Creating,
    /// The instance exists; its id and address are known.
    Created,
    /// Being deleted (pool shrank, drain, a refused bind); resumed after
    /// a restart.
    Deleting,
}

/// One pool VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// The instance name (`podvm-pool-…`), also the bootstrap server name.
    pub name: String,
    pub key: PoolKey,
    /// The provider that made it (a record of another provider is never
    /// offered).
    pub provider: String,
    pub phase: PoolPhase,
    pub instance_id: Option<String>,
    pub instance_ip: Option<IpAddr>,
    /// The type/size the provider chose, where it says.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// The one-time bootstrap certificate issued to this VM (public; its
    /// key went only into the VM's user data). The bind accepts exactly
    /// this certificate.
    pub bootstrap_cert_pem: String,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// Why the store could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum PoolStoreError {
    #[error("pool state: {0}")]
    Record(#[from] crate::record_dir::RecordError),
    #[error("pool VM name {0:?} is not a valid record name")]
    BadName(String),
}

/// Pool VM names are ours (`podvm-pool-<hex>`), but a record name still
/// becomes a path: only DNS characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The on-disk pool store.
#[derive(Debug, Clone)]
pub struct PoolStore {
    dir: RecordDir,
}

impl PoolStore {
    /// Opens (creating) `<state_dir>/pool`.
    pub fn open(state_dir: &Path) -> Result<Self, PoolStoreError> {
        Ok(Self {
            dir: RecordDir::open(state_dir.join("pool"))?,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.dir()
    }

    fn checked<'a>(&self, name: &'a str) -> Result<&'a str, PoolStoreError> {
        if valid_name(name) {
            Ok(name)
        } else {
            Err(PoolStoreError::BadName(name.to_string()))
        }
    }

    /// Persists a record (crash-safe).
    pub fn save(&self, r: &PoolRecord) -> Result<(), PoolStoreError> {
        Ok(self.dir.save(self.checked(&r.name)?, r)?)
    }

    /// Forgets a pool VM (deleted, or now owned by a sandbox record).
    pub fn remove(&self, name: &str) -> Result<(), PoolStoreError> {
        Ok(self.dir.remove(self.checked(name)?)?)
    }

    /// Every record, oldest first; a corrupt file is reported and
    /// skipped (kept on disk for the operator).
    pub fn load_all(&self) -> Result<(Vec<PoolRecord>, Vec<PoolStoreError>), PoolStoreError> {
        let (all, bad) = self.dir.load_all::<PoolRecord>()?;
        let mut bad: Vec<PoolStoreError> = bad.into_iter().map(PoolStoreError::from).collect();
        let mut ok = Vec::new();
        for r in all {
            if valid_name(&r.name) {
                ok.push(r);
            } else {
                bad.push(PoolStoreError::BadName(r.name));
            }
        }
        ok.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok((ok, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(name: &str) -> PoolRecord {
        PoolRecord {
            name: name.into(),
            key: PoolKey::default(),
            provider: "local".into(),
            phase: PoolPhase::Creating,
            instance_id: None,
            instance_ip: None,
            instance_type: None,
            bootstrap_cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            created_at: 1,
        }
    }

    #[test]
    fn save_load_remove_round_trip_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let s = PoolStore::open(d.path()).unwrap();
        let mut r = record("podvm-pool-a");
        s.save(&r).unwrap();
        r.phase = PoolPhase::Created;
        r.instance_id = Some("i-1".into());
        r.instance_ip = Some("10.0.0.9".parse().unwrap());
        s.save(&r).unwrap();
        s.save(&record("podvm-pool-b")).unwrap();
        let (all, bad) = s.load_all().unwrap();
        assert!(bad.is_empty());
        assert_eq!(all.len(), 2);
        assert_eq!(all.iter().find(|x| x.name == "podvm-pool-a").unwrap(), &r);
        let mode = std::fs::metadata(d.path().join("pool/podvm-pool-a.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        s.remove("podvm-pool-a").unwrap();
        s.remove("podvm-pool-a").unwrap();
        assert_eq!(s.load_all().unwrap().0.len(), 1);
    }

    #[test]
    fn corrupt_and_odd_records_are_reported_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let s = PoolStore::open(d.path()).unwrap();
        s.save(&record("podvm-pool-good")).unwrap();
        std::fs::write(d.path().join("pool/x.json"), b"{ nope").unwrap();
        let mut odd = record("podvm-pool-odd");
        odd.name = "../../etc".into();
        std::fs::write(
            d.path().join("pool/odd.json"),
            serde_json::to_vec(&odd).unwrap(),
        )
        .unwrap();
        let (all, bad) = s.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(bad.len(), 2);
        assert!(s.save(&odd).is_err(), "a path-like name is never written");
    }
}
