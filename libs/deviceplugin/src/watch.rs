//! Noticing a kubelet restart: the kubelet recreates `kubelet.sock` (a new
//! inode) and deletes the other sockets in the directory, ours included.
//!
//! We poll the two sockets' identities (device, inode, change time: a
//! file system may give a new file the inode number of one just deleted)
//! instead of using
//! inotify: a stat per second costs nothing, cannot miss an event that
//! happened while we were re-registering (an inotify watch set up after the
//! fact would), and needs no extra dependency.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// A file's identity: device, inode and change time.
pub(crate) type Id = (u64, u64, i64, i64);
/// An [`Id`], or `None` when the file does not exist.
pub(crate) type Identity = Option<Id>;

pub(crate) fn identity(path: &Path) -> Identity {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Waits until `path` exists; returns its identity.
pub(crate) async fn wait_for(path: &Path, every: Duration) -> Id {
    let mut logged = false;
    loop {
        if let Some(id) = identity(path) {
            return id;
        }
        if !logged {
            tracing::info!(socket = %path.display(), "waiting for the kubelet's device plugin socket");
            logged = true;
        }
        tokio::time::sleep(every).await;
    }
}

/// Returns once the kubelet socket is no longer `kubelet` or our socket is
/// no longer `ours`, with the reason.
pub(crate) async fn until_changed(
    kubelet_path: &Path,
    kubelet: Id,
    ours_path: &Path,
    ours: Identity,
    every: Duration,
) -> &'static str {
    loop {
        tokio::time::sleep(every).await;
        match identity(kubelet_path) {
            None => return "kubelet socket removed",
            Some(id) if id != kubelet => return "kubelet socket recreated",
            Some(_) => {}
        }
        if identity(ours_path) != ours {
            return "our socket was removed";
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recreated_file_is_a_change() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("kubelet.sock");
        let o = d.path().join("ours.sock");
        std::fs::write(&k, "").unwrap();
        std::fs::write(&o, "").unwrap();
        let kid = identity(&k).unwrap();
        let oid = identity(&o);
        std::fs::remove_file(&k).unwrap();
        std::fs::write(&k, "").unwrap();
        let every = Duration::from_millis(10);
        assert_eq!(
            until_changed(&k, kid, &o, oid, every).await,
            "kubelet socket recreated"
        );
        let kid = identity(&k).unwrap();
        std::fs::remove_file(&o).unwrap();
        assert_eq!(
            until_changed(&k, kid, &o, oid, every).await,
            "our socket was removed"
        );
    }
}
