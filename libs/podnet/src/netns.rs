//! Named network namespaces under `/run/netns` (so `ip netns` lists them),
//! made without shelling out: a dedicated OS thread `unshare`s a new
//! network namespace and bind-mounts `/proc/thread-self/ns/net` onto
//! `/run/netns/<name>`, then exits. `unshare`/`setns` change the calling
//! *thread's* namespace, so they never run on a tokio worker.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

pub const NETNS_DIR: &str = "/run/netns";

/// The bind-mount path of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad namespace name {name:?}"),
        ));
    }
    Ok(())
}

fn on_thread<R: Send + 'static>(
    f: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(f)?
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Creates the namespace `name` (blocking; call from `spawn_blocking`).
/// Fails if it exists already.
pub fn create(name: &str) -> io::Result<()> {
    check_name(name)?;
    std::fs::create_dir_all(NETNS_DIR)?;
    let target = path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)?;
    let t = target.clone();
    let made = on_thread(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &t,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&target);
    }
    made
}

/// Removes the namespace `name`: lazy unmount and unlink; an absent or
/// never-mounted one is not an error. (The kernel frees the namespace
/// once no process and no link holds it.)
pub fn remove(name: &str) -> io::Result<()> {
    check_name(name)?;
    let target = path(name);
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(&target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Opens the namespace (for `setns` in a child or moving a link into it).
pub fn open(name: &str) -> io::Result<File> {
    check_name(name)?;
    File::open(path(name))
}

/// The identity (device, inode) of the namespace mounted at
/// `/run/netns/<name>`, if it is mounted: what `/proc/<pid>/ns/net` of a
/// process inside it resolves to.
pub fn identity(name: &str) -> Option<(u64, u64)> {
    check_name(name).ok()?;
    let ns = std::fs::metadata(path(name)).ok()?;
    // An unmounted placeholder is a plain file on the /run file system.
    let dir = std::fs::metadata(NETNS_DIR).ok()?;
    if ns.dev() == dir.dev() {
        return None;
    }
    Some((ns.dev(), ns.ino()))
}

/// Runs `f` on a fresh thread that has entered the namespace `name`.
pub fn run_in<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    let ns = open(name)?;
    on_thread(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_netns_dir() {
        for bad in ["", "a/b", "..", "."] {
            assert!(create(bad).is_err());
            assert!(remove(bad).is_err());
            assert!(open(bad).is_err());
            assert!(identity(bad).is_none());
        }
    }

    #[test]
    fn removing_an_absent_namespace_is_fine() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root: run the tests as root"
        );
        remove("ppnet-never00000").unwrap();
    }

    #[test]
    fn create_enter_remove() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (network namespaces): run the tests as root"
        );
        /// Removes the namespace should the test fail half-way.
        struct Guard(String);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = remove(&self.0);
            }
        }
        let name = format!("ppnet-t{:08x}", rand::random::<u32>());
        let _guard = Guard(name.clone());
        create(&name).unwrap();
        let id = identity(&name).expect("mounted");
        // A thread inside sees the namespace's identity as its own.
        let seen = run_in(&name, || {
            let m = std::fs::metadata("/proc/thread-self/ns/net")?;
            Ok((m.dev(), m.ino()))
        });
        let host = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        remove(&name).unwrap();
        assert_eq!(seen.unwrap(), id);
        assert_ne!(id.1, host, "a namespace of its own");
        assert!(!path(&name).exists());
        assert!(identity(&name).is_none());
        assert!(create(&name).is_ok(), "the name is free again");
        remove(&name).unwrap();
    }
}
