//! Room in the host's neighbour (ARP) table for every instance. Each
//! instance on the bridge takes one entry, and a deleted instance's entry
//! stays until the kernel collects it. The kernel's defaults
//! (`gc_thresh3` = 1024 entries for the whole host) are below what a full
//! /20 needs: past `gc_thresh3` the kernel refuses new entries ("table
//! full"), and the adaptor's connections to a new instance go unanswered
//! until garbage collection makes room. Measured at 500 sandboxes with 50
//! stops and starts at a time: readiness stalls of 40 s and tens of
//! thousands of `table_fulls` in `/proc/net/stat/arp_cache`. The provider
//! raises the thresholds for its subnet at its first create; it never
//! lowers them.

use std::io;
use std::path::Path;

/// Where the kernel keeps the IPv4 neighbour table's defaults.
pub const SYSCTL_DIR: &str = "/proc/sys/net/ipv4/neigh/default";

/// Entries beyond the instances (the gateway, other hosts on the bridge).
const SPARE: u64 = 64;

/// The (`gc_thresh2`, `gc_thresh3`) a bridge of `hosts` instance
/// addresses needs: every address live, and as many again of deleted
/// instances waiting for collection.
pub fn needed(hosts: u32) -> (u64, u64) {
    let live = u64::from(hosts) + SPARE;
    (live, 2 * live)
}

/// One threshold raised: (name, old, new).
pub type Raised = (&'static str, u64, u64);

/// Raises `gc_thresh3` and `gc_thresh2` under `dir` to what `hosts`
/// addresses need where they are lower; returns what it changed.
pub fn ensure_capacity_in(dir: &Path, hosts: u32) -> io::Result<Vec<Raised>> {
    let (thresh2, thresh3) = needed(hosts);
    let mut raised = Vec::new();
    // gc_thresh3 first, so the two are never inverted, not even briefly.
    for (name, want) in [("gc_thresh3", thresh3), ("gc_thresh2", thresh2)] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)?;
        let have: u64 = text.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {:?} is not a number", path.display(), text.trim()),
            )
        })?;
        if have < want {
            std::fs::write(&path, format!("{want}\n"))?;
            raised.push((name, have, want));
        }
    }
    Ok(raised)
}

/// [`ensure_capacity_in`] on the host's table; logs what it raised, and
/// a warning naming the sysctl when it cannot (connections to instances
/// may then stall once the table fills).
pub fn ensure_capacity(hosts: u32) {
    match ensure_capacity_in(Path::new(SYSCTL_DIR), hosts) {
        Ok(raised) => {
            for (name, old, new) in raised {
                tracing::info!(
                    sysctl = %format!("net.ipv4.neigh.default.{name}"),
                    old,
                    new,
                    "raised the neighbour table size for the instances' subnet"
                );
            }
        }
        Err(e) => {
            let (thresh2, thresh3) = needed(hosts);
            tracing::warn!(
                error = %e,
                "cannot size the neighbour table for {hosts} instance addresses; set net.ipv4.neigh.default.gc_thresh3={thresh3} and gc_thresh2={thresh2}, or connections to new instances may stall once it is full"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dir: &Path, t2: &str, t3: &str) {
        std::fs::write(dir.join("gc_thresh2"), t2).unwrap();
        std::fs::write(dir.join("gc_thresh3"), t3).unwrap();
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn a_full_slash_20_needs_more_than_the_kernel_default() {
        // /20: 4094 instance addresses.
        assert_eq!(needed(4094), (4158, 8316));
        assert!(needed(4094).1 > 1024);
        // /24 fits the defaults (512 / 1024).
        assert!(needed(254).0 <= 512 && needed(254).1 <= 1024);
    }

    #[test]
    fn raises_what_is_too_low_and_reports_it() {
        let d = tempfile::tempdir().unwrap();
        table(d.path(), "512\n", "1024\n");
        let raised = ensure_capacity_in(d.path(), 4094).unwrap();
        assert_eq!(
            raised,
            vec![("gc_thresh3", 1024, 8316), ("gc_thresh2", 512, 4158)]
        );
        assert_eq!(read(d.path(), "gc_thresh3").trim(), "8316");
        assert_eq!(read(d.path(), "gc_thresh2").trim(), "4158");
    }

    #[test]
    fn never_lowers_a_larger_table() {
        let d = tempfile::tempdir().unwrap();
        table(d.path(), "20000\n", "40000\n");
        assert!(ensure_capacity_in(d.path(), 4094).unwrap().is_empty());
        assert_eq!(read(d.path(), "gc_thresh3"), "40000\n");
        assert_eq!(read(d.path(), "gc_thresh2"), "20000\n");
    }

    #[test]
    fn garbage_in_the_sysctl_is_named() {
        let d = tempfile::tempdir().unwrap();
        table(d.path(), "512\n", "lots\n");
        let e = ensure_capacity_in(d.path(), 4094).unwrap_err();
        assert!(e.to_string().contains("gc_thresh3"), "{e}");
        assert!(e.to_string().contains("lots"), "{e}");
    }
}
