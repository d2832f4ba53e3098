//! The warm pool: booted pod VMs waiting, per pool key, in a bootstrap
//! state (their forwarder serves only Ping and Bind, with a one-time
//! identity), so StartVM can bind one to a sandbox instead of booting a
//! VM. This module keeps the pool's bookkeeping — which VMs exist, in
//! which state, how many each key lacks or has too many — persisted in
//! [`store`]; the manager does the provider calls and the binding.
//!
//! States of a pool VM: `Creating` (record saved, provider asked) →
//! `Booting` (instance exists, first Ping not answered yet) → `Ready`
//! (offered to StartVM) → `Taken` (a StartVM holds it; it becomes the
//! sandbox's VM and leaves the pool) — or `Deleting` (surplus, drain, a
//! failed boot or a refused bind).

pub mod bind;
pub mod key;
pub mod store;

pub use key::{KeySpec, PoolKey};
pub use store::{PoolPhase, PoolRecord, PoolStore, PoolStoreError};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// The tag every pool VM carries: its pool name. With the node (and
/// cluster) owner tags, it tells the orphan collector and `--drain-pool`
/// which instances are pool VMs.
pub const TAG_POOL: &str = "peerpod-pool";
/// Prefix of pool VM names.
pub const NAME_PREFIX: &str = "podvm-pool-";

/// Warm pool settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// The keys kept warm and how many VMs each.
    pub keys: Vec<KeySpec>,
    /// Most pool VM creates started per minute (the cloud's rate limit is
    /// shared with cold starts; keep this well below it).
    pub creates_per_minute: u32,
    /// Longest wait for a new pool VM's first Ping before it is deleted.
    pub boot_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            creates_per_minute: 60,
            boot_timeout: Duration::from_secs(600),
        }
    }
}

impl PoolSettings {
    /// Whether any key keeps VMs.
    pub fn enabled(&self) -> bool {
        self.keys.iter().any(|k| k.size > 0)
    }

    /// Time between two pool creates.
    pub fn create_interval(&self) -> Duration {
        Duration::from_secs(60) / self.creates_per_minute.max(1)
    }
}

/// Where a pool VM is (in memory; the record's phase is the durable part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Creating,
    Booting,
    Ready,
    Taken,
    Deleting,
}

/// VMs of one key by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub creating: usize,
    pub booting: usize,
    pub ready: usize,
    pub deleting: usize,
}

impl Counts {
    /// VMs that are or will be offered.
    pub fn standing(&self) -> usize {
        self.creating + self.booting + self.ready
    }
}

struct Entry {
    record: PoolRecord,
    state: VmState,
}

/// The pool's bookkeeping; see the module doc.
pub struct WarmPool {
    store: PoolStore,
    settings: PoolSettings,
    entries: Mutex<HashMap<String, Entry>>,
    /// Wakes the filler (a VM was taken, became ready, or went away).
    pub changed: Notify,
    draining: AtomicBool,
}

