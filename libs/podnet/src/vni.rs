//! VXLAN id allocation on one node: base + the lowest index no live
//! sandbox holds. The holder persists its VNI in its own record; after a
//! restart the pool is refilled from those records, so an id is never
//! handed out twice while a sandbox holds it.

use crate::error::PodnetError;
use crate::spec::MAX_VNI;
use std::collections::BTreeSet;
use std::sync::Mutex;

/// How many ids one node may hold at once.
pub const DEFAULT_RANGE: u32 = 4096;

/// The node's VNIs in use.
#[derive(Debug)]
pub struct VniPool {
    base: u32,
    range: u32,
    used: Mutex<BTreeSet<u32>>,
}

impl VniPool {
    /// A pool of `range` ids from `base`; the range is cut to fit 24 bits.
    pub fn new(base: u32, range: u32) -> Result<Self, PodnetError> {
        if base == 0 || base > MAX_VNI {
            return Err(PodnetError::Unsupported(format!(
                "VXLAN id base {base} is outside 1..={MAX_VNI}"
            )));
        }
        Ok(Self {
            base,
            range: range.min(MAX_VNI - base + 1).max(1),
            used: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn base(&self) -> u32 {
        self.base
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        // The set stays consistent even if a holder panicked.
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lowest free id.
    pub fn acquire(&self) -> Result<u32, PodnetError> {
        let mut used = self.lock();
        let vni = (self.base..self.base + self.range)
            .find(|v| !used.contains(v))
            .ok_or(PodnetError::VniExhausted(self.range))?;
        used.insert(vni);
        Ok(vni)
    }

    /// Marks an id a recovered sandbox holds (any value, even outside the
    /// current range, e.g. after the base was changed).
    pub fn mark_used(&self, vni: u32) {
        self.lock().insert(vni);
    }

    /// Gives an id back.
    pub fn release(&self, vni: u32) {
        self.lock().remove(&vni);
    }

    pub fn in_use(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_id_and_no_reuse_while_held() {
        let p = VniPool::new(555_000, 3).unwrap();
        assert_eq!(p.acquire().unwrap(), 555_000);
        p.mark_used(555_001);
        assert_eq!(p.acquire().unwrap(), 555_002);
        assert!(matches!(p.acquire(), Err(PodnetError::VniExhausted(3))));
        p.release(555_000);
        assert_eq!(p.acquire().unwrap(), 555_000);
        assert_eq!(p.in_use(), 3);
    }

    #[test]
    fn bad_base_is_refused_and_range_fits_24_bits() {
        assert!(VniPool::new(0, 10).is_err());
        assert!(VniPool::new(MAX_VNI + 1, 10).is_err());
        let p = VniPool::new(MAX_VNI, 10).unwrap();
        assert_eq!(p.acquire().unwrap(), MAX_VNI);
        assert!(p.acquire().is_err());
    }
}
