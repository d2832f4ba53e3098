//! One directory per instance, `<state dir>/instances/<id>/`, holding
//! `meta.json` (written crash-safe — temp file, fsync, rename — first
//! thing at create, before any namespace or link exists, so even a
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
    /// Name of the network namespace (`pplocal-<id>`).
    pub netns: String,
    /// Host end of the veth pair (`ppl<id without the l>`).
    pub veth: String,
    /// The bridge the veth hangs on.
    pub bridge: String,
    /// Processes started so far (recorded right after each start).
    #[serde(default)]
    pub processes: Vec<ProcRef>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// An instance id: `l` and 10 lowercase hex digits.
pub fn valid_id(id: &str) -> bool {
    id.len() == 11
        && id.starts_with('l')
        && id[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh random instance id.
pub fn random_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let n: u64 = rng.random_range(0..(1u64 << 40));
    format!("l{n:010x}")
}

pub fn instances_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("instances")
}

pub use peerpod_fsutil::write_atomic;

/// Records `m` in `dir/meta.json`, crash-safe.
pub fn save(dir: &Path, m: &Meta) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(m).map_err(std::io::Error::other)?;
    write_atomic(&dir.join("meta.json"), &bytes, 0o600)
}

/// Creates the instance directory (0700, parents as needed); fails if it
/// exists.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Creates the instance directory `dir` holding its first record in one
/// step: the directory is built under a hidden name (`.new-<id>`) and
/// renamed into place, so a crash leaves either a listed instance or a
/// hidden leftover that [`remove_unfinished`] clears — never an unlisted
/// directory. Fails if `dir` exists.
pub fn create_with_meta(dir: &Path, m: &Meta) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = dir
        .parent()
        .ok_or_else(|| std::io::Error::other("instance directory has no parent"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    if dir.exists() {
        return Err(std::io::ErrorKind::AlreadyExists.into());
    }
    let tmp = parent.join(format!(".new-{}", m.id));
    match std::fs::remove_dir_all(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
    let made = save(&tmp, m)
        .and_then(|()| std::fs::rename(&tmp, dir))
        .and_then(|()| std::fs::File::open(parent)?.sync_all());
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    made
}

/// Removes an instance directory as one step: renamed to a hidden
/// `.del-<id>` first (so a crash half-way through the removal never leaves
/// a directory without its record that `list` cannot see), then deleted.
/// An absent directory is fine.
pub fn remove_dir(dir: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(std::io::Error::other("instance directory has no parent"));
    };
    let doomed = parent.join(format!(".del-{}", name.to_string_lossy()));
    match std::fs::rename(dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::remove_dir_all(&doomed) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes what creates interrupted before their record was in place left
/// behind: hidden `.new-<id>` directories, `.del-<id>` ones of
/// interrupted removals, and empty instance directories
/// (made by versions that created the directory before its record). Call
/// it with creates excluded (they hold nothing outside the directory yet).
pub fn remove_unfinished(state_dir: &Path) -> usize {
    let mut removed = 0;
    let Ok(rd) = std::fs::read_dir(instances_dir(state_dir)) else {
        return 0;
    };
    for e in rd.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let p = e.path();
        let hidden = name
            .strip_prefix(".new-")
            .or_else(|| name.strip_prefix(".del-"));
        let unfinished = match hidden {
            Some(id) => valid_id(id),
            None => valid_id(&name) && std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none()),
        };
        if unfinished {
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {
                    tracing::info!(path = %p.display(), "removed the directory of a create that a crash interrupted");
                    removed += 1;
                }
                Err(err) => {
                    tracing::warn!(path = %p.display(), error = %err, "cannot remove an unfinished instance directory")
                }
            }
        }
    }
    removed
}

/// The record of instance `id`, if it is there and readable.
pub fn load(state_dir: &Path, id: &str) -> Option<Meta> {
    if !valid_id(id) {
        return None;
    }
    let p = instances_dir(state_dir).join(id).join("meta.json");
    let m: Meta = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    (m.id == id).then_some(m)
}

