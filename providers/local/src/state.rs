//! One directory per instance, `<state dir>/instances/<id>/`, holding
//! `meta.json` (written crash-safe, first thing at create, so even a
//! half-made instance is found by `list` and removed by `delete`), the
//! forwarder's `user-data` (0600: it carries a TLS key) and process logs.

use crate::process::ProcRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// What the provider knows about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub veth: String,
    /// The bridge the veth hangs on.
    pub bridge: String,
    #[serde(default)]
    pub processes: Vec<ProcRef>,
    pub created_at: u64,
}

pub fn instances_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("instances")
}

pub use peerpod_provider_api::persist::write_atomic;

pub fn save(dir: &Path, m: &Meta) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(m).map_err(std::io::Error::other)?;
    write_atomic(&dir.join("meta.json"), &bytes, 0o600)
}

/// Every instance on disk; unreadable entries are logged and skipped.
pub fn load_all(state_dir: &Path) -> Vec<Meta> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(instances_dir(state_dir)) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path().join("meta.json");
        match std::fs::read(&p).map(|b| serde_json::from_slice::<Meta>(&b)) {
            Ok(Ok(m)) => out.push(m),
            Ok(Err(err)) => {
                tracing::warn!(path = %p.display(), error = %err, "unreadable instance record")
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %p.display(), error = %err, "unreadable instance record")
            }
        }
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    out
}
