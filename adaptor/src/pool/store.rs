//! The warm pool's records, one JSON file per pool VM in
//! `<state dir>/pool/`, written crash-safe like the sandbox records and
//! for the same reason: a record is saved *before* the provider is asked
//! for the VM, so a restarted adaptor knows every pool VM it may have
//! made (and the orphan collector never mistakes one for an orphan).

use super::key::PoolKey;
use crate::state::write_atomic;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

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
    #[error("pool state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pool record {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("pool VM name {0:?} is not a valid record name")]
    BadName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PoolStoreError + '_ {
    move |source| PoolStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
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
    dir: PathBuf,
}

impl PoolStore {
    /// Opens (creating) `<state_dir>/pool`.
    pub fn open(state_dir: &Path) -> Result<Self, PoolStoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("pool");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, PoolStoreError> {
        if !valid_name(name) {
            return Err(PoolStoreError::BadName(name.to_string()));
        }
        Ok(self.dir.join(format!("{name}.json")))
    }

    /// Persists a record (crash-safe).
    pub fn save(&self, r: &PoolRecord) -> Result<(), PoolStoreError> {
        let path = self.path(&r.name)?;
        let bytes = serde_json::to_vec_pretty(r).map_err(|source| PoolStoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes, 0o600).map_err(io(&path))
    }

    /// Forgets a pool VM (deleted, or now owned by a sandbox record).
    pub fn remove(&self, name: &str) -> Result<(), PoolStoreError> {
        let path = self.path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every record, oldest first; a corrupt file is reported and
    /// skipped (kept on disk for the operator).
    pub fn load_all(&self) -> Result<(Vec<PoolRecord>, Vec<PoolStoreError>), PoolStoreError> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<PoolRecord>(&bytes) {
                    Ok(r) if valid_name(&r.name) => ok.push(r),
                    Ok(r) => bad.push(PoolStoreError::BadName(r.name)),
                    Err(source) => bad.push(PoolStoreError::Corrupt { path, source }),
                },
                Err(e) => bad.push(io(&path)(e)),
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