/// Every instance on disk, oldest first. Entries whose name is not an
/// instance id or whose record is unreadable or names another id are
/// logged and skipped.
pub fn load_all(state_dir: &Path) -> Vec<Meta> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(instances_dir(state_dir)) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(dir_name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !valid_id(&dir_name) {
            continue;
        }
        let p = e.path().join("meta.json");
        match std::fs::read(&p).map(|b| serde_json::from_slice::<Meta>(&b)) {
            Ok(Ok(m)) if m.id == dir_name => out.push(m),
            Ok(Ok(m)) => {
                tracing::warn!(path = %p.display(), id = %m.id, "instance record names another id; skipped")
            }
            Ok(Err(err)) => {
                tracing::warn!(path = %p.display(), error = %err, "unreadable instance record")
            }
            // A directory made by a create that crashed before its first
            // write holds nothing else: nothing to list or clean up.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %p.display(), error = %err, "unreadable instance record")
            }
        }
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> Meta {
        Meta {
            id: id.into(),
            name: "podvm-x".into(),
            tags: BTreeMap::from([("peerpod-node".to_string(), "n".to_string())]),
            ip: Ipv4Addr::new(10, 213, 0, 2),
            netns: format!("pplocal-{id}"),
            veth: format!("ppl{}", &id[1..]),
            bridge: "pplocal0".into(),
            processes: vec![],
            created_at: 1,
        }
    }

    #[test]
    fn ids() {
        for _ in 0..100 {
            let id = random_id();
            assert!(valid_id(&id), "{id}");
            assert!(format!("ppl{}", &id[1..]).len() <= 15);
        }
        for bad in [
            "",
            "l",
            "l012345678",
            "l0123456789a",
            "x0123456789",
            "l0123456789".replace('0', "G").as_str(),
            "l../../etc/",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(valid_id("l0123456789"));
    }

    #[test]
    fn save_and_load_skip_strangers() {
        let d = tempfile::tempdir().unwrap();
        let inst = instances_dir(d.path());
        let a = meta("l00000000aa");
        create_dir(&inst.join(&a.id)).unwrap();
        save(&inst.join(&a.id), &a).unwrap();
        // A record copied under another id, a foreign dir, a broken record
        // and an empty dir (crash before the first write).
        create_dir(&inst.join("l00000000bb")).unwrap();
        save(&inst.join("l00000000bb"), &a).unwrap();
        create_dir(&inst.join("notes")).unwrap();
        create_dir(&inst.join("l00000000cc")).unwrap();
        std::fs::write(inst.join("l00000000cc/meta.json"), "{").unwrap();
        create_dir(&inst.join("l00000000dd")).unwrap();
        assert_eq!(load_all(d.path()), vec![a.clone()]);
        assert!(create_dir(&inst.join(&a.id)).is_err(), "exists already");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(inst.join(&a.id)), 0o700);
        assert_eq!(mode(inst.join(&a.id).join("meta.json")), 0o600);
        assert!(load_all(&d.path().join("absent")).is_empty());
    }

    #[test]
    fn a_create_is_listed_or_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let inst = instances_dir(d.path());
        let a = meta("l00000000aa");
        create_with_meta(&inst.join(&a.id), &a).unwrap();
        assert_eq!(load_all(d.path()), vec![a.clone()]);
        assert!(create_with_meta(&inst.join(&a.id), &a).is_err(), "exists");
        // What crashes leave: a hidden half-built directory, an empty
        // instance directory; a foreign directory is not ours to touch.
        create_dir(&inst.join(".new-l00000000bb")).unwrap();
        std::fs::write(inst.join(".new-l00000000bb/.meta.json.tmp"), "{").unwrap();
        create_dir(&inst.join("l00000000cc")).unwrap();
        create_dir(&inst.join("notes")).unwrap();
        create_dir(&inst.join(".del-l00000000dd")).unwrap();
        std::fs::write(inst.join(".del-l00000000dd/user-data"), "x").unwrap();
        assert_eq!(remove_unfinished(d.path()), 3);
        let mut left: Vec<String> = std::fs::read_dir(&inst)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["l00000000aa".to_string(), "notes".to_string()]);
        assert_eq!(load_all(d.path()), vec![a.clone()]);
        remove_dir(&inst.join(&a.id)).unwrap();
        remove_dir(&inst.join(&a.id)).unwrap();
        assert!(load_all(d.path()).is_empty());
        assert_eq!(std::fs::read_dir(&inst).unwrap().count(), 1, "only notes/");
    }
}