impl WarmPool {
    pub fn open(
        state_dir: &std::path::Path,
        settings: PoolSettings,
    ) -> Result<Self, PoolStoreError> {
        Ok(Self {
            store: PoolStore::open(state_dir)?,
            settings,
            entries: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            draining: AtomicBool::new(false),
        })
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    pub fn store(&self) -> &PoolStore {
        &self.store
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on every VM is surplus and none is made (uninstall).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Puts a VM known from a persisted record in memory (recovery).
    pub fn adopt(&self, record: PoolRecord, state: VmState) {
        self.entries()
            .insert(record.name.clone(), Entry { record, state });
        self.changed.notify_one();
    }

    /// Saves the record of a VM about to be created, then holds it as
    /// `Creating`.
    pub fn begin_create(&self, record: PoolRecord) -> Result<(), PoolStoreError> {
        self.store.save(&record)?;
        self.adopt(record, VmState::Creating);
        Ok(())
    }

    /// The provider made the VM: its id and address are saved; it boots.
    pub fn created(
        &self,
        name: &str,
        instance_id: String,
        ip: Option<std::net::IpAddr>,
        instance_type: Option<String>,
    ) -> Result<PoolRecord, PoolStoreError> {
        let mut m = self.entries();
        let e = m
            .get_mut(name)
            .ok_or_else(|| PoolStoreError::BadName(name.to_string()))?;
        let mut r = e.record.clone();
        r.phase = PoolPhase::Created;
        r.instance_id = Some(instance_id);
        r.instance_ip = ip;
        r.instance_type = instance_type;
        self.store.save(&r)?;
        e.record = r.clone();
        if e.state == VmState::Creating {
            e.state = VmState::Booting;
        }
        Ok(r)
    }

    /// The VM answered its Ping: it is offered. False when it is no
    /// longer booting (taken for deletion meanwhile).
    pub fn set_ready(&self, name: &str) -> bool {
        let ok = match self.entries().get_mut(name) {
            Some(e) if e.state == VmState::Booting => {
                e.state = VmState::Ready;
                true
            }
            _ => false,
        };
        self.changed.notify_one();
        ok
    }

    /// Takes the oldest ready VM of `key` for a StartVM.
    pub fn take(&self, key: &PoolKey, provider: &str) -> Option<PoolRecord> {
        let mut m = self.entries();
        let best = m
            .values()
            .filter(|e| {
                e.state == VmState::Ready && &e.record.key == key && e.record.provider == provider
            })
            .min_by(|a, b| {
                a.record
                    .created_at
                    .cmp(&b.record.created_at)
                    .then(a.record.name.cmp(&b.record.name))
            })
            .map(|e| e.record.name.clone())?;
        let e = m.get_mut(&best)?;
        e.state = VmState::Taken;
        let r = e.record.clone();
        drop(m);
        self.changed.notify_one();
        Some(r)
    }

    /// Forgets a VM: deleted, or now owned by a sandbox record (which was
    /// saved first).
    pub fn forget(&self, name: &str) -> Result<(), PoolStoreError> {
        self.store.remove(name)?;
        self.entries().remove(name);
        self.changed.notify_one();
        Ok(())
    }

    /// Marks a VM for deletion (persisted, so a restart resumes it);
    /// returns its record.
    pub fn mark_deleting(&self, name: &str) -> Result<Option<PoolRecord>, PoolStoreError> {
        let mut m = self.entries();
        let Some(e) = m.get_mut(name) else {
            return Ok(None);
        };
        if e.state == VmState::Deleting {
            return Ok(None); // a deletion is under way
        }
        let mut r = e.record.clone();
        r.phase = PoolPhase::Deleting;
        self.store.save(&r)?;
        e.record = r.clone();
        e.state = VmState::Deleting;
        Ok(Some(r))
    }

    /// Puts a taken VM's record back, persisted as `Deleting` (a VM a
    /// StartVM took but could not use: the sandbox lets go of it only
    /// after this); [`WarmPool::mark_deleting`] then starts its deletion.
    pub fn readopt_for_deletion(&self, mut record: PoolRecord) -> Result<(), PoolStoreError> {
        record.phase = PoolPhase::Deleting;
        self.store.save(&record)?;
        self.adopt(record, VmState::Taken);
        Ok(())
    }

    pub fn state_of(&self, name: &str) -> Option<VmState> {
        self.entries().get(name).map(|e| e.state)
    }

    /// Counts by key (configured keys included with zeros).
    pub fn counts(&self) -> HashMap<PoolKey, Counts> {
        let mut out: HashMap<PoolKey, Counts> = self
            .settings
            .keys
            .iter()
            .map(|k| (k.key.clone(), Counts::default()))
            .collect();
        for e in self.entries().values() {
            let c = out.entry(e.record.key.clone()).or_default();
            match e.state {
                VmState::Creating => c.creating += 1,
                VmState::Booting => c.booting += 1,
                VmState::Ready => c.ready += 1,
                VmState::Deleting => c.deleting += 1,
                VmState::Taken => {}
            }
        }
        out
    }

    /// Pool VMs in memory, any state (they are not orphans).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every pool VM name and instance id this pool knows (orphan
    /// collection keeps them).
    pub fn known(&self) -> (HashSet<String>, HashSet<String>) {
        let m = self.entries();
        let names = m.keys().cloned().collect();
        let ids = m
            .values()
            .filter_map(|e| e.record.instance_id.clone())
            .collect();
        (names, ids)
    }

    /// The next key to create a VM for (the one lacking most), if any.
    pub fn next_to_create(&self) -> Option<KeySpec> {
        if self.is_draining() {
            return None;
        }
        let counts = self.counts();
        self.settings
            .keys
            .iter()
            .filter_map(|k| {
                let have = counts.get(&k.key).map(Counts::standing).unwrap_or(0);
                (k.size > have).then(|| (k.size - have, k))
            })
            .max_by_key(|(lack, _)| *lack)
            .map(|(_, k)| k.clone())
    }

    /// VMs to delete: all when draining; else those of keys no longer
    /// configured (or of another provider) and the newest beyond each
    /// key's size. Only booting or ready VMs are surplus (creates in
    /// flight are judged when they finish).
    pub fn surplus(&self, provider: &str) -> Vec<PoolRecord> {
        let m = self.entries();
        let mut by_key: HashMap<&PoolKey, Vec<&Entry>> = HashMap::new();
        let mut out = Vec::new();
        for e in m.values() {
            // Taken but given back for deletion (a StartVM could not use it).
            if e.state == VmState::Taken && e.record.phase == PoolPhase::Deleting {
                out.push(e.record.clone());
                continue;
            }
            if !matches!(e.state, VmState::Booting | VmState::Ready) {
                continue;
            }
            let size = self
                .settings
                .keys
                .iter()
                .find(|k| k.key == e.record.key)
                .map(|k| k.size);
            match size {
                Some(_) if !self.is_draining() && e.record.provider == provider => {
                    by_key.entry(&e.record.key).or_default().push(e)
                }
                _ => out.push(e.record.clone()),
            }
        }
        for (key, mut v) in by_key {
            let size = self
                .settings
                .keys
                .iter()
                .find(|k| &k.key == key)
                .map(|k| k.size)
                .unwrap_or(0);
            let creating = m
                .values()
                .filter(|e| e.state == VmState::Creating && &e.record.key == key)
                .count();
            let keep = size.saturating_sub(creating);
            if v.len() > keep {
                // Keep the ready and the oldest.
                v.sort_by_key(|e| (e.state != VmState::Ready, e.record.created_at));
                out.extend(v.into_iter().skip(keep).map(|e| e.record.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, key: &PoolKey, at: u64) -> PoolRecord {
        PoolRecord {
            name: name.into(),
            key: key.clone(),
            provider: "local".into(),
            phase: PoolPhase::Creating,
            instance_id: None,
            instance_ip: None,
            instance_type: None,
            bootstrap_cert_pem: String::new(),
            created_at: at,
        }
    }

    fn pool(dir: &std::path::Path, sizes: &[(PoolKey, usize)]) -> WarmPool {
        let settings = PoolSettings {
            keys: sizes
                .iter()
                .map(|(k, n)| KeySpec {
                    key: k.clone(),
                    size: *n,
                    initdata: None,
                })
                .collect(),
            ..Default::default()
        };
        WarmPool::open(dir, settings).unwrap()
    }

    #[test]
    fn life_of_a_pool_vm() {
        let d = tempfile::tempdir().unwrap();
        let k = PoolKey::default();
        let p = pool(d.path(), &[(k.clone(), 2)]);
        assert_eq!(p.next_to_create().map(|s| s.key), Some(k.clone()));
        p.begin_create(rec("podvm-pool-a", &k, 1)).unwrap();
        p.begin_create(rec("podvm-pool-b", &k, 2)).unwrap();
        assert_eq!(p.next_to_create(), None, "two standing: full");
        assert!(p.take(&k, "local").is_none(), "nothing ready yet");
        p.created("podvm-pool-a", "i-a".into(), None, None).unwrap();
        p.created("podvm-pool-b", "i-b".into(), None, None).unwrap();
        assert!(p.set_ready("podvm-pool-b"));
        assert!(p.set_ready("podvm-pool-a"));
        // Persisted as created, with the id.
        let (recs, _) = p.store().load_all().unwrap();
        assert!(recs
            .iter()
            .all(|r| r.phase == PoolPhase::Created && r.instance_id.is_some()));
        assert!(
            p.take(&k, "aws").is_none(),
            "another provider's VMs are never offered"
        );
        let other = PoolKey {
            vcpus: Some(8),
            ..Default::default()
        };
        assert!(p.take(&other, "local").is_none());
        let t = p.take(&k, "local").unwrap();
        assert_eq!(t.name, "podvm-pool-a", "oldest first");
        assert_eq!(p.state_of("podvm-pool-a"), Some(VmState::Taken));
        assert_eq!(p.next_to_create().map(|s| s.key), Some(k.clone()), "refill");
        p.forget("podvm-pool-a").unwrap();
        assert_eq!(p.store().load_all().unwrap().0.len(), 1);
        let (names, ids) = p.known();
        assert!(names.contains("podvm-pool-b") && ids.contains("i-b"));
        assert_eq!(
            p.counts()[&k],
            Counts {
                ready: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn surplus_when_shrunk_unknown_or_draining() {
        let d = tempfile::tempdir().unwrap();
        let k = PoolKey::default();
        let gone = PoolKey {
            vcpus: Some(3),
            ..Default::default()
        };
        let p = pool(d.path(), &[(k.clone(), 1)]);
        for (n, key, at) in [
            ("podvm-pool-a", &k, 1),
            ("podvm-pool-b", &k, 2),
            ("podvm-pool-c", &gone, 3),
        ] {
            p.begin_create(rec(n, key, at)).unwrap();
            p.created(n, format!("i-{n}"), None, None).unwrap();
        }
        p.set_ready("podvm-pool-b");
        let mut s: Vec<String> = p.surplus("local").into_iter().map(|r| r.name).collect();
        s.sort();
        assert_eq!(
            s,
            vec!["podvm-pool-a", "podvm-pool-c"],
            "keeps the ready one"
        );
        p.drain();
        assert_eq!(p.surplus("local").len(), 3);
        assert_eq!(p.next_to_create(), None);
        let r = p.mark_deleting("podvm-pool-a").unwrap().unwrap();
        assert_eq!(r.phase, PoolPhase::Deleting);
        assert_eq!(
            p.surplus("local").len(),
            2,
            "deleting ones are not surplus again"
        );
    }
}
